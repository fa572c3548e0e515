"""No member process outlives its owner: not after a clean stop, not after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archipel.fleet.members import Fleet, default_specs

pytestmark = pytest.mark.members(count=1, profile="api")

_OWNER = """
import json, sys, time
from pathlib import Path
from archipel.fleet.members import Fleet, default_specs
fleet = Fleet(Path(sys.argv[1]), default_specs(1)).start()
print(json.dumps(fleet.pids()), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], *, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if _alive(pid)]
        if not left:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def test_clean_stop_leaves_nothing(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet", default_specs(1)).start()
    pids = fleet.pids()
    assert len(pids) == 3  # etcd, kube-apiserver, kube-controller-manager
    assert all(_alive(pid) for pid in pids)
    fleet.stop()
    assert _wait_gone(pids, timeout=5) == []


def test_sigkilled_owner_leaves_nothing(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(tmp_path / "fleet")],
        stdout=subprocess.PIPE,
        text=True,
    ) as owner:
        try:
            assert owner.stdout is not None
            pids = json.loads(owner.stdout.readline())
            assert pids and all(_alive(pid) for pid in pids)
        finally:
            os.kill(owner.pid, signal.SIGKILL)
            owner.wait()
    assert _wait_gone(pids) == []


def test_members_up_ls_down(tmp_path: Path) -> None:
    root = tmp_path / "members"

    def fleetctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "archipel.fleet.fleetctl", *args, "--root", str(root)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    started = fleetctl("up", "--count", "2", "--profile", "api")
    try:
        assert started.returncode == 0, started.stderr
        assert (root / "member1" / "kubeconfig").is_file()
        assert (root / "member2" / "kubeconfig").is_file()
        state = json.loads((root / "state.json").read_text())
        pids = [pid for m in state["members"].values() for pid in m["pids"].values()]
        pids += [state["etcdPid"], state["supervisorPid"]]

        listing = fleetctl("ls")
        assert listing.returncode == 0
        rows = [line.split() for line in listing.stdout.splitlines()[1:]]
        assert [(row[0], row[2]) for row in rows] == [
            ("member1", "running"),
            ("member2", "running"),
        ]

        again = fleetctl("up", "--count", "1")
        assert again.returncode == 1
        assert "already running" in again.stderr
    finally:
        # The supervisor is detached by design: a failed assertion must not leak it.
        stopped = fleetctl("down")
    assert stopped.returncode == 0, stopped.stderr
    assert _wait_gone(pids) == []
    assert fleetctl("ls").stdout.strip() == "no members running"
