"""Fuzzing what the CLI reads: manifests, Archipel's and Karmada's policies, cluster
lists and earlier results, with YAML bombs among them.

Hypothesis writes files (YAML or JSON) of templates, policies of every kind (random
messages of each kind's own descriptor, as documents, then broken here and there),
cluster lists for ``schedule --simulate`` and ``render``, and splices bombs into them:
alias expansions (billion laughs), deep nesting, huge scalars, anchors and aliases as
keys, merge keys. Each goes through the CLI's own entry point (``archipel apply``,
``schedule --simulate``, ``render``) in this process, with no server; whatever the
input, the CLI answers with exit code 0, or with exit code 1 and one line on stderr,
never a traceback. A few bombs also go through the real command, as a user runs it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format, message_factory
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tenacity import stop_after_attempt

from archipel import client as client_module
from archipel.cli import main as cli
from archipel.core import kinds
from tests import fuzzstats
from tests.integration import fuzzing

ROOT = Path(__file__).resolve().parents[2]
# Nothing listens here: a command that gets past reading its files fails to connect.
NOWHERE = "127.0.0.1:9"

FUZZ = settings(
    max_examples=fuzzstats.scaled(250),
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


# -- documents -------------------------------------------------------------------------

NAMES = st.sampled_from(["web", "db", "a", "Bad_Name", "", "x" * 300])
TEMPLATE = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["v1", "apps/v1", "batch/v1", "example.io/v1", "a/b/c"]),
        "kind": st.sampled_from(["Deployment", "ConfigMap", "Job", "Namespace", "Widget", "X/Y"]),
        "metadata": st.fixed_dictionaries(
            {"name": NAMES},
            optional={
                "namespace": st.sampled_from(["default", "shop", "", "UPPER"]),
                "labels": st.dictionaries(
                    st.sampled_from(["app", "tier", "a/b/c"]), st.sampled_from(["web", "", "é"])
                ),
            },
        ),
    },
    optional={
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "replicas": st.one_of(st.integers(-5, 2**40), st.floats(), fuzzing.TEXT),
                "template": fuzzing.JSON,
                "parallelism": st.integers(-1, 10),
            },
        ),
        "data": st.dictionaries(fuzzing.TEXT, st.one_of(fuzzing.TEXT, fuzzing.DEEP), max_size=3),
    },
)

_POLICY_KINDS = [
    kind for kind in kinds.API_KINDS.values() if kind.name.endswith(("Policy", "MemberCluster"))
]


@st.composite
def api_document(draw: st.DrawFn) -> dict[str, Any]:
    """An Archipel (or Karmada) object as a document: a random message of the kind's own
    type, as JSON, under one of the kind's apiVersions."""
    kind = draw(st.sampled_from(_POLICY_KINDS))
    descriptor = kind.new().DESCRIPTOR
    message = message_factory.GetMessageClass(descriptor)()
    message.MergeFromString(draw(fuzzing.message_bytes(descriptor, depth=1)))
    try:
        document: dict[str, Any] = json_format.MessageToDict(message)
    except (ValueError, json_format.Error):
        # A random Timestamp out of JSON's range: no file could say it.
        document = {}
    group = kind.api_version.split(".", 1)[0]
    document["apiVersion"] = draw(
        st.sampled_from(
            [*kind.accepted_api_versions, f"{group}.karmada.io/v1alpha1", kind.api_version]
        )
    )
    document["kind"] = kind.name
    metadata = document.setdefault("metadata", {})
    metadata["name"] = draw(st.one_of(st.just("p"), NAMES))
    return document


