"""``make bench-quick`` stays runnable: a reduced run writes every result key and a chart.

It asserts nothing about speed: figures belong in benchmark reports, not in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.servers

KEYS = {"sizes", "etcd_raw", "scheduling", "fanout", "steady", "big_fleet", "cold_start"}


def test_bench_quick_writes_results(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--no-e2e", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results.keys() >= KEYS
    assert all(run["works"] == run["templates"] * run["clusters"] for run in results["fanout"])
    assert results["cold_start"]["resends"] == 0
    assert (tmp_path / "results.png").stat().st_size > 0
    assert "fan-out" in result.stdout
