"""One version, everywhere: the CLI's, the control plane's (InfoService.GetVersion),
and what agents hear in their welcome all come from pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import pytest

from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.v1alpha1 import service_pb2, service_pb2_grpc

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def cli(plane: ControlPlaneProcess, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "archipel.yaml"
    plane.write_cli_config(config)
    return subprocess.run(
        [sys.executable, "-m", "archipel.cli.main", "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_archipel_version_names_the_cli_and_the_control_plane(
    plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    answered = cli(plane, tmp_path, "version")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.splitlines() == [
        f"client: {VERSION}",
        f"server: {VERSION} (APIs v1alpha2, v1alpha1)",
    ]
    assert cli(plane, tmp_path, "--version").stdout.strip() == f"archipel {VERSION}"


def test_the_version_needs_the_admin_token(plane: ControlPlaneProcess) -> None:
    with plane.channel() as channel:
        stub = service_pb2_grpc.InfoServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetVersion(service_pb2.GetVersionRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = stub.GetVersion(
            service_pb2.GetVersionRequest(),
            metadata=(("authorization", f"Bearer {plane.admin_token}"),),
        )
        assert answer.version == VERSION
