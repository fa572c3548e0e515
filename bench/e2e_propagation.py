"""Propagation on real parts: apply-to-applied latency and bulk propagation time.

Starts etcd, N ``api`` members, the control plane and an agent per member, then:

* latency: applies one Deployment at a time (20 runs) and times, with a watch on
  every member, how long until it exists in all of them; reports the median and p90;
* bulk: applies 500 Deployments as fast as the client can and times until every
  member holds all of them.

Run with ``make bench-e2e``; results go to ``.local/bench/e2e_propagation.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch

from archipel.fleet.controlplane import AgentProcess, ControlPlaneProcess
from archipel.fleet.members import Fleet, Member, default_specs


class Arrivals:
    """When each Deployment name first appeared in each member (watch, not poll)."""

    def __init__(self, members: list[Member], namespace: str) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self.changed = threading.Condition()
        self._stop = threading.Event()
        for member in members:
            threading.Thread(target=self._watch, args=(member, namespace), daemon=True).start()

    def _watch(self, member: Member, namespace: str) -> None:
        apps = k8s.AppsV1Api(member.api_client())
        while not self._stop.is_set():
            try:
                stream = watch.Watch()  # type: ignore[no-untyped-call]
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    apps.list_namespaced_deployment, namespace, timeout_seconds=30
                ):
                    if event["type"] == "ADDED":
                        key = (member.name, event["object"].metadata.name)
                        with self.changed:
                            self.seen.setdefault(key, time.perf_counter())
                            self.changed.notify_all()
            except Exception:
                time.sleep(0.2)

    def wait(self, names: list[str], members: list[str], timeout: float) -> float:
        """The time the last of these objects arrived."""
        wanted = [(m, n) for m in members for n in names]
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(key in self.seen for key in wanted):
                if not self.changed.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(
                        f"{sum(k in self.seen for k in wanted)}/{len(wanted)} arrived"
                    )
            return max(self.seen[key] for key in wanted)


def _rss(pid: int | None) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(
        (int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")),
        0,
    )


def _direct_creates(member: Member, count: int) -> float:
    """The member API server's own create throughput, the limit beneath the bulk figure."""
    import concurrent.futures

    core = k8s.CoreV1Api(member.api_client())
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="direct")))
    apps = k8s.AppsV1Api(member.api_client())

    def create(index: int) -> None:
        body = deployment("direct", f"d-{index}")
        # The client accepts plain dicts as bodies; its types admit only models.
        apps.create_namespaced_deployment("direct", body)  # type: ignore[arg-type]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(create, range(count)))
    return count / (time.perf_counter() - started)


def deployment(namespace: str, name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
            },
        },
    }


def policy(namespace: str, clusters: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "PropagationPolicy",
        "metadata": {"name": "all", "namespace": namespace},
        "spec": {
            "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
            "placement": {"clusterAffinity": {"clusterNames": clusters}},
        },
    }


def run(*, members: int, runs: int, bulk: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="archipel-bench-"))
    fleet = Fleet(root / "fleet", default_specs(members)).start()
    assert fleet.etcd is not None
    plane = ControlPlaneProcess(etcd_endpoint=fleet.etcd.endpoint, directory=root / "cp")
    agents: list[AgentProcess] = []
    try:
        plane.start()
        for member in fleet:
            agent = AgentProcess(control_plane=plane, member=member, token_file=plane.join(member))
            agent.start()
            agents.append(agent)
        names = [m.name for m in fleet]
        api = plane.client()
        results: dict[str, Any] = {"members": members}

        namespace = "latency"
        arrivals = Arrivals(list(fleet), namespace)
        api.apply_document(policy(namespace, names))
        # Warm up the whole path once (namespace creation, watches, caches).
        api.apply_document(deployment(namespace, "warmup"))
        arrivals.wait(["warmup"], names, timeout=120)
        latencies = []
        for index in range(runs):
            name = f"lat-{index}"
            started = time.perf_counter()
            api.apply_document(deployment(namespace, name))
            latencies.append(arrivals.wait([name], names, timeout=60) - started)
        latencies.sort()
        results["latency_seconds"] = {
            "runs": runs,
            "median": statistics.median(latencies),
            "p90": latencies[int(0.9 * (len(latencies) - 1))],
            "min": latencies[0],
            "max": latencies[-1],
        }

        namespace = "bulk"
        arrivals = Arrivals(list(fleet), namespace)
        api.apply_document(policy(namespace, names))
        bulk_names = [f"d-{index}" for index in range(bulk)]
        started = time.perf_counter()
        for name in bulk_names:
            api.apply_document(deployment(namespace, name))
        applied = time.perf_counter() - started
        finished = arrivals.wait(bulk_names, names, timeout=600) - started
        results["agent_rss_mib"] = max(_rss(agent.process.pid) for agent in agents) / 2**20
        results["bulk"] = {
            "deployments": bulk,
            "objects_in_members": bulk * members,
            "apply_calls_seconds": applied,
            "seconds_until_all_in_members": finished,
            "objects_per_second": bulk * members / finished,
        }
        results["member_api_server_creates_per_second"] = _direct_creates(fleet["member1"], bulk)
        api.close()
        return results
    finally:
        for agent in agents:
            agent.stop()
        plane.stop()
        fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--bulk", type=int, default=500)
    parser.add_argument("--output", type=Path, default=Path(".local/bench/e2e_propagation.json"))
    args = parser.parse_args()
    results = run(members=args.members, runs=args.runs, bulk=args.bulk)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    latency = results["latency_seconds"]
    bulk = results["bulk"]
    print(
        f"apply -> applied in {args.members} members, {latency['runs']} runs: "
        f"median {latency['median'] * 1000:.0f} ms, p90 {latency['p90'] * 1000:.0f} ms"
    )
    print(f"agent RSS after the run: {results['agent_rss_mib']:.0f} MiB")
    print(
        "the member API server's own create throughput: "
        f"{results['member_api_server_creates_per_second']:.0f} Deployments/s"
    )
    print(
        f"{bulk['deployments']} Deployments to {args.members} members: "
        f"{bulk['seconds_until_all_in_members']:.1f} s ({bulk['objects_per_second']:.0f} objects/s)"
    )


if __name__ == "__main__":
    main()
