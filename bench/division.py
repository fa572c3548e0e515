"""How long one replica division takes, from a few replicas to int32's maximum.

Division runs on the control plane's event loop, so its cost is a latency every API
call shares. Each row is the mean time of ``division.webster`` over a second of calls
with random weights (fixed seed). Run with ``python -m bench.division``.
"""

from __future__ import annotations

import random
import time

from archipel.core import division

CASES = ((100, 10), (1000, 10), (1000, 300), (100, 1000), (1000, 2**31 - 1))


def main() -> None:
    generator = random.Random(1)
    print(f"{'clusters':>8} {'replicas':>12} {'per call':>12}")
    for clusters, total in CASES:
        weights = {f"c{i:04d}": generator.randint(1, 50) for i in range(clusters)}
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            division.webster(total, weights, seed=7)
            calls += 1
        per_call = (time.perf_counter() - started) / calls
        print(f"{clusters:>8} {total:>12} {per_call * 1e6:>10.0f} µs")


if __name__ == "__main__":
    main()
