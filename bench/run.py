"""Archipel's benchmarks: throughput, latency, scale and memory, with the limits beside.

``make bench`` runs the full set, ``make bench-quick`` a reduced one (same JSON keys).
Each run writes ``.local/bench/results.json``, prints a table and draws
``.local/bench/results.png``. Every scenario runs a fresh etcd and a real control-plane
process; the fleet is simulated in this process (:mod:`bench.fleet`) except for the
end-to-end scenario, which uses real member clusters and real agents.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc

from archipel import structs
from archipel.fleet import tools
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import work_pb2
from archipel.v1alpha2 import service_pb2, service_pb2_grpc
from bench.fleet import SimulatedFleet
from controlplane.etcd import Etcd, Put

NAMESPACE = "bench"
RESULTS = Path(".local/bench")


@dataclasses.dataclass(frozen=True)
class Sizes:
    fanout: tuple[tuple[int, int], ...]  # (templates, clusters)
    steady_templates: int
    steady_clusters: int
    steady_rate: float
    steady_seconds: float
    big_fleet: int
    big_fleet_templates: int
    cold_templates: int
    cold_clusters: int
    e2e_deployments: int
    e2e_members: int
    etcd_keys: int


FULL = Sizes(
    fanout=((10, 100), (100, 100), (1000, 100)),
    steady_templates=50,
    steady_clusters=100,
    steady_rate=20.0,
    steady_seconds=20.0,
    big_fleet=1000,
    big_fleet_templates=10,
    cold_templates=30000,
    cold_clusters=10,
    e2e_deployments=500,
    e2e_members=3,
    etcd_keys=100_000,
)
QUICK = Sizes(
    fanout=((10, 100), (100, 100)),
    steady_templates=20,
    steady_clusters=50,
    steady_rate=20.0,
    steady_seconds=5.0,
    big_fleet=300,
    big_fleet_templates=4,
    cold_templates=1000,
    cold_clusters=10,
    e2e_deployments=50,
    e2e_members=3,
    etcd_keys=20_000,
)


def rss_bytes(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def template(kind: str, index: int, *, image: str = "nginx:1.27") -> dict[str, Any]:
    name = f"app-{index:05d}"
    if kind == "ConfigMap":
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"bench": "yes"}},
            "data": {"index": str(index), "payload": "x" * 200},
        }
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"bench": "yes"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


def policy() -> dict[str, Any]:
    return {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "PropagationPolicy",
        "metadata": {"name": "everything", "namespace": NAMESPACE},
        "spec": {
            "resourceSelectors": [
                {"apiVersion": "apps/v1", "kind": "Deployment"},
                {"apiVersion": "v1", "kind": "ConfigMap"},
            ],
            "placement": {"clusterAffinity": {"labelSelector": {"matchLabels": {"fleet": "sim"}}}},
        },
    }


def work_name(manifest: dict[str, Any]) -> str:
    metadata = manifest["metadata"]
    return f"{metadata['namespace']}.{metadata['name']}-{manifest['kind'].lower()}"


class Harness:
    """A fresh etcd and control plane for one scenario, and an admin API connection."""

    def __init__(self, root: Path, *, name: str, profile: Path | None = None) -> None:
        self.root = root / name
        binaries = tools.ensure("etcd")
        self.etcd = EtcdServer(binary=binaries.etcd, directory=self.root / "etcd")
        self.profile = profile
        self.plane: ControlPlaneProcess | None = None
        self.channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        self.etcd.start()
        self.plane = ControlPlaneProcess(
            etcd_endpoint=self.etcd.endpoint,
            directory=self.root / "cp",
            heartbeat_interval=30,
            cluster_grace_period=600,
        )
        if self.profile is not None:
            self.plane.process.env = {
                **(self.plane.process.env or os.environ),
                "ARCHIPEL_PROFILE": str(self.profile),
            }
        self.plane.start(timeout=600)
        self.channel = self.plane.aio_channel(
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        assert self.plane is not None
        return (("authorization", f"Bearer {self.plane.admin_token}"),)

    def fleet(self) -> SimulatedFleet:
        assert self.plane is not None
        return SimulatedFleet(
            self.plane.address,
            self.plane.admin_token,
            heartbeat_interval=30,
            ca_file=self.plane.ca_file,
        )

    async def apply_templates(
        self, manifests: list[dict[str, Any]], *, concurrency: int = 32
    ) -> dict[str, float]:
        """Apply templates concurrently; returns when each one's Apply call started."""
        assert self.channel is not None
        stub = service_pb2_grpc.ResourceTemplateServiceStub(self.channel)
        started: dict[str, float] = {}
        semaphore = asyncio.Semaphore(concurrency)

        async def one(manifest: dict[str, Any]) -> None:
            async with semaphore:
                started[work_name(manifest)] = time.perf_counter()
                template = work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest))
                await stub.Apply(
                    service_pb2.ResourceTemplateServiceApplyRequest(object=template),
                    metadata=self.metadata,
                )

        await asyncio.gather(*(one(m) for m in manifests))
        return started

    async def apply_policy(self) -> None:
        assert self.channel is not None
        from google.protobuf import json_format

        from archipel.v1alpha1 import policy_pb2

        stub = service_pb2_grpc.PropagationPolicyServiceStub(self.channel)
        wanted = json_format.ParseDict(policy(), policy_pb2.PropagationPolicy())
        await stub.Apply(
            service_pb2.PropagationPolicyServiceApplyRequest(object=wanted), metadata=self.metadata
        )

    def metric(self, name: str, labels: str = "") -> float:
        assert self.plane is not None
        url = f"http://127.0.0.1:{self.plane.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and labels in line and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss(self) -> int:
        assert self.plane is not None
        return rss_bytes(self.plane.process.pid)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)
        if self.plane is not None:
            self.plane.stop()
        self.etcd.stop()


