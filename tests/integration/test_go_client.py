"""The Go client (clients/go) against a real control plane, and its generated code kept
current with proto/.

The example, built with ``go build``, propagates a ConfigMap to a member cluster joined
over the API and lists the clusters; regenerating the client into a temporary directory
must give exactly the committed .pb.go files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.v1alpha2 import service_pb2, service_pb2_grpc
from tests.integration.agents import check_example_output, check_generated

pytestmark = [pytest.mark.servers, pytest.mark.tools]

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "go"
GENERATED = CLIENT / "archipel"


def run(command: list[str], *, timeout: float, cwd: Path = CLIENT) -> str:
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def go() -> str:
    found = shutil.which("go")
    if found is None:
        pytest.skip("Go is needed for the Go client")
    return found


def join(plane: ControlPlaneProcess, name: str) -> None:
    with plane.channel() as channel:
        service_pb2_grpc.ClusterAdminServiceStub(channel).Join(
            service_pb2.JoinRequest(name=name),
            metadata=(("authorization", f"Bearer {plane.admin_token}"),),
            timeout=30,
        )


def test_the_example_propagates_a_config_map(
    plane: ControlPlaneProcess, go: str, tmp_path: Path
) -> None:
    join(plane, "go-member")
    example = tmp_path / "archipel-example"
    # Cold (empty module and build caches) this takes about a minute.
    run([go, "build", "-o", str(example), "./cmd/archipel-example"], timeout=600)

    output = run(
        [
            str(example),
            f"--server={plane.address}",
            f"--token-file={plane.token_file}",
            f"--ca-file={plane.ca_file}",
            "--name=greeting",
            "--namespace=go-client",
            "--cluster=go-member",
            "--timeout=60s",
        ],
        timeout=120,
    )

    check_example_output(output, "go-member")


def test_the_committed_code_is_what_generation_gives(tmp_path: Path) -> None:
    run(["bash", str(CLIENT / "generate.sh"), str(tmp_path)], timeout=600)
    fresh = tmp_path / "archipel"

    check_generated(GENERATED, fresh, "clients/go/archipel")
