"""Reading manifests from hostile YAML: every malformed file is one ClientError line.

Each case of issue 10 ("The CLI and YAML") is a row: the exact message names the file,
the document and the field or line. Both loaders run every row: libyaml's parser (the
one used when PyYAML has it) and PyYAML's own, its fallback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archipel import limits, manifests
from archipel.client import ClientError, _parse, read_documents

HEAD = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"

_LOADERS: list[type[Any]] = [manifests._PythonLoader]
if hasattr(manifests, "_LibyamlLoader"):
    _LOADERS.insert(0, manifests._LibyamlLoader)


@pytest.fixture(params=_LOADERS, ids=lambda loader: loader.__name__.strip("_"), autouse=True)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(manifests, "_Loader", request.param)
    yield


def _billion_laughs() -> str:
    """Ten lines that expand to 10^9 strings."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]")
    return HEAD + "\n".join(lines) + "\n"


def _indented(levels: int) -> str:
    return "".join(f"{' ' * level}a{level}:\n" for level in range(levels))


MALFORMED: list[Any] = [
    pytest.param(
        _billion_laughs(),
        "line 10: more than 524288 values once aliases are expanded",
        id="billion-laughs",
    ),
    pytest.param(
        HEAD + "data: &a {x: *a}\n",
        "line 5: alias *a refers to a value that contains it",
        id="recursive-alias",
    ),
    pytest.param(
        HEAD + f"deep: &d {'[' * 20}{']' * 20}\nx: [[[[[[[[[[*d]]]]]]]]]]\n",
        "line 6: alias *d nests the document deeper than 28 levels",
        id="alias-deepens",
    ),
    pytest.param("[" * 10_000 + "]" * 10_000, "line 1: ", id="flow-sequences-10000"),
    pytest.param("{a: " * 10_000 + "}" * 10_000, "line 1: ", id="flow-mappings-10000"),
    pytest.param(_indented(10_000), "line 28: nested deeper than 28 levels", id="indented-10000"),
    pytest.param(
        HEAD.encode() + b"data:\n  key: caf\xe9\n",
        f"line 6: not valid UTF-8 (byte 0xe9 at offset {len(HEAD) + 16})",
        id="invalid-utf8",
    ),
    pytest.param(
        f"{HEAD}---\n{HEAD}".encode() + b"data: \xff\n",
        f"(document 2): line 10: not valid UTF-8 (byte 0xff at offset {2 * len(HEAD) + 10})",
        id="invalid-utf8-second-document",
    ),
    pytest.param(
        HEAD + "data:\n  cert: !!binary aGVsbG8=\n",
        "data.cert (line 6): !!binary values are not JSON: use a base64 string, "
        "as a Secret's data holds",
        id="binary",
    ),
    pytest.param(
        HEAD + "data: !!set {a, b}\n",
        "data (line 5): !!set values are not JSON: use a list",
        id="set",
    ),
    pytest.param(
        HEAD + "data: !!python/object/apply:os.system [echo]\n",
        "data (line 5): !!python/object/apply:os.system values are not JSON: "
        "a manifest holds only JSON values",
        id="python-object",
    ),
    pytest.param(
        HEAD + "data: !Ref thing\n",
        "data (line 5): !Ref values are not JSON: a manifest holds only JSON values",
        id="custom-tag",
    ),
    pytest.param(
        HEAD + "  labels:\n    1: a\n",
        'metadata.labels (line 6): key 1 is an integer: keys must be strings (quote it: "1")',
        id="integer-key",
    ),
    pytest.param(
        HEAD + "data:\n  null: a\n",
        "data (line 6): key null is not a string: keys must be strings (give it a name)",
        id="null-key",
    ),
    pytest.param(
        HEAD + "~: a\n",
        "line 5: key null is not a string: keys must be strings (give it a name)",
        id="null-key-at-the-top",
    ),
    pytest.param(
        HEAD + "data:\n  [a]: b\n",
        "data (line 6): key is a list: keys must be strings",
        id="list-key",
    ),
    pytest.param(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: 12345\n",
        'metadata.name: must be a string, not the number 12345 (quote it: "12345")',
        id="numeric-name",
    ),
    pytest.param(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [a]\n",
        "metadata.name: must be a string, not a list",
        id="list-name",
    ),
    pytest.param(
        "apiVersion: 1\nkind: ConfigMap\nmetadata:\n  name: web\n",
        'apiVersion: must be a string, not the number 1 (quote it: "1")',
        id="numeric-api-version",
    ),
    pytest.param(
        HEAD + "  labels: {tier: 1}\n",
        'metadata.labels.tier: must be a string, not the number 1 (quote it: "1")',
        id="numeric-label",
    ),
    pytest.param(
        "apiVersion: v1\nkind: ConfigMap\nkind: Secret\nmetadata:\n  name: web\n",
        "kind (line 3): duplicate key: first on line 2",
        id="duplicate-kind",
    ),
    pytest.param(
        HEAD + "data:\n  a: 1\n  b: 2\n  a: 3\n",
        "data.a (line 8): duplicate key: first on line 6",
        id="duplicate-nested",
    ),
    pytest.param(
        HEAD + "data: {x: .nan}\n",
        "data.x (line 5): .nan is not a JSON number",
        id="nan",
    ),
    pytest.param(
        HEAD + "spec: {replicas: 1.0e+999}\n",
        "spec.replicas (line 5): 1.0e+999 is not a JSON number",
        id="infinity",
    ),
    pytest.param(
        HEAD + "spec: {replicas: !!int many}\n",
        "spec.replicas (line 5): 'many' is not an integer",
        id="tagged-integer",
    ),
    pytest.param(
        HEAD + f"spec: {{replicas: {'1' * 5000}}}\n",
        "spec.replicas (line 5): integer longer than 4300 digits",
        id="huge-integer",
    ),
    pytest.param(
        HEAD + "data:\n  x: *nowhere\n",
        "line 6: invalid YAML: found undefined alias 'nowhere'",
        id="undefined-alias",
    ),
    pytest.param(
        HEAD + "data:\n  x: \x07\n",
        "line 6: character U+0007 is not allowed in YAML",
        id="control-character",
    ),
    pytest.param(
        HEAD + "data:\n  <<: [a]\n",
        "data (line 6): << merges only mappings",
        id="merge-of-a-string",
    ),
    pytest.param("- a\n- b\n", "a document must be a mapping with apiVersion and kind", id="list"),
    pytest.param("kind: ConfigMap\nmetadata: {name: web}\n", "apiVersion: required", id="no-api"),
    pytest.param("apiVersion: v1\nkind: ConfigMap\n", "metadata.name: required", id="no-name"),
]


