"""Raw gRPC against a real control plane: any bytes to any method, and the answer's code.

The API tests send what no generated stub would (undecodable bytes, invalid UTF-8,
random messages), so they talk to the server through generic callables with identity
serializers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from archipel import limits
from archipel.fleet import tools
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdServer


def _identity(data: bytes) -> bytes:
    return data


@dataclasses.dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    body: bytes = b""


class RawApi:
    """A channel to a control plane, with the admin credential (or ``token``) on every
    call."""

    def __init__(self, plane: ControlPlaneProcess, *, token: str | None = None) -> None:
        self.channel = plane.channel(
            options=[
                ("grpc.max_receive_message_length", limits.MAX_AGENT_RECEIVE_BYTES),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        token = plane.admin_token if token is None else token
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self.channel.close()

    def unary(self, method: str, data: bytes, *, timeout: float = 30) -> Answer:
        """``method`` is ``/archipel.v1alpha1.<Service>/<Method>``."""
        call = self.channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        try:
            body = call(data, metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as error:
            return Answer(error.code(), error.details() or "")
        return Answer(grpc.StatusCode.OK, "", body)

    def stream(self, method: str, data: bytes, *, timeout: float = 10, take: int = 1) -> Answer:
        """Open a server stream and read up to ``take`` messages; the answer's code."""
        call = self.channel.unary_stream(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        responses = call(data, metadata=self.metadata, timeout=timeout)
        try:
            for index, _ in enumerate(responses):
                if index + 1 >= take:
                    responses.cancel()
                    return Answer(grpc.StatusCode.OK, "")
        except grpc.RpcError as error:
            return Answer(error.code(), error.details() or "")
        return Answer(grpc.StatusCode.OK, "")


@dataclasses.dataclass
class Plane:
    etcd: EtcdServer
    process: ControlPlaneProcess
    api: RawApi


def start_plane(
    root: Path, *, prefix: str = "/archipel/", extra_args: Sequence[str] = ()
) -> Iterator[Plane]:
    """A control plane on its own etcd (tests here compact etcd's history);
    ``extra_args`` are more of its flags."""
    binaries = tools.ensure("etcd")
    etcd = EtcdServer(binary=binaries.etcd, directory=root / "etcd")
    etcd.start()
    process = ControlPlaneProcess(
        etcd_endpoint=etcd.endpoint,
        etcd_prefix=prefix,
        directory=root / "cp",
        extra_args=extra_args,
    )
    try:
        process.start()
        api = RawApi(process)
        try:
            yield Plane(etcd, process, api)
        finally:
            api.close()
    finally:
        process.stop()
        etcd.stop()
