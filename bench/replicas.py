"""Fan-out across control-plane replicas: works per second with 1, 2 and 3 replicas on
one etcd, beside etcd's own raw write throughput, the limit, measured in the same run.

For each replica count, a fresh etcd and that many control-plane processes
(:class:`~archipel.fleet.controlplane.ControlPlaneReplicas`, one admin token); a
simulated fleet (:mod:`bench.fleet`, no member clusters) of ``--clusters`` agents,
agent ``i`` streaming from replica ``i mod N``; one policy sending every bench template
to every cluster; then ``--templates`` templates applied, dealt over the replicas. The
rate is templates times clusters works over the time from the first apply to the last
work's arrival at its agent, as ``bench.run``'s fan-out measures it.

The replicas divide the controllers' keys between them (controlplane/shards.py); the
run starts once every shard is held. Each replica still caches every object and
serves the agents connected to it, so the table also says how the work split: the
binding controller's reconciles and the CPU seconds of each replica. On a machine
with fewer cores than replicas plus etcd plus the simulated fleet, more replicas
cannot mean more works per second; the split says what they would scale by.
``make bench-replicas`` runs it; the results go to ``.local/bench/replicas.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from archipel import structs
from archipel.fleet import tools
from archipel.fleet.controlplane import ControlPlaneReplicas
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import policy_pb2, work_pb2
from archipel.v1alpha2 import service_pb2, service_pb2_grpc
from bench.fleet import SimulatedFleet
from bench.run import QUICK, etcd_raw, manifests_for, percentile, policy, work_name

RESULTS = Path(".local/bench")


async def fanout(root: Path, replicas: int, templates: int, clusters: int) -> dict[str, Any]:
    """One fan-out of ``templates`` times ``clusters`` works through ``replicas`` replicas."""
    directory = root / f"replicas-{replicas}"
    etcd = EtcdServer(binary=tools.ensure("etcd").etcd, directory=directory / "etcd")
    etcd.start()
    plane = ControlPlaneReplicas(
        replicas,
        etcd_endpoint=etcd.endpoint,
        directory=directory / "cp",
        # No heartbeat or grace in the way of a short run.
        heartbeat_interval=30,
        cluster_grace_period=600,
    )
    channels: list[grpc.aio.Channel] = []
    fleet: SimulatedFleet | None = None
    try:
        plane.start(timeout=600)
        metadata = (("authorization", f"Bearer {plane.admin_token}"),)
        channels = [
            replica.aio_channel(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
            for replica in plane.replicas
        ]
        fleet = SimulatedFleet(
            plane[0].address,
            plane.admin_token,
            heartbeat_interval=30,
            addresses=plane.addresses,
            ca_file=plane.ca_file,
        )
        await fleet.join(clusters, labels={"fleet": "sim"})
        fleet.connect()
        await fleet.wait_connected(seconds=300)
        await _shards_settled(plane)
        before = [_metrics(replica.metrics_port) for replica in plane.replicas]
        await service_pb2_grpc.PropagationPolicyServiceStub(channels[0]).Apply(
            service_pb2.PropagationPolicyServiceApplyRequest(
                object=json_format.ParseDict(policy(), policy_pb2.PropagationPolicy())
            ),
            metadata=metadata,
        )
        stubs = [service_pb2_grpc.ResourceTemplateServiceStub(c) for c in channels]
        semaphore = asyncio.Semaphore(32)
        started: dict[str, float] = {}

        async def apply(index: int, manifest: dict[str, Any]) -> None:
            # Templates dealt over the replicas, as clients failing over would spread.
            async with semaphore:
                started[work_name(manifest)] = time.perf_counter()
                await stubs[index % len(stubs)].Apply(
                    service_pb2.ResourceTemplateServiceApplyRequest(
                        object=work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest))
                    ),
                    metadata=metadata,
                )

        first = time.perf_counter()
        await asyncio.gather(*(apply(i, m) for i, m in enumerate(manifests_for(templates))))
        applied = time.perf_counter() - first
        total = templates * clusters
        last = await fleet.wait_arrivals(total, seconds=max(120.0, total / 100))
        latencies = [
            arrival - started[name]
            for agent in fleet.agents
            for (name, _), arrival in agent.arrivals.items()
        ]
        after = [_metrics(replica.metrics_port) for replica in plane.replicas]
        split = [
            {
                key: round(later.get(key, 0.0) - earlier.get(key, 0.0), 2)
                for key in (_BINDING_RECONCILES, _CPU)
            }
            for earlier, later in zip(before, after, strict=True)
        ]
        return {
            "replicas": replicas,
            "templates": templates,
            "clusters": clusters,
            "works": total,
            "apply_seconds": round(applied, 3),
            "seconds": round(last - first, 3),
            "works_per_second": round(total / (last - first), 1),
            "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "binding_reconciles": [part[_BINDING_RECONCILES] for part in split],
            "cpu_seconds": [part[_CPU] for part in split],
        }
    finally:
        if fleet is not None:
            await fleet.disconnect()
        for channel in channels:
            await channel.close(None)
        plane.stop()
        etcd.stop()


_BINDING_RECONCILES = 'archipel_reconcile_duration_seconds_count{controller="binding-controller"}'
_CPU = "process_cpu_seconds_total"


def _metrics(port: int) -> dict[str, float]:
    """A replica's Prometheus samples, by name and labels as the text format has them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def _shards_settled(plane: ControlPlaneReplicas, *, seconds: float = 120.0) -> None:
    """Until the replicas hold every shard between them, each its share."""
    deadline = time.monotonic() + seconds
    while True:
        held = [_metrics(r.metrics_port).get("archipel_shards_held", 0.0) for r in plane.replicas]
        if all(held) and sum(held) == _SHARDS:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"shards not settled after {seconds:.0f}s: {held}")
        await asyncio.sleep(0.2)


