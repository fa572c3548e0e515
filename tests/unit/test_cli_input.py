"""The CLI under hostile files and long lists, without a server.

``archipel apply -f`` reads and checks every document before it connects, so a bad
file is one line on stderr and exit code 1 even with no control plane; ``archipel get``
follows List continue tokens to the last page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from archipel import client as client_module
from archipel.cli import main as cli
from archipel.client import Client, ClientError, Config
from archipel.v1alpha1 import work_pb2
from archipel.v1alpha2 import service_pb2

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"
# Nothing listens here: a CLI that connected before parsing would say so.
NOWHERE = "127.0.0.1:9"


def _bomb() -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]")
    return HEAD + "\n".join(lines) + "\n"


def _run(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ARCHIPEL_SERVER": NOWHERE,
        "ARCHIPEL_TOKEN": "t",
        "ARCHIPEL_CONFIG": str(tmp_path / "absent.yaml"),
    }
    return subprocess.run(
        [sys.executable, "-m", "archipel.cli.main", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(_bomb(), "line 10: more than 524288 values", id="billion-laughs"),
        pytest.param("[" * 10_000 + "]" * 10_000, "(document 1): line 1: ", id="deep-flow"),
        pytest.param(
            "".join(f"{' ' * i}a:\n" for i in range(10_000)),
            "(document 1): line 28: nested deeper than 28 levels",
            id="deep-indented",
        ),
        pytest.param(HEAD.encode() + b"data: {a: \xff}\n", "line 5: not valid UTF-8", id="utf8"),
        pytest.param(
            HEAD + "data: {a: !!binary aGk=}\n", "data.a (line 5): !!binary values", id="binary"
        ),
        pytest.param(HEAD + "data: !!set {a}\n", "data (line 5): !!set values", id="set"),
        pytest.param(HEAD + "data: {1: a}\n", "data (line 5): key 1 is an integer", id="int-key"),
        pytest.param(HEAD + "data: {~: a}\n", "data (line 5): key null", id="null-key"),
        pytest.param(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 12345}\n",
            "metadata.name: must be a string",
            id="numeric-name",
        ),
        pytest.param(
            "apiVersion: v1\nkind: A\nkind: B\nmetadata: {name: x}\n",
            "kind (line 3): duplicate key: first on line 2",
            id="duplicate-kind",
        ),
        pytest.param(
            "apiVersion: policy.karmada.io/v1alpha1\nkind: Nope\nmetadata: {name: x}\n",
            "(document 1): kind: 'Nope' is not a kind of policy.karmada.io/v1alpha1",
            id="unknown-archipel-kind",
        ),
    ],
)
def test_apply_of_a_malformed_file_is_one_line_and_exit_1(
    tmp_path: Path, content: str | bytes, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    result = _run(tmp_path, "apply", "-f", str(path))
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {path} (document "), result.stderr
    assert expected in result.stderr
    assert "cannot reach" not in result.stderr  # refused before connecting
    assert result.stdout == ""


def test_apply_from_stdin_is_checked_too(tmp_path: Path) -> None:
    result = _run(tmp_path, "apply", "-f", "-", stdin=HEAD + "data: {a: 2024-01-01\n")
    assert result.returncode == 1
    assert result.stderr.startswith("error: <stdin> (document 1): line 6: invalid YAML: ")
    assert result.stderr.count("\n") == 1


def test_a_valid_file_reaches_the_connection_and_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(HEAD + "data: {day: 2024-01-01}\n")
    result = _run(tmp_path, "apply", "-f", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {path} (document 1): cannot reach the control plane")
    assert result.stderr.count("\n") == 1


# -- List pages ----------------------------------------------------------------------------


class _PagedList:
    """A List method that hands out ``total`` works ``page`` at a time, as the server will."""

    def __init__(self, total: int, page: int) -> None:
        self.names = [f"work-{i:04d}" for i in range(total)]
        self.page = page
        self.requests: list[Any] = []

    def __call__(self, request: Any, *, metadata: Any, timeout: float) -> Any:
        self.requests.append(request)
        start = int(getattr(request, "continue") or 0)
        answer = service_pb2.PropagationWorkServiceListResponse()
        for name in self.names[start : start + self.page]:
            work = answer.items.add()
            work.metadata.name = name
            work.metadata.namespace = request.namespace
        if start + self.page < len(self.names):
            setattr(answer, "continue", str(start + self.page))
        return answer


class _Stub:
    def __init__(self, list_method: _PagedList) -> None:
        self.List = list_method


def _client() -> Client:
    return Client(Config(server=NOWHERE, token="t"))


def test_list_all_follows_continue_tokens() -> None:
    method = _PagedList(total=25, page=10)
    request = service_pb2.PropagationWorkServiceListRequest(namespace="archipel-es-member1")
    client = _client()
    try:
        items = client.list_all(method, request)
    finally:
        client.close()
    assert [item.metadata.name for item in items] == method.names
    assert [getattr(r, "continue") for r in method.requests] == ["", "10", "20"]
    assert getattr(request, "continue") == ""  # the caller's request is left alone


def test_list_all_stops_on_a_repeated_token() -> None:
    def stuck(request: Any, *, metadata: Any, timeout: float) -> Any:
        answer = service_pb2.PropagationWorkServiceListResponse(items=[work_pb2.PropagationWork()])
        setattr(answer, "continue", "same")
        return answer

    client = _client()
    try:
        with pytest.raises(ClientError, match="repeated a continue token"):
            client.list_all(stuck, service_pb2.PropagationWorkServiceListRequest())
    finally:
        client.close()


def test_get_works_lists_every_page(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    method = _PagedList(total=1234, page=100)
    monkeypatch.setattr(
        client_module.Config, "load", classmethod(lambda cls, path=None: Config(NOWHERE, "t"))
    )
    monkeypatch.setattr(client_module.Client, "stub", lambda self, api_kind: _Stub(method))
    assert cli.main(["get", "works", "-n", "archipel-es-member1", "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)["items"]
    assert [work["metadata"]["name"] for work in listed] == method.names
    assert len(method.requests) == 13


def test_describe_shows_pending_evictions_and_the_failover_history(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli._describe_failover(
        {
            "gracefulEvictionTasks": [
                {
                    "fromCluster": "member3",
                    "replicas": 2,
                    "purgeMode": "Gracefully",
                    "reason": "TaintUntolerated",
                    "creationTimestamp": "2026-12-02T07:00:00Z",
                    "message": "taint cluster.archipel.io/unreachable:NoExecute is not tolerated",
                }
            ]
        },
        {
            "failoverHistory": [
                {
                    "startTime": "2026-12-02T07:00:00Z",
                    "originCluster": "member3",
                    "reason": "TaintUntolerated",
                    "clustersBeforeFailover": ["member1", "member2", "member3"],
                    "clustersAfterFailover": ["member1", "member2"],
                }
            ]
        },
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Evictions (old copies kept for now):"
    assert out[2].split()[:5] == [
        "member3",
        "2",
        "Gracefully",
        "TaintUntolerated",
        "2026-12-02T07:00:00Z",
    ]
    assert out[3:] == [
        "Failovers:",
        "  2026-12-02T07:00:00Z member3 (TaintUntolerated): "
        "member1,member2,member3 -> member1,member2",
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["web"], "'web' is not KIND/NAME of a template"),
        (["deployment/"], "'deployment/' is not KIND/NAME"),
        (["binding/web-deployment"], "'binding/web-deployment' is not KIND/NAME"),
        (["widget/x"], "unknown kind 'widget'"),
        (["deployment/web", "--ttl", "-1"], "--ttl: must not be negative"),
    ],
)
def test_rebalance_refuses_bad_targets_before_connecting(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = _run(tmp_path, "rebalance", *args)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "cannot reach" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
