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
    ("version", "change", "rule"),
    [
        ("v1alpha1", ("string name = 1;", "string title = 1;"), "FIELD_SAME_NAME"),
        (
            "v1alpha1",
            ("  rpc Delete(DeleteRequest) returns (DeleteResponse);\n", ""),
            "RPC_NO_DELETE",
        ),
        # The current version is released too: its clients are protected the same way.
        ("v1alpha2", ("EventType type = 1;", "string type = 1;"), "FIELD_SAME_TYPE"),
    ],
)
def test_a_change_that_breaks_clients_fails_the_check(
    tmp_path: Path, version: str, change: tuple[str, str], rule: str
) -> None:
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy)
    service = copy / "archipel" / version / "service.proto"
    text = service.read_text()
    before, after = change
    assert before in text
    service.write_text(text.replace(before, after, 1))
    checked = buf(copy, "breaking", "--against", "released.binpb", "--error-format=json")
    assert checked.returncode != 0
    assert rule in checked.stdout


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        # Each RPC its own request: v1alpha1's shared requests are not allowed again.
        (
            (
                "rpc Get(MemberClusterServiceGetRequest)",
                "rpc Get(PropagationPolicyServiceGetRequest)",
            ),
            "RPC_REQUEST_RESPONSE_UNIQUE",
        ),
        # Every field says what it means.
        (("  // The object's name.\n  string name = 2;", "  string name = 2;"), "COMMENT_FIELD"),
    ],
)
def test_the_current_api_keeps_every_lint_rule(
    tmp_path: Path, change: tuple[str, str], rule: str
) -> None:
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy)
    service = copy / "archipel" / "v1alpha2" / "service.proto"
    text = service.read_text()
    before, after = change
    assert before in text
    service.write_text(text.replace(before, after, 1))
    checked = buf(copy, "lint", "--error-format=json")
    assert checked.returncode != 0
    assert rule in checked.stdout