@pytest.mark.parametrize(("content", "expected"), MALFORMED)
def test_a_malformed_file_is_one_line_naming_document_and_field(
    tmp_path: Path, content: str | bytes, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    started = time.monotonic()
    with pytest.raises(ClientError) as raised:
        list(read_documents(str(path)))
    message = str(raised.value)
    # Refused while parsing: nothing is expanded or recursed into first.
    assert time.monotonic() - started < 5
    assert "\n" not in message
    located = f"{path} (document " if expected.startswith("(document") else f"{path} (document 1): "
    assert message.startswith(located), message
    assert expected in message, message


def test_deep_nesting_is_refused_at_the_limit_not_before() -> None:
    at_limit = (
        HEAD
        + "spec: "
        + "[" * (limits.MAX_MANIFEST_DEPTH - 1)
        + "]" * (limits.MAX_MANIFEST_DEPTH - 1)
    )
    [(_, document)] = _parse(at_limit, "f.yaml", None)
    assert limits.depth(document) == limits.MAX_MANIFEST_DEPTH
    over = HEAD + "spec: " + "[" * limits.MAX_MANIFEST_DEPTH + "]" * limits.MAX_MANIFEST_DEPTH
    with pytest.raises(ClientError, match=r"^f\.yaml \(document 1\): line 5: "):
        list(_parse(over, "f.yaml", None))


def test_a_few_aliases_are_fine() -> None:
    text = HEAD + "base: &b {a: 1, b: [x, y]}\none: *b\ntwo:\n  <<: *b\n  b: 3\n"
    [(_, document)] = _parse(text, "f.yaml", None)
    assert document["one"] == {"a": 1, "b": ["x", "y"]}
    assert document["two"] == {"a": 1, "b": 3}


def test_unquoted_dates_and_timestamps_stay_the_strings_written() -> None:
    text = HEAD + "data:\n  day: 2024-01-31\n  when: 2001-12-14t21:59:43.10-05:00\n  eq: =\n"
    [(_, document)] = _parse(text, "f.yaml", None)
    assert document["data"] == {
        "day": "2024-01-31",
        "when": "2001-12-14t21:59:43.10-05:00",
        "eq": "=",
    }
    json.dumps(document)


def test_a_file_over_the_size_bound_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_MANIFEST_FILE_BYTES", 1024 * 1024)
    path = tmp_path / "big.yaml"
    path.write_bytes(HEAD.encode() + b"data: {x: '" + b"a" * 1024 * 1024 + b"'}\n")
    with pytest.raises(ClientError, match=r"big\.yaml: larger than 1 MiB: not read$"):
        list(read_documents(str(path)))


def test_a_file_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(HEAD)
    path.chmod(0)
    try:
        with open(path, "rb"):
            pytest.skip("running as a user who reads every file")
    except PermissionError:
        pass
    with pytest.raises(ClientError, match=r"secret\.yaml: Permission denied$"):
        list(read_documents(str(path)))


ORDINARY = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web, "app.kubernetes.io/name": web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx:1.27
          ports: [{containerPort: 80}]
          env:
            - {name: RATIO, value: "0.5"}
            - {name: ON, value: "true"}
          resources: {limits: {cpu: 0.5, memory: 64Mi}}
          args: [--flag, "yes", yes, null, ~, 0o14, 0x1F, 1e3]
---
# an empty document in the middle is skipped but counted
---
apiVersion: policy.karmada.io/v1alpha1
kind: PropagationPolicy
metadata:
  name: web
spec:
  resourceSelectors:
    - apiVersion: apps/v1
      kind: Deployment
      name: web
  placement:
    clusterAffinity:
      clusterNames: [member1, member2]
    replicaScheduling:
      replicaSchedulingType: Divided
      replicaDivisionPreference: Weighted
...
---
{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "json", "namespace": "x"},
 "data": {"a": "1", "nested": "{\\"k\\": [1, 2]}", "unicode": "caf\\u00e9"}}
