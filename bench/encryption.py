"""What encryption at rest costs: the same runs with and without it, side by side.

* The transformer alone, in process: microseconds to encrypt and to decrypt a value of
  1 KiB and of 64 KiB (AES-GCM through ``cryptography``), and to decide how a work is
  stored (its template's kind, read from the work).
* The store alone, in process, on a real etcd: ``--secrets`` Secret templates created
  32 at a time (writes per second: etcd and the store's own Python), then listed (the
  best of ten), with and without the transformer, alternating.
* Through the API, on a real etcd and control-plane process: ``--secrets`` Secret
  templates (1 KiB of data each) applied, 32 at a time (writes per second), then listed
  (objects per second: every one decrypted), once with Secrets encrypted (the launcher's
  default configuration) and once without any configuration.
* Fan-out: those Secrets propagated to ``--clusters`` simulated agents (bench.fleet):
  works per second from the first apply to the last work's arrival, each work and
  binding encrypted on the way in and decrypted on the way to its agent.

``python -m bench.encryption`` writes ``.local/bench/encryption.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format, struct_pb2

from archipel import structs
from archipel.core import kinds
from archipel.fleet import tools
from archipel.fleet.controlplane import ControlPlaneProcess, encryption_config_text
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import policy_pb2, work_pb2
from archipel.v1alpha2 import service_pb2, service_pb2_grpc
from bench.fleet import SimulatedFleet
from controlplane import encryption
from controlplane.etcd import Etcd
from controlplane.store import Store

RESULTS = Path(".local/bench")
NAMESPACE = "bench"


def secret(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"secret-{index:05d}", "namespace": NAMESPACE},
        "type": "Opaque",
        "data": {"payload": base64.b64encode(os.urandom(768)).decode()},  # 1 KiB
    }


def transformer_costs(rounds: int = 2000) -> dict[str, float]:
    """Microseconds per call of the transformer, in this process."""
    config = encryption.parse_config(
        yaml.safe_load(encryption_config_text([("key1", os.urandom(32))]))
    )
    t = encryption.Encryption(config)
    key = "templates/core/Secret/bench/s"
    context = b"/archipel/" + key.encode()
    results: dict[str, float] = {}
    for label, size in (("1KiB", 1024), ("64KiB", 64 * 1024)):
        value = os.urandom(size)
        started = time.perf_counter()
        for _ in range(rounds):
            stored = t.write(key, value, context=context)
        results[f"encrypt_{label}_us"] = (time.perf_counter() - started) / rounds * 1e6
        started = time.perf_counter()
        for _ in range(rounds):
            t.read(key, stored, context=context)
        results[f"decrypt_{label}_us"] = (time.perf_counter() - started) / rounds * 1e6
    # A work of a Deployment: read to learn its template's kind, then stored in clear.
    manifest = struct_pb2.Struct()
    manifest.update(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {}}
    )
    work = work_pb2.PropagationWork()
    work.spec.workload.manifests.append(manifest)
    raw = work.SerializeToString()
    work_key = "propagationworks/archipel-es-m1/bench.web-deployment"
    started = time.perf_counter()
    for _ in range(rounds):
        t.write(work_key, raw, context=b"/archipel/" + work_key.encode())
    results["classify_work_us"] = (time.perf_counter() - started) / rounds * 1e6
    return results


async def store_run(
    endpoint: str, transformer: encryption.Encryption | None, secrets: int
) -> dict[str, Any]:
    """Create, then list, ``secrets`` Secret templates through a store on a fresh prefix."""
    etcd = Etcd([endpoint], prefix=f"/bench-{uuid.uuid4().hex[:8]}/", transformer=transformer)
    await etcd.connect()
    store = Store(etcd)
    slots = asyncio.Semaphore(32)

    async def create(index: int) -> None:
        async with slots:
            await store.create(kinds.RESOURCE_TEMPLATE, secret(index))

    try:
        started = time.perf_counter()
        await asyncio.gather(*(create(i) for i in range(secrets)))
        written = time.perf_counter() - started
        listings = []
        for _ in range(10):
            started = time.perf_counter()
            token, listed = "", 0
            while True:
                items, token, _ = await store.list(
                    kinds.RESOURCE_TEMPLATE, "templates/", continue_token=token
                )
                listed += len(items)
                if not token:
                    break
            listings.append(time.perf_counter() - started)
            assert listed == secrets, listed
    finally:
        await etcd.close()
    return {
        "encrypted": transformer is not None,
        "writes_per_second": secrets / written,
        # The best of ten: a listing is CPU work of tens of milliseconds, which other
        # processes on the machine only ever slow down.
        "listed_per_second": secrets / min(listings),
    }


async def store_runs(root: Path, *, secrets: int, rounds: int) -> list[dict[str, Any]]:
    """:func:`store_run` with and without the transformer, alternating, on one etcd."""
    config = encryption.parse_config(
        yaml.safe_load(encryption_config_text([("key1", os.urandom(32))]))
    )
    etcd_server = EtcdServer(binary=tools.ensure("etcd").etcd, directory=root / "store-etcd")
    etcd_server.start()
    try:
        return [
            await store_run(etcd_server.endpoint, transformer, secrets)
            for _ in range(rounds)
            for transformer in (None, encryption.Encryption(config))
        ]
    finally:
        etcd_server.stop()


async def api_run(root: Path, *, encrypt: bool, secrets: int, clusters: int) -> dict[str, Any]:
    """Apply, list and propagate ``secrets`` Secrets on a fresh etcd and control plane."""
    name = "encrypted" if encrypt else "plaintext"
    etcd = EtcdServer(binary=tools.ensure("etcd").etcd, directory=root / name / "etcd")
    etcd.start()
    plane = ControlPlaneProcess(
        etcd_endpoint=etcd.endpoint,
        directory=root / name / "cp",
        heartbeat_interval=30,
        cluster_grace_period=600,
        encrypt=encrypt,
    )
    plane.start(timeout=600)
    channel = plane.aio_channel(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    metadata = (("authorization", f"Bearer {plane.admin_token}"),)
    fleet = SimulatedFleet(
        plane.address, plane.admin_token, heartbeat_interval=30, ca_file=plane.ca_file
    )
    try:
        await fleet.join(clusters, labels={"fleet": "sim"})
        fleet.connect()
        await fleet.wait_connected(seconds=300)
        templates = service_pb2_grpc.ResourceTemplateServiceStub(channel)
        policies = service_pb2_grpc.PropagationPolicyServiceStub(channel)
        wanted = json_format.ParseDict(
            {
                "metadata": {"name": "secrets", "namespace": NAMESPACE},
                "spec": {
                    "resourceSelectors": [{"apiVersion": "v1", "kind": "Secret"}],
                    "placement": {
                        "clusterAffinity": {"labelSelector": {"matchLabels": {"fleet": "sim"}}}
                    },
                },
            },
            policy_pb2.PropagationPolicy(),
        )
        await policies.Apply(
            service_pb2.PropagationPolicyServiceApplyRequest(object=wanted), metadata=metadata
        )
        slots = asyncio.Semaphore(32)

        async def apply(index: int) -> None:
            async with slots:
                template = work_pb2.ResourceTemplate(manifest=structs.to_struct(secret(index)))
                await templates.Apply(
                    service_pb2.ResourceTemplateServiceApplyRequest(object=template),
                    metadata=metadata,
                )

        first = time.perf_counter()
        await asyncio.gather(*(apply(i) for i in range(secrets)))
        applied = time.perf_counter() - first
        last = await fleet.wait_arrivals(secrets * clusters, seconds=max(300.0, secrets))
        propagated = last - first

        list_seconds = []
        for _ in range(3):
            started = time.perf_counter()
            listed = 0
            request = service_pb2.ResourceTemplateServiceListRequest(
                api_version="v1", kind="Secret", namespace=NAMESPACE
            )
            while True:
                page = await templates.List(request, metadata=metadata)
                listed += len(page.items)
                token = getattr(page, "continue")
                if not token:
                    break
                setattr(request, "continue", token)
            list_seconds.append(time.perf_counter() - started)
            assert listed == secrets, listed
        return {
            "encrypted": encrypt,
            "secrets": secrets,
            "clusters": clusters,
            "apply_seconds": applied,
            "writes_per_second": secrets / applied,
            "list_seconds_median": statistics.median(list_seconds),
            "listed_per_second": secrets / statistics.median(list_seconds),
            "works": secrets * clusters,
            "fanout_seconds": propagated,
            "works_per_second": secrets * clusters / propagated,
        }
    finally:
        await fleet.disconnect()
        await channel.close(None)
        plane.stop()
        etcd.stop()


def _mean(runs: list[dict[str, Any]], encrypted: bool, field: str) -> float:
    return statistics.mean(float(run[field]) for run in runs if run["encrypted"] == encrypted)


def table(results: dict[str, Any]) -> str:
    costs = ", ".join(f"{k.removesuffix('_us')} {v:.1f}" for k, v in results["transformer"].items())
    lines = [
        f"transformer (us per call): {costs}",
        f"{'store':12} {'writes/s':>10} {'listed/s':>10}",
    ]
    for encrypted in (False, True):
        label = "encrypted" if encrypted else "plaintext"
        lines.append(
            f"{label:12} {_mean(results['store'], encrypted, 'writes_per_second'):10.0f} "
            f"{_mean(results['store'], encrypted, 'listed_per_second'):10.0f}   (mean)"
        )
    lines.append(
        f"{'':12} {'writes/s':>10} {'listed/s':>10} {'works/s':>10}   "
        f"({results['runs'][0]['secrets']} Secrets, {results['runs'][0]['clusters']} clusters)"
    )
    for run in results["runs"]:
        label = "encrypted" if run["encrypted"] else "plaintext"
        lines.append(
            f"{label:12} {run['writes_per_second']:10.0f} {run['listed_per_second']:10.0f} "
            f"{run['works_per_second']:10.0f}"
        )
    for encrypted in (False, True):
        label = "encrypted" if encrypted else "plaintext"
        means = [
            _mean(results["runs"], encrypted, field)
            for field in ("writes_per_second", "listed_per_second", "works_per_second")
        ]
        lines.append(f"{label:12} " + " ".join(f"{m:10.0f}" for m in means) + "   (mean)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secrets", type=int, default=2000)
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"transformer": transformer_costs(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="archipel-bench-encryption-") as tmp:
        results["store"] = asyncio.run(
            store_runs(Path(tmp), secrets=args.secrets, rounds=max(args.rounds, 3))
        )
        for round_ in range(args.rounds):
            for encrypt in (False, True):
                root = Path(tmp) / f"round-{round_}"
                results["runs"].append(
                    asyncio.run(
                        api_run(root, encrypt=encrypt, secrets=args.secrets, clusters=args.clusters)
                    )
                )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "encryption.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
