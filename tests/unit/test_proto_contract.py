"""proto/ is a public contract: buf lints it, and a change that would break clients of
the released API fails (``make lint`` runs both; these tests show the check bites)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from archipel.fleet import tools

pytestmark = pytest.mark.tools

PROTO = Path(__file__).resolve().parents[2] / "proto"


def buf(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools.ensure("buf").buf), *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_the_contract_lints_and_matches_the_released_api() -> None:
    assert buf(PROTO, "lint").returncode == 0
    checked = buf(PROTO, "breaking", "--against", "released.binpb")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (("string name = 1;", "string title = 1;"), "FIELD_SAME_NAME"),
        (("  rpc Delete(DeleteRequest) returns (DeleteResponse);\n", ""), "RPC_NO_DELETE"),
    ],
)
def test_a_change_that_breaks_clients_fails_the_check(
    tmp_path: Path, change: tuple[str, str], rule: str
) -> None:
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy)
    service = copy / "archipel" / "v1alpha1" / "service.proto"
    text = service.read_text()
    before, after = change
    assert before in text
    service.write_text(text.replace(before, after, 1))
    checked = buf(copy, "breaking", "--against", "released.binpb", "--error-format=json")
    assert checked.returncode != 0
    assert rule in checked.stdout
