"""The committed Python code generated from proto/ (archipel/v1alpha*/) is exactly what
``make proto`` generates now: a proto change without regenerating fails here."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.agents import check_generated

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_python_code_is_what_generation_gives(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "build" / "generate-python.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for package in sorted((ROOT / "proto" / "archipel").iterdir()):
        committed = ROOT / "archipel" / package.name
        fresh = tmp_path / "archipel" / package.name
        check_generated(committed, fresh, f"archipel/{package.name}", ignore=("__pycache__",))
