"""A real control plane's admin API, and agent streams spoken by hand, for tests.

:class:`RawAgent` speaks the agent protocol directly, so a test can send what no real
agent would (a backlog too large for one message, a hello split by hand, a hello
claiming works that never existed) and see every message the control plane sends
back, in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format

from archipel import agentstream, limits, structs
from archipel.core import kinds
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.v1alpha1 import (
    agent_pb2,
    agent_pb2_grpc,
    policy_pb2,
    service_pb2,
    service_pb2_grpc,
    work_pb2,
)


class Api:
    """The admin API over asyncio, with a receive limit that fits any one object."""

    def __init__(self, plane: ControlPlaneProcess) -> None:
        self.plane = plane
        self.channel = plane.aio_channel(
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.metadata = (("authorization", f"Bearer {plane.admin_token}"),)
        self.templates = service_pb2_grpc.ResourceTemplateServiceStub(self.channel)
        self.works = service_pb2_grpc.PropagationWorkServiceStub(self.channel)
        self.bindings = service_pb2_grpc.PropagationBindingServiceStub(self.channel)
        self.policies = service_pb2_grpc.PropagationPolicyServiceStub(self.channel)
        self.overrides = service_pb2_grpc.OverridePolicyServiceStub(self.channel)
        self.admin = service_pb2_grpc.ClusterAdminServiceStub(self.channel)

    async def join(self, name: str) -> str:
        response = await self.admin.Join(
            service_pb2.JoinRequest(name=name, rotate=True), metadata=self.metadata
        )
        token: str = response.token
        return token

    async def apply(self, manifest: dict[str, Any]) -> None:
        await self.templates.Apply(
            work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest)),
            metadata=self.metadata,
        )

    async def delete_config_map(self, name: str, *, namespace: str) -> None:
        await self.templates.Delete(
            service_pb2.TemplateDeleteRequest(
                api_version="v1", kind="ConfigMap", namespace=namespace, name=name
            ),
            metadata=self.metadata,
        )

    async def propagate_config_maps(self, cluster: str, *, namespace: str) -> None:
        """Every ConfigMap of ``namespace`` goes to ``cluster``."""
        policy = {
            "metadata": {"name": f"config-maps-to-{cluster}", "namespace": namespace},
            "spec": {
                "resourceSelectors": [{"apiVersion": "v1", "kind": "ConfigMap"}],
                "placement": {
                    "clusterAffinity": {"clusterNames": [cluster]},
                    # No agent has said the cluster is ready: schedule there anyway.
                    "clusterTolerations": [{"operator": "Exists"}],
                },
            },
        }
        await self.policies.Apply(
            json_format.ParseDict(policy, policy_pb2.PropagationPolicy()), metadata=self.metadata
        )

    async def work(self, cluster: str, name: str) -> work_pb2.PropagationWork | None:
        try:
            found: work_pb2.PropagationWork = await self.works.Get(
                service_pb2.GetRequest(namespace=kinds.execution_namespace(cluster), name=name),
                metadata=self.metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return found

    async def cluster_works(self, cluster: str) -> dict[str, work_pb2.PropagationWork]:
        """Every work of ``cluster``, as stored, by name (every page of them)."""
        works: dict[str, work_pb2.PropagationWork] = {}
        request = service_pb2.ListRequest(namespace=kinds.execution_namespace(cluster))
        while True:
            listed = await self.works.List(request, metadata=self.metadata)
            works.update((work.metadata.name, work) for work in listed.items)
            token = getattr(listed, "continue")
            if not token:
                return works
            setattr(request, "continue", token)

    async def close(self) -> None:
        await self.channel.close(None)


def config_map(name: str, *, namespace: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data or {"key": "value"},
    }


async def eventually(what: str, check: Callable[[], Awaitable[Any]], *, seconds: float = 60) -> Any:
    """The first true value ``check`` returns, polled until ``seconds`` have passed."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclasses.dataclass
class Resume:
    """What the control plane sent between a hello and its ``synced`` message."""

    works: list[work_pb2.PropagationWork]
    deletes: list[agent_pb2.WorkDelete]
    synced: agent_pb2.SyncComplete

    @property
    def sent(self) -> list[str]:
        return [work.metadata.name for work in self.works]

    @property
    def deleted(self) -> list[str]:
        return [delete.name for delete in self.deletes]


Opening: TypeAlias = agent_pb2.Hello | Sequence[agent_pb2.AgentMessage]


