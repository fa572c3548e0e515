"""The control plane's memory under a run of oversized requests, which it refuses.

Starts etcd and the control plane, then sends ``--requests`` template Applies of
``--mib`` MiB each (all over the object size limit, so all refused) from
``--concurrency`` callers, and reports the control plane's RSS before, at the peak
and after the run, and after it has been idle a few seconds. The limit to compare
with is measured in the same run: the RSS of an idle control plane.

Run with ``python -m bench.hostile_memory``; results go to
``.local/bench/hostile_memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from archipel.fleet import tools
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import work_pb2
from archipel.v1alpha2 import service_pb2, service_pb2_grpc
from bench.run import rss_bytes

MIB = 1024 * 1024


def oversized_template(mib: float) -> work_pb2.ResourceTemplate:
    template = work_pb2.ResourceTemplate()
    manifest = template.manifest
    manifest.update({"apiVersion": "v1", "kind": "ConfigMap"})
    manifest.get_or_create_struct("metadata").update({"name": "big", "namespace": "default"})
    data = manifest.get_or_create_struct("data")
    chunk = "x" * 64 * 1024
    for index in range(int(mib * MIB / len(chunk))):
        data[f"k{index}"] = chunk
    return template


class Sampler:
    """The process's RSS every 50 ms, so the peak is seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def flood(
    plane: ControlPlaneProcess, requests: int, concurrency: int, mib: float
) -> dict[str, int]:
    template = oversized_template(mib)
    codes: dict[str, int] = {}
    token = plane.admin_token
    async with plane.aio_channel(options=[("grpc.max_send_message_length", 64 * MIB)]) as channel:
        stub = service_pb2_grpc.ResourceTemplateServiceStub(channel)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(requests):
            queue.put_nowait(index)

        async def caller() -> None:
            while not queue.empty():
                queue.get_nowait()
                try:
                    await stub.Apply(
                        service_pb2.ResourceTemplateServiceApplyRequest(object=template),
                        metadata=(("authorization", f"Bearer {token}"),),
                        timeout=60,
                    )
                    code = "OK"
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return codes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mib", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path(".local/bench/hostile_memory.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="archipel-bench-") as scratch:
        root = Path(scratch)
        etcd = EtcdServer(binary=tools.ensure("etcd").etcd, directory=root / "etcd")
        etcd.start()
        plane = ControlPlaneProcess(
            etcd_endpoint=etcd.endpoint,
            etcd_prefix=f"/bench-{uuid.uuid4().hex[:6]}/",
            directory=root / "cp",
        )
        plane.start()
        try:
            pid = plane.process.pid
            assert pid is not None
            time.sleep(2)
            idle = rss_bytes(pid)
            sampler = Sampler(pid)
            started = time.perf_counter()
            codes = asyncio.run(flood(plane, args.requests, args.concurrency, args.mib))
            seconds = time.perf_counter() - started
            sampler.stop()
            after = rss_bytes(pid)
            time.sleep(5)
            settled = rss_bytes(pid)
        finally:
            plane.stop()
            etcd.stop()
    results = {
        "requests": args.requests,
        "request_mib": args.mib,
        "concurrency": args.concurrency,
        "codes": codes,
        "seconds": round(seconds, 2),
        "rss_idle_mib": round(idle / MIB, 1),
        "rss_peak_mib": round(sampler.peak / MIB, 1),
        "rss_after_mib": round(after / MIB, 1),
        "rss_settled_mib": round(settled / MIB, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
