"""The TypeScript client (clients/typescript) against a real control plane, and its
generated code kept current with proto/.

The example, compiled with tsc and run with node, propagates a ConfigMap to a member
cluster joined over the API and lists the clusters; regenerating the client into a
temporary directory must give exactly the committed src/gen.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.v1alpha2 import service_pb2, service_pb2_grpc
from tests.integration.agents import check_example_output, check_generated

pytestmark = [pytest.mark.servers, pytest.mark.tools]

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "typescript"
GENERATED = CLIENT / "src" / "gen"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """clients/typescript/node_modules, installed from package-lock.json if missing."""
    # A machine without Node fails here rather than skipping: the client is part of
    # the contract, and a stale generated client must not pass unnoticed.
    assert shutil.which("node") and shutil.which("npm"), "node and npm are needed (Node 20)"
    if not (CLIENT / "node_modules" / ".bin" / "tsc").exists():
        run(["npm", "ci", "--no-audit", "--no-fund"], timeout=600)
    return CLIENT / "node_modules"


def run(command: list[str], *, timeout: float, cwd: Path = CLIENT) -> str:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def join(plane: ControlPlaneProcess, name: str) -> None:
    with plane.channel() as channel:
        service_pb2_grpc.ClusterAdminServiceStub(channel).Join(
            service_pb2.JoinRequest(name=name),
            metadata=(("authorization", f"Bearer {plane.admin_token}"),),
            timeout=30,
        )


def test_the_example_propagates_a_config_map(
    plane: ControlPlaneProcess, node_modules: Path
) -> None:
    join(plane, "ts-member")
    run([str(node_modules / ".bin" / "tsc")], timeout=300)

    output = run(
        [
            "node",
            "dist/example.js",
            f"--server={plane.address}",
            f"--token-file={plane.token_file}",
            f"--ca-file={plane.ca_file}",
            "--name=greeting",
            "--namespace=ts-client",
            "--cluster=ts-member",
            "--timeout=60",
        ],
        timeout=120,
    )

    check_example_output(output, "ts-member")


def test_the_committed_code_is_what_generation_gives(node_modules: Path, tmp_path: Path) -> None:
    run(["bash", str(CLIENT / "generate.sh"), str(tmp_path)], timeout=300)
    fresh = tmp_path / "src" / "gen"

    check_generated(GENERATED, fresh, "clients/typescript/src/gen")