@st.composite
def broken(draw: st.DrawFn, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with a key added, removed or given a value of another type."""
    how = draw(st.sampled_from(["as-is", "as-is", "unknown-field", "retype", "drop"]))
    if how == "as-is":
        return document
    path = [document]
    while isinstance(path[-1], dict) and path[-1] and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(path[-1], key=str)))
        if not isinstance(path[-1][key], dict):
            break
        path.append(path[-1][key])
    target = path[-1]
    if how == "unknown-field" or not target:
        target[draw(fuzzing.TEXT)] = draw(fuzzing.JSON)
    elif how == "retype":
        target[draw(st.sampled_from(sorted(target, key=str)))] = draw(fuzzing.JSON)
    else:
        del target[draw(st.sampled_from(sorted(target, key=str)))]
    return document


DOCUMENT = st.one_of(TEMPLATE, api_document()).flatmap(broken)

CLUSTER = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["member1", "member2"]), fuzzing.JSON)},
    optional={
        "labels": st.one_of(st.dictionaries(fuzzing.TEXT, fuzzing.TEXT, max_size=2), fuzzing.JSON),
        "provider": fuzzing.JSON,
        "region": st.one_of(st.just("eu"), fuzzing.JSON),
        "zone": st.one_of(st.just("eu-1"), fuzzing.JSON),
        "zones": fuzzing.JSON,
        "taints": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"key": fuzzing.TEXT, "effect": st.sampled_from(["NoSchedule", "NoExecute", 7])}
                ),
                max_size=2,
            ),
            fuzzing.JSON,
        ),
        "apiResources": st.one_of(st.just(["apps/v1/Deployment", "v1/ConfigMap"]), fuzzing.JSON),
        "available": st.one_of(
            st.dictionaries(st.sampled_from(["cpu", "memory", "pods"]), fuzzing.JSON),
            st.just({"cpu": "8", "memory": "32Gi"}),
            fuzzing.JSON,
        ),
        "availableReplicas": st.one_of(st.integers(-3, 2**70), fuzzing.JSON),
    },
)
CLUSTERS = st.one_of(
    st.lists(CLUSTER, max_size=3),
    st.lists(CLUSTER, max_size=3).map(lambda items: {"clusters": items}),
    st.lists(st.one_of(CLUSTER, api_document()), max_size=3).map(lambda items: {"items": items}),
    fuzzing.JSON,
)
PREVIOUS = st.one_of(
    st.just(
        {"results": [{"template": "deployment/web", "clusters": [{"name": "m", "replicas": 1}]}]}
    ),
    st.fixed_dictionaries({"results": fuzzing.JSON}),
    st.lists(st.dictionaries(st.sampled_from(["template", "clusters"]), fuzzing.JSON)),
    fuzzing.JSON,
)


# -- bombs -------------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


BOMBS: dict[str, str] = {
    "billion-laughs": billion_laughs(),
    "deep-flow": "[" * 5000 + "]" * 5000,
    "deep-block": "".join(f"{' ' * i}a:\n" for i in range(200)),
    "deep-aliases": (
        "a: &a [[[[[[[[[[1]]]]]]]]]]\nb: &b [*a, [*a, [*a, [*a]]]]\nc: [*b, [*b, [*b]]]\n"
    ),
    "huge-scalar": "data: " + "x" * (3 * 1024 * 1024) + "\n",
    "huge-number": "n: " + "9" * 10_000 + "\n",
    "anchor-in-key": "? &k [a, b]\n: v\n? *k\n: w\n",
    "alias-as-key": "base: &k name\n*k : value\n",
    "mapping-key": "{a: 1}: x\n",
    "merge-bomb": "a: &a {x: 1, y: 2}\nb: &b {<<: [*a, *a, *a]}\nc: {<<: [*b, *b, *b, *b]}\n",
    "recursive-anchor": "a: &a [*a]\n",
    "undefined-alias": "a: *nowhere\n",
    "binary-tag": "a: !!binary aGk=\n",
    "python-tag": "a: !!python/object/apply:os.system [echo pwned]\n",
    "nul-bytes": "a: \x00\x01\n",
    "lone-surrogate": 'a: "\\ud800"\n',
    "many-documents": "---\n" * 50_000,
}


def _yaml(document: Any) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _json(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, allow_nan=True)


@st.composite
def file_text(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> str:
    """One file: documents as YAML or JSON, sometimes a bomb instead or spliced in."""
    how = draw(st.sampled_from(["yaml", "yaml", "json", "bomb", "spliced"]))
    if how == "bomb":
        return BOMBS[draw(st.sampled_from(sorted(BOMBS)))]
    items = draw(st.lists(documents, min_size=1, max_size=3))
    if how == "json":
        return "\n".join(_json(item) for item in items)
    text = "---\n".join(_yaml(item) for item in items)
    if how == "spliced":
        lines = text.splitlines(keepends=True)
        at = draw(st.integers(0, len(lines)))
        bomb = BOMBS[draw(st.sampled_from(sorted(BOMBS)))]
        text = "".join(lines[:at]) + bomb + "".join(lines[at:])
    return text


# -- running the CLI in this process -------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-fuzz")


@pytest.fixture(scope="module", autouse=True)
def no_server() -> Iterator[None]:
    """No server, and no waiting for one: a command that gets that far fails at once."""
    patch = pytest.MonkeyPatch()
    patch.setenv("ARCHIPEL_SERVER", NOWHERE)
    patch.setenv("ARCHIPEL_TOKEN", "t")
    patch.setenv("ARCHIPEL_CONFIG", "/nonexistent/archipel.yaml")
    patch.setattr(
        client_module,
        "CONNECTION_RETRIES",
        client_module.CONNECTION_RETRIES.copy(sleep=lambda _: None, stop=stop_after_attempt(1)),
    )
    # Whatever a fuzzed file says, the CLI connects to this machine's loopback only: a
    # host name would be looked up in DNS, which is not this test's to reach.
    for name in ("insecure_channel", "secure_channel"):
        patch.setattr(grpc, name, _loopback_only(getattr(grpc, name)))
    yield
    patch.undo()


def _loopback_only(make: Any) -> Any:
    def channel(target: str, *args: Any, **kwargs: Any) -> Any:
        assert target.startswith(("127.", "localhost:", "[::1]:")), target
        return make(target, *args, **kwargs)

    return channel


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``archipel ARGV`` in this process: (exit code, stdout, stderr). An exception that
    escapes is a traceback a user would see: the test fails with it."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def check_outcome(command: str, code: int, stderr: str) -> None:
    first = " ".join(stderr.splitlines()[:1])[:60]
    fuzzstats.record("cli", f"exit {code}", detail=f"{command}: {stderr.strip()[:300]}")
    event(
        f"{command}: exit {code}"
        + (f": {first.split(':')[1] if ':' in first else ''}" if code else "")
    )
    problem = ""
    if code not in (0, 1):
        problem = f"exit code {code}"
    elif code == 1 and (stderr.count("\n") != 1 or not stderr.startswith("error: ")):
        problem = "an error that is not one line"
    elif code == 0 and stderr:
        problem = "output on stderr with exit code 0"
    if problem:
        fuzzstats.finding(f"cli {command}: {problem}", stderr[:300])
        raise AssertionError(f"archipel {command}: {problem}: {stderr!r}")


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def _guarded(command: str, *argv: str) -> None:
    try:
        code, _, stderr = run_cli(*argv)
    except BaseException as error:
        fuzzstats.record("cli", "traceback", detail=f"{command}: {error!r}")
        fuzzstats.finding(f"cli {command}: {type(error).__name__} escaped", repr(error)[:300])
        raise
    check_outcome(command, code, stderr)


@FUZZ
@given(file_text(DOCUMENT))
def test_apply_reads_anything_as_a_manifest_or_one_line(workdir: Path, text: str) -> None:
    path = _write(workdir, "apply.yaml", text)
    _guarded("apply", "apply", "-f", str(path))


@FUZZ
@given(file_text(DOCUMENT), file_text(CLUSTERS), st.none() | file_text(PREVIOUS))
def test_schedule_simulate_reads_anything(
    workdir: Path, documents: str, clusters: str, previous: str | None
) -> None:
    argv = [
        "schedule",
        "--simulate",
        "--clusters",
        str(_write(workdir, "clusters.yaml", clusters)),
        "-f",
        str(_write(workdir, "simulate.yaml", documents)),
    ]
    if previous is not None:
        argv += ["--previous", str(_write(workdir, "previous.json", previous))]
    _guarded("schedule --simulate", *argv)


@FUZZ
@given(file_text(DOCUMENT), file_text(CLUSTERS))
def test_render_reads_anything(workdir: Path, documents: str, clusters: str) -> None:
    _guarded(
        "render",
        "render",
        "-f",
        str(_write(workdir, "render.yaml", documents)),
        "--clusters",
        str(_write(workdir, "render-clusters.yaml", clusters)),
        "--cluster",
        "member1",
    )


# Where a config file may point the CLI: nowhere but this machine's loopback (a
# random host name would be looked up in DNS), or at values that are no address.
_SERVERS = st.one_of(
    st.sampled_from([NOWHERE, "127.0.0.1:9,127.0.0.1:8", "", [NOWHERE], [NOWHERE, NOWHERE]]),
    fuzzing.JSON.filter(lambda value: not isinstance(value, str | list)),
)
_CONFIG = st.one_of(
    fuzzing.JSON.filter(lambda value: not isinstance(value, dict)),
    st.fixed_dictionaries(
        {"server": _SERVERS},
        optional={
            key: st.one_of(fuzzing.JSON, st.sampled_from([NOWHERE, "/nonexistent", "/", ""]))
            for key in ("token", "tokenFile", "tlsCaFile")
        },
    ),
)


@FUZZ
@given(file_text(_CONFIG))
def test_the_config_file_is_read_safely(workdir: Path, text: str) -> None:
    path = _write(workdir, "config.yaml", text)
    with pytest.MonkeyPatch.context() as patch:
        # The file alone says where the server is and what the token is.
        patch.delenv("ARCHIPEL_SERVER")
        patch.delenv("ARCHIPEL_TOKEN")
        _guarded("version --config", "--config", str(path), "version")


# -- bombs through the real command ----------------------------------------------------------


def _command(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ARCHIPEL_SERVER": NOWHERE,
        "ARCHIPEL_TOKEN": "t",
        "ARCHIPEL_CONFIG": str(tmp_path / "absent.yaml"),
    }
    return subprocess.run(
        [sys.executable, "-m", "archipel.cli.main", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


HEAD = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"


@pytest.mark.parametrize(
    ("bomb", "where"),
    [
        ("billion-laughs", "manifests"),
        ("billion-laughs", "clusters"),
        ("deep-flow", "clusters"),
        ("merge-bomb", "clusters"),
        ("huge-scalar", "manifests"),
        ("anchor-in-key", "manifests"),
        ("python-tag", "clusters"),
    ],
)
def test_a_bomb_is_one_line_and_exit_1_from_the_real_command(
    tmp_path: Path, bomb: str, where: str
) -> None:
    if where == "manifests":
        # No server listens: a file that gets past reading fails to connect, in one line.
        manifests = tmp_path / "manifests.yaml"
        manifests.write_text(HEAD + BOMBS[bomb])
        result = _command(tmp_path, "apply", "-f", str(manifests))
    else:
        clusters = tmp_path / "clusters.yaml"
        clusters.write_text(BOMBS[bomb])
        manifests = tmp_path / "manifests.yaml"
        manifests.write_text(HEAD)
        result = _command(
            tmp_path, "schedule", "--simulate", "--clusters", str(clusters), "-f", str(manifests)
        )
    fuzzstats.record("cli command", f"exit {result.returncode}", detail=result.stderr[:300])
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
