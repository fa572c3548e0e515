"""What TLS with client certificates costs etcd's clients: writes per second to one
etcd on loopback, plaintext and TLS side by side, in the same run.

Each round starts a fresh etcd twice, once plaintext and once serving TLS with
``--client-cert-auth`` (:class:`~archipel.fleet.etcd.EtcdServer` with ``tls``: its CA
and certificates are made then, and counted in the start time), and measures through
the control plane's own client (:class:`controlplane.etcd.Etcd`):

* batched writes, as ``bench.run``'s raw etcd figure: guarded puts of a work's size,
  100 to a transaction, 8 transactions in flight;
* single writes, one at a time: each a round trip, where any per-request cost shows;
* the time from launching etcd to its first answer, which every test fixture pays.

Rounds alternate the two, so a machine that slows down during the run slows both.
``python -m bench.etcd_tls``; the results go to ``.local/bench/etcd-tls.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from archipel import structs
from archipel.fleet import tools
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import work_pb2
from bench.run import RESULTS, template
from controlplane.etcd import Etcd, Put, load_tls

MODES = ("plaintext", "tls")


async def measure(
    root: Path, *, tls: bool, batched_keys: int, single_keys: int
) -> dict[str, float]:
    started = time.perf_counter()
    server = EtcdServer(binary=tools.ensure("etcd").etcd, directory=root, tls=tls)
    server.start()
    ready = time.perf_counter() - started
    files = server.client_tls
    etcd = Etcd(
        [server.endpoint],
        prefix="/bench/",
        tls=load_tls(files.ca, files.cert, files.key) if files is not None else None,
    )
    await etcd.connect()
    try:
        sample = work_pb2.PropagationWork()
        sample.spec.workload.manifests.append(structs.to_struct(template("Deployment", 0)))
        value = sample.SerializeToString()
        batch, semaphore = 100, asyncio.Semaphore(8)

        async def write(start: int) -> None:
            async with semaphore:
                await etcd.commit(
                    [Put(f"b/{i:08d}", value, 0) for i in range(start, start + batch)]
                )

        began = time.perf_counter()
        await asyncio.gather(*(write(s) for s in range(0, batched_keys, batch)))
        batched = batched_keys / (time.perf_counter() - began)
        began = time.perf_counter()
        for index in range(single_keys):
            await etcd.commit([Put(f"s/{index:08d}", value, 0)])
        single = single_keys / (time.perf_counter() - began)
    finally:
        await etcd.close()
        server.stop()
    return {
        "start_seconds": ready,
        "batched_keys_per_second": batched,
        "single_writes_per_second": single,
    }


async def run(root: Path, *, rounds: int, batched_keys: int, single_keys: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for index in range(rounds):
        for mode in MODES:
            print(f"round {index + 1}/{rounds}, {mode} ...", flush=True)
            runs[mode].append(
                await measure(
                    root / f"{mode}-{index}",
                    tls=mode == "tls",
                    batched_keys=batched_keys,
                    single_keys=single_keys,
                )
            )
    medians = {
        mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for mode, results in runs.items()
    }
    return {
        "batched_keys": batched_keys,
        "single_keys": single_keys,
        "runs": runs,
        "median": medians,
    }


def table(results: dict[str, Any]) -> str:
    plain, tls = results["median"]["plaintext"], results["median"]["tls"]
    rows = [
        ("batched writes (keys/s)", "batched_keys_per_second", "{:,.0f}"),
        ("single writes (writes/s)", "single_writes_per_second", "{:,.0f}"),
        ("etcd start to healthy (s)", "start_seconds", "{:.2f}"),
    ]
    heading = f"median of {len(results['runs']['tls'])} rounds"
    lines = [f"{heading:<28}{'plaintext':>12}{'TLS':>12}{'TLS/plain':>11}"]
    for label, key, form in rows:
        lines.append(
            f"{label:<28}{form.format(plain[key]):>12}{form.format(tls[key]):>12}"
            f"{tls[key] / plain[key]:>10.0%}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batched-keys", type=int, default=20_000)
    parser.add_argument("--single-keys", type=int, default=2_000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="archipel-bench-etcd-tls-"))
    results = asyncio.run(
        run(root, rounds=args.rounds, batched_keys=args.batched_keys, single_keys=args.single_keys)
    )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "etcd-tls.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"results: {args.output / 'etcd-tls.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