@contextlib.asynccontextmanager
async def simulated(
    root: Path, name: str, clusters: int, *, profile: Path | None = None
) -> AsyncIterator[tuple[Harness, SimulatedFleet]]:
    """A fresh control plane with ``clusters`` simulated agents connected and the policy
    that propagates every bench template to all of them."""
    harness = Harness(root, name=name, profile=profile)
    await harness.start()
    fleet = harness.fleet()
    try:
        await fleet.join(clusters, labels={"fleet": "sim"})
        started = time.perf_counter()
        fleet.connect()
        await fleet.wait_connected(seconds=300)
        fleet.connect_seconds = time.perf_counter() - started
        await harness.apply_policy()
        yield harness, fleet
    finally:
        await fleet.disconnect()
        await harness.stop()


def manifests_for(templates: int, *, image: str = "nginx:1.27") -> list[dict[str, Any]]:
    """Half Deployments, half ConfigMaps, as the issue's fan-out describes."""
    return [
        template("Deployment" if i % 2 == 0 else "ConfigMap", i // 2, image=image)
        for i in range(templates)
    ]


async def fanout(
    root: Path, templates: int, clusters: int, *, profile: Path | None = None
) -> dict[str, Any]:
    async with simulated(root, f"fanout-{templates}x{clusters}", clusters, profile=profile) as (
        harness,
        fleet,
    ):
        manifests = manifests_for(templates)
        first = time.perf_counter()
        started = await harness.apply_templates(manifests)
        applied = time.perf_counter() - first
        total = templates * clusters
        last = await fleet.wait_arrivals(total, seconds=max(120.0, total / 200))
        latencies = [
            arrival - started[name]
            for agent in fleet.agents
            for (name, _), arrival in agent.arrivals.items()
        ]
        elapsed = last - first
        return {
            "templates": templates,
            "clusters": clusters,
            "works": total,
            "apply_seconds": applied,
            "seconds": elapsed,
            "works_per_second": total / elapsed,
            "latency_p50_ms": percentile(latencies, 0.5) * 1000,
            "latency_p99_ms": percentile(latencies, 0.99) * 1000,
            "control_plane_rss_mib": harness.rss() / 2**20,
            "latencies_ms": [
                round(v * 1000, 2) for v in latencies[:: max(1, len(latencies) // 2000)]
            ],
        }


async def steady(root: Path, sizes: Sizes) -> dict[str, Any]:
    async with simulated(root, "steady", sizes.steady_clusters) as (harness, fleet):
        manifests = manifests_for(sizes.steady_templates)
        await harness.apply_templates(manifests)
        base = sizes.steady_templates * sizes.steady_clusters
        await fleet.wait_arrivals(base, seconds=300)
        deployments = [m for m in manifests if m["kind"] == "Deployment"]
        updates = int(sizes.steady_rate * sizes.steady_seconds)
        sent: list[tuple[str, int, float]] = []
        final: dict[str, int] = {}
        interval = 1.0 / sizes.steady_rate
        next_at = time.perf_counter()
        for update in range(updates):
            manifest = deployments[update % len(deployments)]
            generation = 2 + update // len(deployments)
            manifest["spec"]["template"]["spec"]["containers"][0]["image"] = f"nginx:1.{generation}"
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            name = work_name(manifest)
            sent.append((name, generation, time.perf_counter()))
            final[name] = generation
            await harness.apply_templates([manifest], concurrency=1)
            next_at += interval
        await fleet.wait_generations(final, seconds=300)
        # An update counts as delivered to a cluster when that cluster holds it or a
        # newer one: the control plane rightly coalesces a work changed twice in flight.
        latencies = []
        for name, generation, at in sent:
            for agent in fleet.agents:
                arrived = [
                    t for (n, g), t in agent.arrivals.items() if n == name and g >= generation
                ]
                latencies.append(min(arrived) - at)
        return {
            "updates_per_second": sizes.steady_rate,
            "clusters": sizes.steady_clusters,
            "updates": updates,
            "latency_p50_ms": percentile(latencies, 0.5) * 1000,
            "latency_p99_ms": percentile(latencies, 0.99) * 1000,
            "latencies_ms": [round(v * 1000, 2) for v in latencies],
        }


async def big_fleet(root: Path, sizes: Sizes) -> dict[str, Any]:
    """K agents connected to one control plane: memory, scheduling, reconnect storm."""
    result: dict[str, Any] = {"agents": sizes.big_fleet}
    async with simulated(root, "big-fleet", sizes.big_fleet) as (harness, fleet):
        result["connect_seconds"] = fleet.connect_seconds
        result["rss_connected_mib"] = harness.rss() / 2**20
        first = time.perf_counter()
        await harness.apply_templates(manifests_for(sizes.big_fleet_templates))
        total = sizes.big_fleet_templates * sizes.big_fleet
        last = await fleet.wait_arrivals(total, seconds=600)
        result["works"] = total
        result["works_per_second"] = total / (last - first)
        count = harness.metric(
            "archipel_reconcile_duration_seconds_count", 'controller="scheduler"'
        )
        spent = harness.metric("archipel_reconcile_duration_seconds_sum", 'controller="scheduler"')
        result["scheduler_bindings_per_second"] = count / spent if spent else 0.0
        result["rss_with_works_mib"] = harness.rss() / 2**20

        # Reconnect storm: every agent drops and comes back at once, holding its works.
        await fleet.disconnect()
        peak = harness.rss()
        started = time.perf_counter()
        fleet.connect()
        while any(a.synced_at is None for a in fleet.agents):
            peak = max(peak, harness.rss())
            await asyncio.sleep(0.05)
            if time.perf_counter() - started > 600:
                raise TimeoutError("reconnect storm did not settle")
        result["reconnect_storm_seconds"] = max(a.synced_at or 0 for a in fleet.agents) - started
        result["reconnect_storm_peak_rss_mib"] = peak / 2**20
        result["reconnect_resends"] = sum(a.sync.sent for a in fleet.agents if a.sync)
        return result


def scheduling_throughput(
    clusters: int, *, bindings: int = 2000, divided: str = ""
) -> dict[str, Any]:
    """The scheduler's own code (filters and division) over a snapshot, in this process.

    This is what the scheduler controller runs per binding; the controller adds only a
    cache read and the write of the result (shared etcd transactions).
    """
    from archipel.core import scheduling
    from archipel.v1alpha1 import meta_pb2, policy_pb2

    snapshot = [
        scheduling.ClusterInfo(
            f"c{index:04d}",
            {"fleet": "sim", "tier": "gold" if index % 2 else "silver"},
            region=f"r{index % 5}",
            zones=(f"z{index % 15}",),
        )
        for index in range(clusters)
    ]
    placement = policy_pb2.Placement()
    placement.cluster_affinity.label_selector.CopyFrom(
        meta_pb2.LabelSelector(match_labels={"fleet": "sim"})
    )
    placement.cluster_affinity.exclude.append("c0001")
    requests: dict[str, Fraction] = {}
    if divided:
        placement.replica_scheduling.replica_scheduling_type = "Divided"
        placement.replica_scheduling.replica_division_preference = "Weighted"
    if divided == "static":
        for index in range(0, clusters, 10):
            entry = placement.replica_scheduling.weight_preference.static_weight_list.add()
            entry.target_cluster.cluster_names.append(f"c{index:04d}")
            entry.weight = 1 + index % 3
    elif divided == "dynamic":
        placement.replica_scheduling.weight_preference.dynamic_weight = "AvailableReplicas"
        requests = {"cpu": Fraction(1, 10)}
        snapshot = [
            dataclasses.replace(c, free={"cpu": Fraction(64), "pods": Fraction(110)})
            for c in snapshot
        ]
    started = time.perf_counter()
    for _ in range(bindings):
        decision = scheduling.schedule(
            placement, replicas=100, clusters=snapshot, requests=requests
        )
    elapsed = time.perf_counter() - started
    assert decision.scheduled
    return {
        "clusters": clusters,
        "division": divided or "duplicated",
        "bindings": bindings,
        "bindings_per_second": bindings / elapsed,
    }


async def cold_start(root: Path, sizes: Sizes) -> dict[str, Any]:
    async with simulated(root, "cold-start", sizes.cold_clusters) as (harness, fleet):
        total = sizes.cold_templates * sizes.cold_clusters
        filled = time.perf_counter()
        await harness.apply_templates(manifests_for(sizes.cold_templates), concurrency=64)
        await fleet.wait_arrivals(total, seconds=max(600.0, total / 100))
        fill_seconds = time.perf_counter() - filled
        await fleet.disconnect()
        received_before = sum(a.received for a in fleet.agents)
        assert harness.plane is not None
        harness.plane.stop()
        started = time.perf_counter()
        harness.plane.start(timeout=600)
        serving = time.perf_counter() - started
        fleet.connect()
        while any(a.synced_at is None for a in fleet.agents):
            await asyncio.sleep(0.05)
            if time.perf_counter() - started > 900:
                raise TimeoutError("agents did not resync after the restart")
        caught_up = max(a.synced_at or 0 for a in fleet.agents) - started
        resends = sum(a.received for a in fleet.agents) - received_before
        return {
            "templates": sizes.cold_templates,
            "clusters": sizes.cold_clusters,
            "works": total,
            "fill_seconds": fill_seconds,
            "seconds_until_serving": serving,
            "seconds_until_agents_in_sync": caught_up,
            "resends": resends,
            "rss_mib": harness.rss() / 2**20,
        }


async def etcd_raw(root: Path, sizes: Sizes) -> dict[str, Any]:
    """etcd's own write throughput from this machine: batched guarded puts of work size."""
    binaries = tools.ensure("etcd")
    server = EtcdServer(binary=binaries.etcd, directory=root / "etcd-raw")
    server.start()
    etcd = Etcd([server.endpoint], prefix="/raw/")
    await etcd.connect()
    try:
        sample = work_pb2.PropagationWork()
        sample.spec.workload.manifests.append(structs.to_struct(template("Deployment", 0)))
        value = sample.SerializeToString()
        batch, concurrency = 100, 8
        semaphore = asyncio.Semaphore(concurrency)

        async def write(start: int) -> None:
            async with semaphore:
                await etcd.commit(
                    [Put(f"k/{i:08d}", value, 0) for i in range(start, start + batch)]
                )

        started = time.perf_counter()
        await asyncio.gather(*(write(s) for s in range(0, sizes.etcd_keys, batch)))
        elapsed = time.perf_counter() - started
        return {
            "keys": sizes.etcd_keys,
            "value_bytes": len(value),
            "batch": batch,
            "keys_per_second": sizes.etcd_keys / elapsed,
        }
    finally:
        await etcd.close()
        server.stop()


def e2e(sizes: Sizes) -> dict[str, Any]:
    from bench import e2e_propagation

    return e2e_propagation.run(members=sizes.e2e_members, runs=5, bulk=sizes.e2e_deployments)


def draw(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = {f"fan-out {r['works']} works": r["latencies_ms"] for r in results["fanout"]}
    series["steady updates"] = results["steady"]["latencies_ms"]
    for label, values in series.items():
        if values:
            ordered = sorted(values)
            left.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=label)
    left.set_xscale("log")
    left.set_xlabel("latency per work (ms, log)")
    left.set_ylabel("fraction of works")
    left.set_title("Distribution latency (CDF)")
    left.legend(fontsize=8)
    names = [f"{r['works']} works" for r in results["fanout"]]
    rates = [r["works_per_second"] for r in results["fanout"]]
    right.bar(names, rates, color="#4c72b0", label="Archipel fan-out")
    right.axhline(
        results["etcd_raw"]["keys_per_second"],
        color="#c44e52",
        linestyle="--",
        label="raw etcd writes/s",
    )
    right.set_yscale("log")
    right.set_ylabel("works per second (log)")
    right.set_title("Fan-out throughput")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def table(results: dict[str, Any]) -> str:
    raw = results["etcd_raw"]["keys_per_second"]
    lines = [f"{'scenario':44} {'figure':>44}"]

    def row(name: str, value: str) -> None:
        lines.append(f"{name:44} {value:>44}")

    for r in results["fanout"]:
        row(
            f"fan-out {r['templates']} templates x {r['clusters']} clusters",
            f"{r['works_per_second']:.0f} works/s ({r['works_per_second'] / raw:.2f}x etcd), "
            f"p50 {r['latency_p50_ms']:.0f} p99 {r['latency_p99_ms']:.0f} ms",
        )
    s = results["steady"]
    row(
        f"steady {s['updates_per_second']:.0f} updates/s x {s['clusters']}",
        f"p50 {s['latency_p50_ms']:.0f} ms, p99 {s['latency_p99_ms']:.0f} ms",
    )
    b = results["big_fleet"]
    row(
        f"{b['agents']} agents connected",
        f"{b['rss_connected_mib']:.0f} MiB RSS, connect {b['connect_seconds']:.1f} s",
    )
    for r in results["scheduling"]:
        row(
            f"scheduling, {r['division']}, {r['clusters']} clusters",
            f"{r['bindings_per_second']:.0f} bindings/s",
        )
    row(
        f"reconnect storm, {b['agents']} agents",
        f"{b['reconnect_storm_seconds']:.1f} s, peak {b['reconnect_storm_peak_rss_mib']:.0f} MiB, "
        f"{b['reconnect_resends']} resends",
    )
    c = results["cold_start"]
    row(
        f"cold start, {c['works']} works",
        f"serving {c['seconds_until_serving']:.1f} s, "
        f"in sync {c['seconds_until_agents_in_sync']:.1f} s, {c['resends']} resends",
    )
    row("raw etcd writes (batched, same size)", f"{raw:.0f} keys/s")
    if "e2e" in results:
        e = results["e2e"]["bulk"]
        row(
            f"{e['deployments']} Deployments to {results['e2e']['members']} real members",
            f"{e['seconds_until_all_in_members']:.1f} s ({e['objects_per_second']:.0f} objects/s)",
        )
        row("one real agent's RSS", f"{results['e2e']['agent_rss_mib']:.0f} MiB")
        row(
            "a member API server's own creates",
            f"{results['e2e']['member_api_server_creates_per_second']:.0f} Deployments/s",
        )
    return "\n".join(lines)


async def run_all(sizes: Sizes, root: Path, *, profile: Path | None) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": dataclasses.asdict(sizes)}
    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("etcd_raw", lambda: etcd_raw(root, sizes)),
        ("scheduling", _scheduling),
        ("fanout", lambda: _fanouts(root, sizes, profile)),
        ("steady", lambda: steady(root, sizes)),
        ("big_fleet", lambda: big_fleet(root, sizes)),
        ("cold_start", lambda: cold_start(root, sizes)),
    ]
    for name, step in steps:
        started = time.perf_counter()
        print(f"running {name} ...", flush=True)
        results[name] = await step()
        print(f"  {name} done in {time.perf_counter() - started:.0f}s", flush=True)
    return results


async def _scheduling() -> list[dict[str, Any]]:
    return [
        scheduling_throughput(100),
        scheduling_throughput(1000, bindings=500),
        scheduling_throughput(100, divided="static"),
        scheduling_throughput(100, divided="dynamic"),
        scheduling_throughput(1000, bindings=300, divided="dynamic"),
    ]


async def _fanouts(root: Path, sizes: Sizes, profile: Path | None) -> list[dict[str, Any]]:
    runs = []
    for index, (templates, clusters) in enumerate(sizes.fanout):
        last = index == len(sizes.fanout) - 1
        runs.append(await fanout(root, templates, clusters, profile=profile if last else None))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the reduced run (under 3 minutes)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the real-member scenario")
    parser.add_argument(
        "--profile", type=Path, help="cProfile the control plane in the largest fan-out"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    root = Path(tempfile.mkdtemp(prefix="archipel-bench-"))
    results = asyncio.run(run_all(sizes, root, profile=args.profile))
    if not args.no_e2e:
        print("running e2e ...", flush=True)
        results["e2e"] = e2e(sizes)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=2))
    draw(results, args.output / "results.png")
    print(table(results))
    print(f"results: {args.output / 'results.json'}, chart: {args.output / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
