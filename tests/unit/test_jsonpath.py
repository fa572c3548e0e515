"""The Kubernetes JSONPath dialect: matches, syntax errors, set() and resource bounds."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from archipel import jsonpath
from archipel.jsonpath import JSONPath, JSONPathError

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "web",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/name": "web", "tier": "gold", "track-id": "7"},
        "annotations": {"deployment.kubernetes.io/revision": "3"},
    },
    "spec": {
        "replicas": 3,
        "paused": False,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "shop/web:1.4",
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}},
                    },
                    {
                        "name": "sidecar",
                        "image": "envoy:1.30",
                        "ports": [{"containerPort": 9901, "name": "admin"}],
                    },
                ],
            },
        },
    },
    "status": {
        "observedGeneration": 4,
        "replicas": 3,
        "readyReplicas": 2,
        "unavailableReplicas": None,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            {"type": "ReplicaFailure", "status": "False", "lastUpdateTime": "2025-01-01"},
        ],
    },
}

# A custom resource whose health lives in its own fields.
CLUSTER: dict[str, Any] = {
    "kind": "PostgresCluster",
    "spec": {"instances": [{"name": "a", "replicas": 2}, {"name": "b", "replicas": 1}]},
    "status": {
        "instances": [
            {"name": "a", "readyReplicas": 2, "weight": 0.5, "primary": True},
            {"name": "b", "readyReplicas": 0, "weight": 1.5, "primary": False},
        ],
        "phase": "Degraded",
    },
}

CONTAINERS = DEPLOYMENT["spec"]["template"]["spec"]["containers"]
CONDITIONS = DEPLOYMENT["status"]["conditions"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("", [DEPLOYMENT]),
        ("$", [DEPLOYMENT]),
        ("{}", [DEPLOYMENT]),
        (".spec.replicas", [3]),
        ("{.spec.replicas}", [3]),
        (" { $.spec.replicas } ", [3]),
        ("spec.replicas", [3]),  # kubectl's relaxed form
        ("$['spec']['replicas']", [3]),
        ('.metadata.labels["app.kubernetes.io/name"]', ["web"]),
        (".metadata.labels['app.kubernetes.io/name']", ["web"]),
        (r".metadata.labels.app\.kubernetes\.io\/name", ["web"]),  # kubectl's escapes
        (".metadata.labels.track-id", ["7"]),
        (".metadata.annotations['deployment.kubernetes.io/revision']", ["3"]),
        (".spec.paused", [False]),
        (".status.unavailableReplicas", [None]),
        (".status.missing", []),
        (".nope.deeper.still", []),
        (".spec.replicas.deeper", []),
        (".spec.template.spec.containers[0].name", ["app"]),
        (".spec.template.spec.containers[-1].name", ["sidecar"]),
        (".spec.template.spec.containers[2].name", []),
        (".spec.template.spec.containers[-3].name", []),
        (".spec.template.spec.containers[*].name", ["app", "sidecar"]),
        (".spec.template.spec.containers.*.image", ["shop/web:1.4", "envoy:1.30"]),
        (".spec.template.spec.containers[*].ports[*].containerPort", [8080, 9901]),
        (".spec.selector.matchLabels.*", ["web"]),
        (".spec.replicas.*", []),
        (".status.conditions[0:2].type", ["Available", "Progressing"]),
        (".status.conditions[1:].type", ["Progressing", "ReplicaFailure"]),
        (".status.conditions[:1].type", ["Available"]),
        (".status.conditions[-2:].type", ["Progressing", "ReplicaFailure"]),
        (".status.conditions[::2].type", ["Available", "ReplicaFailure"]),
        (".status.conditions[ 0 : 1 ].type", ["Available"]),
        (".status.conditions[5:9]", []),
        ("..containerPort", [8080, 9901]),
        ("$..replicas", [3, 3]),
        ("..labels.app", ["web"]),
        ("..ports[0].name", ["http", "admin"]),
        (".spec.template..name", ["app", "http", "sidecar", "admin"]),
        (".spec.selector..*", [{"app": "web"}, "web"]),
        ('.status.conditions[?(@.type=="Available")].status', ["True"]),
        (".status.conditions[?(@.type=='Progressing')].reason", ["NewReplicaSetAvailable"]),
        ('.status.conditions[?( @.type == "Available" )].status', ["True"]),
        ('{.status.conditions[?(@.type=="Nope")].status}', []),
        ('.status.conditions[?(@.status!="True")].type', ["ReplicaFailure"]),
        (".status.conditions[?(@.lastUpdateTime)].type", ["ReplicaFailure"]),
        ('.status.conditions[?(@.status=="True" && @.type=="Progressing")].type', ["Progressing"]),
        (
            '.status.conditions[?(@.type=="Available" || @.type=="ReplicaFailure")].status',
            ["True", "False"],
        ),
        (
            '.status.conditions[?((@.type=="Available" || @.status=="False") && @.reason)].type',
            ["Available"],
        ),
        ('..containers[?(@.ports[?(@.name=="admin")])].name', ["sidecar"]),
        (".spec.template.spec.containers[?(@.ports[0].containerPort > 9000)].name", ["sidecar"]),
        ('.spec.template.spec.containers[?(@..cpu=="250m")].name', ["app"]),
        (".status[?(@.type)]", []),  # filters select list items only
    ],
)
def test_find_on_a_deployment(expression: str, expected: list[Any]) -> None:
    assert jsonpath.compile(expression).find(DEPLOYMENT) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (".status.instances[?(@.readyReplicas==0)].name", ["b"]),
        (".status.instances[?(@.readyReplicas>=1)].name", ["a"]),
        (".status.instances[?(@.readyReplicas<1)].name", ["b"]),
        (".status.instances[?(@.readyReplicas<=2)].name", ["a", "b"]),
        (".status.instances[?(@.readyReplicas>2)].name", []),
        (".status.instances[?(@.weight>1.0)].name", ["b"]),
        (".status.instances[?(@.weight==5e-1)].name", ["a"]),
        (".status.instances[?(@.weight>-1)].name", ["a", "b"]),
        (".status.instances[?(2==@.readyReplicas)].name", ["a"]),
        (".status.instances[?(@.primary==true)].name", ["a"]),
        (".status.instances[?(@.primary==false)].name", ["b"]),
        (".status.instances[?(@.primary)].name", ["a", "b"]),  # existence, not truth
        (".status.instances[?(@.primary==1)].name", []),  # booleans are not numbers
        (".status.instances[?(@.readyReplicas=='2')].name", []),  # no type coercion
        (".status.instances[?(@.readyReplicas!='2')].name", ["a", "b"]),
        (".status.instances[?(@.name>'a')].name", ["b"]),  # strings order lexically
        (".status.instances[?(@.name>1)].name", []),  # mixed kinds never order
        (".status.instances[?(@.missing==null)].name", []),  # missing is not null
        (".status.instances[?(@.missing!=1)].name", []),  # nor anything else
        (".status.instances[?(@.readyReplicas==@.readyReplicas)].name", ["a", "b"]),
        (".status.instances[?(@==@)].name", []),  # containers never compare equal
        (".status.instances[?(@.name=='a')].readyReplicas", [2]),
        (".spec.instances[?(@.name=='b')].replicas", [1]),
        (".status.phase", ["Degraded"]),
    ],
)
def test_find_on_a_custom_resource(expression: str, expected: list[Any]) -> None:
    assert jsonpath.compile(expression).find(CLUSTER) == expected


@pytest.mark.parametrize(
    ("expression", "document", "expected"),
    [
        ("[*]", ["a", "b"], ["a", "b"]),
        ("[?(@=='b')]", ["a", "b", "b"], ["b", "b"]),
        ("[?(@>1)]", [1, 2, "3", True, None, 3.5], [2, 3.5]),
        ("[?(@==null)]", [0, None, False, ""], [None]),
        ("[?(@)]", [0, None, False], [0, None, False]),
        ("..x", {"x": 1, "a": {"x": 2, "b": [{"x": 3}]}}, [1, 2, 3]),  # parents first
        ("..*", [1, [2, [3]]], [1, [2, [3]], 2, [3], 3]),
        ("..[0]", [[1], [[2]]], [[1], 1, [2], 2]),
        ("[0]", {"0": "a"}, []),  # indexes apply to lists only
        (".0", {"0": "a"}, ["a"]),
        ("['']", {"": "empty"}, ["empty"]),
        ("['it\\'s']", {"it's": 1}, [1]),
        ('["say \\"hi\\""]', {'say "hi"': 1}, [1]),
        (".a", "not a dict", []),
        ("[*]", 42, []),
    ],
)
def test_find_edge_cases(expression: str, document: Any, expected: list[Any]) -> None:
    assert jsonpath.compile(expression).find(document) == expected


def test_first_and_default() -> None:
    path = jsonpath.compile(".spec.template.spec.containers[*].name")
    assert path.first(DEPLOYMENT) == "app"
    assert jsonpath.compile(".spec.nothing").first(DEPLOYMENT) is None
    assert jsonpath.compile(".spec.nothing").first(DEPLOYMENT, default=1) == 1
    assert jsonpath.compile(".status.unavailableReplicas").first(DEPLOYMENT, 5) is None


def test_compile_caches_and_paths_compare_by_source() -> None:
    assert jsonpath.compile(".spec.replicas") is jsonpath.compile(".spec.replicas")
    assert JSONPath(".a") == JSONPath(".a")
    assert hash(JSONPath(".a")) == hash(JSONPath(".a"))
    assert repr(JSONPath(".a")) == "JSONPath(source='.a')"
    with pytest.raises(JSONPathError, match="at column 2"):
        JSONPath(".[")  # constructing directly validates too


def test_find_does_not_modify_the_document() -> None:
    before = copy.deepcopy(DEPLOYMENT)
    jsonpath.compile("..*").find(DEPLOYMENT)
    assert before == DEPLOYMENT


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("{.spec]}", "unexpected ']' at column 7"),
        (".spec]", "unexpected ']' at column 6"),
        ("{.spec", "unexpected end of expression at column 7; expected '}'"),
        (".spec.", "unexpected end of expression at column 7; expected a field name"),
        ("$.", "at column 3"),
        (".spec..", "at column 8"),
        ("...a", "unexpected '.' at column 3"),
        (".spec.replicas}", "unexpected '}' at column 15"),
        ("{.a}{.b}", "unexpected '{' at column 5"),
        (".a b", "unexpected 'b' at column 4"),
        ("[", "unexpected end of expression at column 2; expected a field, index"),
        ("[]", "unexpected ']' at column 2"),
        ("[0", "unexpected end of expression at column 3; expected ']'"),
        ("[-]", "unexpected '-' at column 2"),
        ("[1.5]", "unexpected '.' at column 3; expected ']'"),
        ("[0,1]", "unexpected ',' at column 3"),  # unions are not supported
        ("[1:2:3:4]", "unexpected ':' at column 7"),
        ("[::0]", "slice step cannot be zero at column 1"),
        ("['abc]", "unterminated string at column 2"),
        ('.a["b', "unterminated string at column 4"),
        ("[?@.a]", "unexpected '@' at column 3; expected '('"),
        ("[?(@.a)", "unexpected end of expression at column 8; expected ']'"),
        ("[?(@.a]", "unexpected ']' at column 7; expected ')'"),
        ("[?()]", "unexpected ')' at column 4; expected an '@' path or a literal"),
        ("[?(@.a=1)]", "use '==' to compare at column 7"),
        ("[?(@.a===1)]", "unexpected '=' at column 9"),
        ("[?(@.a==)]", "unexpected ')' at column 9"),
        ("[?(@.a=='x' &&)]", "unexpected ')' at column 15"),
        ("[?(@.a || )]", "unexpected ')' at column 11"),
        ("[?(@.a & @.b)]", "unexpected '&' at column 8"),
        ("[?(1==1)]", "a comparison needs at least one '@' path at column 4"),
        ("[?('x')]", "unexpected ')' at column 7; expected a comparison operator"),
        ("[?($.a)]", "unexpected '$' at column 4"),
        ("[?(@.a==True)]", "unexpected 'T' at column 9"),
        ("[?(@.a==nullx)]", "unexpected 'n' at column 9"),
        ("[?(@.a==-)]", "invalid number '-' at column 9"),
        ("[?(@.a==1.2.3)]", "invalid number '1.2.3' at column 9"),
        ("[?(@.a==1-2)]", "invalid number '1-2' at column 9"),
        ("[?((@.a)]", "unexpected ']' at column 9; expected ')'"),
        ("[?(@.a==1e)]", "invalid number '1e' at column 9"),
        ("[?(@.a==1x)]", "unexpected 'x' at column 10"),
        ("a b", "unexpected 'b' at column 3"),
        (".labels.app.kubernetes.io/name", "unexpected '/' at column 26"),
        ("@.a", "unexpected '@' at column 1"),
    ],
)
def test_syntax_errors_name_the_problem_and_column(expression: str, fragment: str) -> None:
    with pytest.raises(JSONPathError) as caught:
        jsonpath.compile(expression)
    assert fragment in str(caught.value)
    assert repr(expression) in str(caught.value)


def test_non_string_expression_is_rejected() -> None:
    with pytest.raises(JSONPathError, match="must be a string"):
        JSONPath(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expression", "value", "expected"),
    [
        (".spec.replicas", 5, {"spec": {"replicas": 5}, "items": [1, {"a": 1}]}),
        ("{.spec.replicas}", None, {"spec": {"replicas": None}, "items": [1, {"a": 1}]}),
        ("$['spec']['new']", "x", {"spec": {"replicas": 1, "new": "x"}, "items": [1, {"a": 1}]}),
        (".items[0]", 7, {"spec": {"replicas": 1}, "items": [7, {"a": 1}]}),
        (".items[-1].a", 7, {"spec": {"replicas": 1}, "items": [1, {"a": 7}]}),
        (".items[1].b.c", 7, {"spec": {"replicas": 1}, "items": [1, {"a": 1, "b": {"c": 7}}]}),
        (".x", {"a": 1}, {"spec": {"replicas": 1}, "items": [1, {"a": 1}], "x": {"a": 1}}),
        (
            ".status.ready.count",
            2,
            {"spec": {"replicas": 1}, "items": [1, {"a": 1}], "status": {"ready": {"count": 2}}},
        ),
    ],
)
def test_set_returns_an_updated_copy(expression: str, value: Any, expected: dict[str, Any]) -> None:
    document: dict[str, Any] = {"spec": {"replicas": 1}, "items": [1, {"a": 1}]}
    before = copy.deepcopy(document)
    assert jsonpath.compile(expression).set(document, value) == expected
    assert document == before


def test_set_copies_only_the_containers_on_the_path() -> None:
    document: dict[str, Any] = {"spec": {"replicas": 1}, "status": {"ready": 1}}
    updated = jsonpath.compile(".spec.replicas").set(document, 2)
    assert updated["status"] is document["status"]
    assert updated["spec"] is not document["spec"]


def test_set_replaces_a_null_intermediate_with_a_dict() -> None:
    updated = jsonpath.compile(".status.ready").set({"status": None}, 1)
    assert updated == {"status": {"ready": 1}}


@pytest.mark.parametrize(
    ("expression", "document", "fragment"),
    [
        (".items[*]", {"items": [1]}, "only fields and indexes, not at column 7"),
        (".items.*", {"items": [1]}, "only fields and indexes, not at column 8"),
        (".items[0:1]", {"items": [1]}, "only fields and indexes"),
        (".items[?(@.a)].b", {"items": [1]}, "only fields and indexes, not at column 7"),
        ("..a", {"a": 1}, "only fields and indexes, not at column 1"),
        (".items[1]", {"items": [1]}, "index 1 out of range at column 7"),
        (".items[-2]", {"items": [1]}, "index -2 out of range"),
        (".items[0]", {"items": {"0": 1}}, "cannot index a dict at column 7"),
        (".missing[0]", {}, "cannot index a missing list at column 9"),
        (".a.b", {"a": "text"}, "cannot set below a string value at column 2"),
        (".a.b.c", {"a": {"b": 3}}, "cannot set below a number value at column 4"),
        (".items[0].x", {"items": [True]}, "cannot set below a bool value at column 7"),
        (".items.x", {"items": [1]}, "cannot set field 'x' on a list at column 8"),
        ("", {}, "cannot set the whole document"),
        ("$", {}, "cannot set the whole document"),
    ],
)
def test_set_rejects_what_it_cannot_write(
    expression: str, document: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(JSONPathError) as caught:
        jsonpath.compile(expression).set(document, 1)
    assert fragment in str(caught.value)


def test_set_needs_a_dict_document() -> None:
    with pytest.raises(JSONPathError, match="needs a dict document, not list"):
        jsonpath.compile("[0]").set([1], 2)  # type: ignore[arg-type]


def _nested(depth: int) -> dict[str, Any]:
    document: dict[str, Any] = {"x": 0}
    for _ in range(depth):
        document = {"a": document}
    return document


@pytest.mark.parametrize(
    ("expression", "document", "fragment"),
    [
        ("[*]", list(range(10_001)), "more than 10000 intermediate results"),
        ("[:]", list(range(10_001)), "more than 10000 intermediate results"),
        ("..*", [list(range(5_000)), list(range(5_000))], "more than 10000 intermediate results"),
        ("[*][*]", [list(range(100))] * 101, "more than 10000 intermediate results"),
        ("..x", _nested(150), "nested deeper than 100 levels"),
        ("[?(@..x)]", [_nested(150)], "nested deeper than 100 levels"),
    ],
)
def test_result_and_depth_caps(expression: str, document: Any, fragment: str) -> None:
    with pytest.raises(JSONPathError) as caught:
        jsonpath.compile(expression).find(document)
    assert fragment in str(caught.value)


def test_caps_leave_room_for_real_documents() -> None:
    assert jsonpath.compile("[*]").find(list(range(10_000))) == list(range(10_000))
    assert jsonpath.compile("..x").find(_nested(98)) == [0]


def test_a_cyclic_document_cannot_hang_descent() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(JSONPathError, match="nested deeper"):
        jsonpath.compile("..nothing").find(loop)


def test_work_budget_covers_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every item's filter walks the whole item: results stay few while work grows.
    document = [{"a": list(range(50))} for _ in range(100)]
    expression = jsonpath.compile("[?(@..z)]")
    assert expression.find(document) == []
    monkeypatch.setattr(jsonpath, "MAX_WORK", 1_000)
    with pytest.raises(JSONPathError, match="took more than 1000 steps"):
        expression.find(document)


def test_comparisons_count_towards_the_work_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    document = [{"a": list(range(100)), "b": list(range(100, 200))}]
    expression = jsonpath.compile("[?(@.a[*]==@.b[*])]")
    assert expression.find(document) == []
    monkeypatch.setattr(jsonpath, "MAX_WORK", 5_000)
    with pytest.raises(JSONPathError, match="took more than 5000 steps"):
        expression.find(document)


def test_expression_length_is_capped() -> None:
    with pytest.raises(JSONPathError, match="longer than 4096 characters"):
        jsonpath.compile(".a" * 2_049)
    assert jsonpath.compile(".a" * 2_048).find({"a": 1}) == []


def test_filter_nesting_is_capped() -> None:
    deep = "[?(" + "(" * 40 + "@.a" + ")" * 40 + ")]"
    with pytest.raises(JSONPathError, match="nested deeper than 32 levels at column 36"):
        jsonpath.compile(deep)
    shallow = "[?(" + "(" * 30 + "@.a" + ")" * 30 + ")]"
    assert jsonpath.compile(shallow).find([{"a": 1}, {}]) == [{"a": 1}]


def test_long_paths_do_not_recurse() -> None:
    # Steps are evaluated and written in loops, so a long path is no risk to the stack.
    expression = ".a" * 1_500
    document = jsonpath.compile(expression).set({}, "deep")
    assert jsonpath.compile(expression).find(document) == ["deep"]


@pytest.mark.parametrize(
    ("expression", "path"),
    [
        (".spec.clusterIP", ("spec", "clusterIP")),
        ("{.metadata['app.kubernetes.io/name']}", ("metadata", "app.kubernetes.io/name")),
    ],
)
def test_field_path_of_simple_paths(expression: str, path: tuple[str, ...]) -> None:
    assert jsonpath.compile(expression).field_path() == path


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (".spec.ports[0].nodePort", "index at column"),
        (".spec.*", "wildcard"),
        ("$", "whole document"),
    ],
)
def test_field_path_refuses_anything_else(expression: str, message: str) -> None:
    with pytest.raises(jsonpath.JSONPathError, match=message):
        jsonpath.compile(expression).field_path()
