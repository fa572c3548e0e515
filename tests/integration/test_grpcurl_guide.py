"""docs/grpcurl.md, run: every ``sh`` block, in order, against a real control plane.

The blocks run as one reader's session would: in one working directory, each in
``bash`` with ``set -eo pipefail``, exported variables carried from block to block, and
the real grpcurl (built by build/tools.sh) first on PATH. The guide's example address
(``127.0.0.1:7443``) becomes the test's control plane, and ``.local/admin-token`` in the
session directory is that control plane's admin token file. Each block must exit 0,
except a block marked ``# ends after 3 s``: a watch, which must end at grpcurl's
``-max-time`` deadline (exit 68, DeadlineExceeded) and nothing else. A ``text`` block
right after an ``sh`` block lists lines the output must contain, in order (each a
substring of one line, ``...`` skipping ahead).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path

import pytest

from archipel.fleet import tools
from archipel.fleet.controlplane import ControlPlaneProcess

pytestmark = pytest.mark.servers

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "grpcurl.md"
GUIDE_ADDRESS = "127.0.0.1:7443"
TOKEN_FILE = Path(".local") / "admin-token"
CA_FILE = Path(".local") / "pki" / "ca" / "ca.crt"
WATCH_MARK = "# ends after 3 s"
# grpcurl exits with 64 + the gRPC status code; DEADLINE_EXCEEDED is 4.
DEADLINE_EXIT = 64 + 4
BLOCK_TIMEOUT = 120

_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int


@dataclasses.dataclass(frozen=True)
class Step:
    """An ``sh`` block and the output lines it must print, in order."""

    block: Block
    expected: tuple[str, ...]

    @property
    def watch(self) -> bool:
        return any(line.strip() == WATCH_MARK for line in self.block.code.splitlines())


def fenced_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index])
            index += 1
        assert index < len(lines), f"docs/grpcurl.md:{start + 1}: the block is never closed"
        blocks.append(Block(opening.group(1), "\n".join(body) + "\n", start + 1))
        index += 1
    return blocks


def guide_steps(text: str) -> list[Step]:
    steps: list[Step] = []
    previous: Block | None = None
    for block in fenced_blocks(text):
        if block.language == "text":
            assert previous is not None and previous.language == "sh", (
                f"docs/grpcurl.md:{block.line}: an expected output must follow an sh block"
            )
            expected = tuple(
                line.strip() for line in block.code.splitlines() if line.strip() not in ("", "...")
            )
            steps[-1] = dataclasses.replace(steps[-1], expected=expected)
        elif block.language == "sh":
            steps.append(Step(block, ()))
        previous = block
    return steps


def missing_lines(output: str, expected: tuple[str, ...]) -> list[str]:
    """The expected lines ``output`` lacks, each looked for after the previous one."""
    lines = [line.strip() for line in output.splitlines()]
    position, missing = 0, []
    for wanted in expected:
        for index in range(position, len(lines)):
            if wanted in lines[index]:
                position = index + 1
                break
        else:
            missing.append(wanted)
    return missing


def test_the_guide_is_a_session_with_expectations() -> None:
    steps = guide_steps(GUIDE.read_text())
    setup = steps[0].block.code
    assert f"export ARCHIPEL={GUIDE_ADDRESS}" in setup
    assert f"export TOKEN=$(cat {TOKEN_FILE})" in setup
    assert f"export CA={CA_FILE}" in setup
    # TLS throughout: the guide never teaches plaintext.
    assert not [step.block.line for step in steps if "-plaintext" in step.block.code]
    expected = {line for step in steps for line in step.expected}
    # What the guide promises the reader, at the least.
    for promise in (
        "archipel.v1alpha2.ResourceTemplateService",  # list shows the services
        "archipel.v1alpha1.ResourceTemplateService",  # and those of the previous version
        "grpc.health.v1.Health",
        '"name": "web",',  # get returns the applied object
        '"name": "web-deployment",',  # the binding
        '"name": "shop.web-deployment",',  # the work
        '"type": "EVENT_TYPE_MODIFIED",',  # a watch from a List's revision
        '"v1alpha2",',  # GetVersion names the versions served
        '"status": "SERVING"',
    ):
        assert promise in expected, promise
    # The guide teaches v1alpha2; one v1alpha1 call shows that the previous version
    # still answers, from the same store.
    versions = [
        version
        for step in steps
        for version in re.findall(r"archipel\.(v1alpha\d+)\.\w+Service/", step.block.code)
    ]
    assert set(versions) == {"v1alpha1", "v1alpha2"}, versions
    assert versions.count("v1alpha1") == 1, versions
    assert sum(step.watch for step in steps) >= 9, "a watch for every kind"
    for step in steps:
        if step.watch:
            assert "-max-time 3" in step.block.code, step.block.line
            assert step.block.code.count("/Watch") == 1, step.block.line


def test_every_command_of_the_guide_runs(plane: ControlPlaneProcess, tmp_path: Path) -> None:
    session = tmp_path / "session"
    (session / TOKEN_FILE).parent.mkdir(parents=True)
    (session / TOKEN_FILE).symlink_to(plane.token_file)
    assert plane.ca_file is not None
    (session / CA_FILE).parent.mkdir(parents=True)
    (session / CA_FILE).symlink_to(plane.ca_file)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "grpcurl").symlink_to(tools.ensure("grpcurl").grpcurl)
    state = tmp_path / "exported.sh"
    state.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("ARCHIPEL", "TOKEN", "BASH_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    for step in guide_steps(GUIDE.read_text()):
        code = step.block.code.replace(GUIDE_ADDRESS, plane.address)
        script = f"source {state}\ntrap 'export -p > {state}' EXIT\nset -eo pipefail\n{code}"
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=session,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
        where = (
            f"docs/grpcurl.md:{step.block.line} exited {result.returncode}\n{step.block.code}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
        if step.watch:
            assert result.returncode == DEADLINE_EXIT, where
            assert "DeadlineExceeded" in result.stderr, where
        else:
            assert result.returncode == 0, where
        assert not missing_lines(result.stdout, step.expected), (
            f"missing {missing_lines(result.stdout, step.expected)}\n{where}"
        )