class RawAgent:
    """One agent stream, spoken by hand: it keeps every message the control plane
    sends, in order, and acknowledges every work it receives. One per stream.

    A test can stop the agent reading: after any message ``pause_after`` is true for,
    it reads nothing more until ``reading`` is set again, and the control plane's sends
    wait on flow control. What is in the outbox still goes out.
    """

    def __init__(
        self,
        plane: ControlPlaneProcess,
        cluster: str,
        token: str = "",
        *,
        certificate: tuple[bytes, bytes] | None = None,
    ) -> None:
        """``token`` is a join token, sent as the bearer credential on the API port;
        ``certificate`` (key, certificate; PEM) opens the stream on the mutual-TLS agent
        port instead."""
        options = [("grpc.max_receive_message_length", limits.MAX_AGENT_RECEIVE_BYTES)]
        if certificate is None:
            self.channel = plane.aio_channel(options=options)
        else:
            assert plane.ca_file is not None
            credentials = grpc.ssl_channel_credentials(
                root_certificates=plane.ca_file.read_bytes(),
                private_key=certificate[0],
                certificate_chain=certificate[1],
            )
            self.channel = grpc.aio.secure_channel(
                plane.agent_address, credentials, options=options
            )
        self.cluster = cluster
        self.token = token
        self.outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        self.received: list[agent_pb2.ControlMessage] = []
        self.works: dict[str, work_pb2.PropagationWork] = {}
        self.deletes: list[str] = []
        self.message_sizes: list[int] = []
        self.synced = asyncio.Event()
        self._arrived = asyncio.Event()  # set on every message, and when the stream ends
        self.pause_after: Callable[[agent_pb2.ControlMessage], bool] = lambda message: False
        self.reading = asyncio.Event()
        self.reading.set()
        self._running: asyncio.Task[None] | None = None

    def connect(
        self, opening: Opening, *, max_bytes: int = limits.MAX_REPORT_BATCH_BYTES
    ) -> grpc.aio.StreamStreamCall[Any, Any]:
        """Open the stream with ``opening``: a hello (in as many parts as
        ``max_bytes`` makes it, as an agent sends it), or the first messages exactly as
        given; then whatever is put into the outbox."""
        stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        outgoing = (
            agentstream.outgoing(opening, self.outbox, max_bytes=max_bytes)
            if isinstance(opening, agent_pb2.Hello)
            else self._verbatim(opening)
        )
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        return stub.Connect(outgoing, metadata=metadata)

    async def _verbatim(
        self, opening: Sequence[agent_pb2.AgentMessage]
    ) -> AsyncIterator[agent_pb2.AgentMessage]:
        for message in opening:
            yield message
        while True:
            yield await self.outbox.get()

    async def run(
        self, opening: Opening, *, max_bytes: int = limits.MAX_REPORT_BATCH_BYTES
    ) -> None:
        async for message in self.connect(opening, max_bytes=max_bytes):
            self.received.append(message)
            self.message_sizes.append(message.ByteSize())
            which = message.WhichOneof("message")
            works: Sequence[work_pb2.PropagationWork] = ()
            if which == "batch":
                works = message.batch.works
                self.deletes.extend(d.name for d in message.batch.deletes)
            elif which == "work":
                works = [message.work]
            elif which == "delete":
                self.deletes.append(message.delete.name)
            elif which == "synced":
                self.synced.set()
            for work in works:
                self.works[work.metadata.name] = work
                self.outbox.put_nowait(
                    agent_pb2.AgentMessage(
                        ack=agent_pb2.WorkAck(
                            name=work.metadata.name,
                            uid=work.metadata.uid,
                            generation=work.metadata.generation,
                        )
                    )
                )
            self._arrived.set()
            if self.pause_after(message):
                self.reading.clear()
            await self.reading.wait()

    def start(
        self, opening: Opening, *, max_bytes: int = limits.MAX_REPORT_BATCH_BYTES
    ) -> asyncio.Task[None]:
        """Run the stream in the background until :meth:`close`."""
        assert self._running is None, "one stream per RawAgent"
        self._running = asyncio.create_task(self.run(opening, max_bytes=max_bytes))
        self._running.add_done_callback(lambda _: self._arrived.set())
        return self._running

    async def wait(self, what: str, ready: Callable[[], bool], *, seconds: float = 60) -> None:
        """Until ``ready()`` holds, checked on every message received. If the stream ends
        first, its error (or an AssertionError) says so."""
        running = self._running
        assert running is not None, "start() the stream first"

        async def arrived() -> None:
            while not ready() and not running.done():
                self._arrived.clear()
                await self._arrived.wait()

        try:
            await asyncio.wait_for(arrived(), timeout=seconds)
        except TimeoutError:
            raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}") from None
        if not ready():
            running.result()  # the stream's error, if it failed
            raise AssertionError(f"the stream ended before {what}")

    async def resumed(self, *, seconds: float = 60) -> Resume:
        """What arrived up to the ``synced`` message, once it has."""
        await self.wait("the synced message", self.synced.is_set, seconds=seconds)
        works: list[work_pb2.PropagationWork] = []
        deletes: list[agent_pb2.WorkDelete] = []
        for message in self.received:
            which = message.WhichOneof("message")
            if which == "batch":
                works.extend(message.batch.works)
                deletes.extend(message.batch.deletes)
            elif which == "work":
                works.append(message.work)
            elif which == "delete":
                deletes.append(message.delete)
            elif which == "synced":
                return Resume(works, deletes, message.synced)
        raise AssertionError("unreachable: synced is set")

    async def close(self) -> None:
        if self._running is not None:
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)
        await self.channel.close(None)


def check_example_output(output: str, cluster: str) -> None:
    """What every language's client example prints when it worked: its binding
    scheduled to ``cluster``, and ``cluster`` among the member clusters."""
    lines = output.splitlines()
    scheduled = [line for line in lines if line.startswith("scheduled: ")]
    assert len(scheduled) == 1, output
    assert scheduled[0].endswith(f" -> {cluster}"), output
    assert f"cluster: {cluster}" in lines, output


def check_generated(
    committed: Path, fresh: Path, what: str, *, ignore: tuple[str, ...] = ()
) -> None:
    """The committed generated code is exactly what generating anew gives (file names
    and bytes); ``what`` names it in the message that says to run ``make proto``.
    Paths with a part in ``ignore`` (``__pycache__``) are not generated code."""

    def tree(root: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file() and not ignore_part(path.relative_to(root))
        }

    def ignore_part(path: Path) -> bool:
        return any(part in ignore for part in path.parts)

    before, after = tree(committed), tree(fresh)
    assert sorted(before) == sorted(after), f"run `make proto` ({what})"
    stale = [name for name in before if before[name] != after[name]]
    assert not stale, f"{what} is out of date ({', '.join(stale)}): run `make proto`"