_SHARDS = 32  # the control plane's default --shards


def table(results: dict[str, Any]) -> str:
    raw = results["etcd_raw"]["keys_per_second"]
    lines = [
        f"etcd raw writes: {raw:.0f} keys/s ({results['etcd_raw']['value_bytes']} B values)",
        "",
        f"{'replicas':>8}  {'works':>6}  {'seconds':>8}  {'works/s':>8}  {'of etcd':>7}  "
        f"{'p50 ms':>8}  {'p99 ms':>8}  binding reconciles / CPU s per replica",
    ]
    for run in results["fanout"]:
        split = ", ".join(
            f"{int(count)} / {cpu:.1f}"
            for count, cpu in zip(run["binding_reconciles"], run["cpu_seconds"], strict=True)
        )
        lines.append(
            f"{run['replicas']:>8}  {run['works']:>6}  {run['seconds']:>8.1f}  "
            f"{run['works_per_second']:>8.0f}  {run['works_per_second'] / raw:>7.0%}  "
            f"{run['latency_p50_ms']:>8.0f}  {run['latency_p99_ms']:>8.0f}  {split}"
        )
    return "\n".join(lines)


async def run_all(
    root: Path, counts: list[int], templates: int, clusters: int, etcd_keys: int
) -> dict[str, Any]:
    print("etcd_raw ...", flush=True)
    raw = await etcd_raw(root, dataclasses.replace(QUICK, etcd_keys=etcd_keys))
    runs = []
    for count in counts:
        print(f"fan-out, {count} replica(s) ...", flush=True)
        runs.append(await fanout(root, count, templates, clusters))
    return {"etcd_raw": raw, "fanout": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,2,3", help="replica counts, comma-separated")
    parser.add_argument("--templates", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--etcd-keys", type=int, default=20_000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.replicas.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        parser.error("--replicas: counts of at least 1")
    root = Path(tempfile.mkdtemp(prefix="archipel-bench-replicas-"))
    results = asyncio.run(run_all(root, counts, args.templates, args.clusters, args.etcd_keys))
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "replicas.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"results: {args.output / 'replicas.json'} (logs under {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