"""


def test_ordinary_files_parse_as_safe_load_all_did() -> None:
    before = [d for d in yaml.safe_load_all(ORDINARY) if d is not None]
    parsed = list(_parse(ORDINARY, "f.yaml", None))
    assert [document for _, document in parsed] == before
    assert [origin for origin, _ in parsed] == [
        "f.yaml (document 1)",
        "f.yaml (document 3)",
        "f.yaml (document 4)",
    ]


def test_json_and_utf16_files(tmp_path: Path) -> None:
    document = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "é"}, "data": {}}
    (tmp_path / "a.json").write_text(json.dumps(document, indent=2))
    (tmp_path / "b.yaml").write_bytes(yaml.safe_dump(document).encode("utf-16"))
    (tmp_path / "c.yml").write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(document).encode())
    (tmp_path / "ignored.txt").write_text("not: read")
    read = list(read_documents(str(tmp_path), namespace="team"))
    expected = {**document, "metadata": {"name": "é", "namespace": "team"}}
    assert read == [
        (f"{tmp_path / name} (document 1)", expected) for name in ("a.json", "b.yaml", "c.yml")
    ]


# -- fuzzing -------------------------------------------------------------------------------

_ODD_SCALARS = st.sampled_from(
    [
        '"\\ud800"', '"\\ud83d\\ude00"', "0x1F", "0o17", "1_000", "1:20", ".inf", "-.Inf",
        ".nan", "1e400", "1.0e+400", "yes", "off", "~", "", "2001-12-14 21:59:43.10 -5", "=",
        "<<", "!!binary aGk=", "!!str 1", "!!int '7'", "!!float x", "!!int x", "!!bool x",
        "!!null x", "!!set {a}", "!!omap [a: 1]", "!!python/name:os.system", "!local x", "*a",
        "*b", "*undefined",
        "&a x", "&b [1]", "'" + "9" * 5000 + "'", "9" * 5000, "\t", "@", "`", "%", "? x", "- x",
        "[", "}",
    ]
)  # fmt: skip
_PLAIN_SCALARS = st.sampled_from(
    ["a", "'quoted'", '"dq \\u00e9"', "1", "-0", "1.5", "true", "null", "2024-01-01"]
)
_SCALARS = st.one_of(_PLAIN_SCALARS, _PLAIN_SCALARS, _PLAIN_SCALARS, _ODD_SCALARS)


def _collections(child: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    keyed = st.tuples(st.one_of(_SCALARS, st.just("kind"), st.just("metadata")), child)
    return st.one_of(
        st.lists(child, max_size=4).map(lambda items: f"[{', '.join(items)}]"),
        st.lists(keyed, max_size=4).map(
            lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
        ),
        st.tuples(st.sampled_from(["&a ", "&b ", "!!map ", "!!seq ", "!!set ", ""]), child).map(
            "".join
        ),
        st.integers(1, 32).map(lambda n: "[" * n + "x" + "]" * n),
    )


# Random YAML values: flow collections, anchors, aliases, tags and odd scalars.
_VALUES = st.recursive(_SCALARS, _collections, max_leaves=16)

_DOCUMENTS = st.lists(
    st.tuples(
        st.sampled_from(["", HEAD, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 7}\n"]),
        st.lists(
            st.tuples(st.sampled_from(["data", "spec", "kind", "a", "b", "c", "~", "1"]), _VALUES),
            unique_by=lambda pair: pair[0],
        ),
    ),
    min_size=1,
    max_size=3,
).map(
    lambda documents: "---\n".join(
        head + "".join(f"{key}: {value}\n" for key, value in body) for head, body in documents
    )
)


def _assert_manifests_or_client_error(data: bytes | str) -> None:
    try:
        documents = list(_parse(data, "fuzz.yaml", "ns"))
    except ClientError as error:
        assert str(error).startswith("fuzz.yaml"), str(error)
        assert "\n" not in str(error)
        return
    for origin, document in documents:
        assert origin.startswith("fuzz.yaml (document ")
        assert isinstance(document, dict)
        json.dumps(document, allow_nan=False)
        assert limits.depth(document) <= limits.MAX_MANIFEST_DEPTH
        assert isinstance(document["metadata"]["name"], str)


_FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_FUZZ
@given(_DOCUMENTS)
def test_fuzz_structured_yaml(text: str) -> None:
    _assert_manifests_or_client_error(text)


@_FUZZ
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_fuzz_random_bytes_and_text(data: bytes | str) -> None:
    _assert_manifests_or_client_error(data)


@_FUZZ
@given(st.binary(max_size=60))
def test_fuzz_bytes_after_a_valid_head(tail: bytes) -> None:
    _assert_manifests_or_client_error(HEAD.encode() + tail)
