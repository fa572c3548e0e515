"""Paths of the Go programs built by ``build/tools.sh``.

The script owns the versions and the cache layout; this module only asks it to make
sure a tool is built and reads back where it went, so no version is written twice.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_SCRIPT = REPO_ROOT / "build" / "tools.sh"


class ToolsError(RuntimeError):
    """A tool could not be built or found."""


@dataclasses.dataclass(frozen=True)
class Tools:
    """Absolute paths of the built programs and kwok's stage definitions."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    kwok_stages: Path
    grpcurl: Path
    helm: Path
    buf: Path
    protoc_gen_go: Path
    protoc_gen_go_grpc: Path
    kube_version: str


def ensure(*names: str) -> Tools:
    """Build the named tools if they are missing (all of them when none is named)."""
    if not TOOLS_SCRIPT.exists():
        raise ToolsError(f"{TOOLS_SCRIPT} is missing: run from a source checkout of Archipel")
    result = subprocess.run(
        ["bash", str(TOOLS_SCRIPT), *names], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ToolsError(f"building tools failed:\n{result.stderr[-4000:]}")
    return locate()


def locate() -> Tools:
    """Where the tools are, as the build script lays them out."""
    result = subprocess.run(
        ["bash", str(TOOLS_SCRIPT), "--paths"], capture_output=True, text=True, check=True
    )
    paths = dict(line.split("=", 1) for line in result.stdout.split())
    return Tools(
        etcd=Path(paths["etcd"]),
        kube_apiserver=Path(paths["kube-apiserver"]),
        kube_controller_manager=Path(paths["kube-controller-manager"]),
        kube_scheduler=Path(paths["kube-scheduler"]),
        kwok=Path(paths["kwok"]),
        kwok_stages=Path(paths["kwok-stages"]),
        grpcurl=Path(paths["grpcurl"]),
        helm=Path(paths["helm"]),
        buf=Path(paths["buf"]),
        protoc_gen_go=Path(paths["protoc-gen-go"]),
        protoc_gen_go_grpc=Path(paths["protoc-gen-go-grpc"]),
        kube_version=paths["kube-version"],
    )
