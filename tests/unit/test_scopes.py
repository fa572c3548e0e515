"""Whether a template kind is namespaced: the built-in rule, and CRD templates over it."""

from __future__ import annotations

from typing import Any

import pytest

from archipel.core import kinds, scopes, validation
from archipel.core.errors import Invalid
from archipel.v1alpha1 import work_pb2
from controlplane import api

GROUP = "scope.example.com"


def crd(kind: str, scope: str, *, group: str = GROUP, plural: str = "") -> dict[str, Any]:
    plural = plural or f"{kind.lower()}s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural},
            "scope": scope,
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }


def key(manifest: dict[str, Any]) -> str:
    return kinds.RESOURCE_TEMPLATE.key_of(manifest)


def custom(kind: str, name: str = "a", namespace: str = "") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": metadata}


@pytest.mark.parametrize(
    ("api_version", "kind", "namespaced"),
    [
        ("scheduling.k8s.io/v1", "PriorityClass", False),
        ("storage.k8s.io/v1", "StorageClass", False),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", False),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition", False),
        ("v1", "Namespace", False),
        ("apps/v1", "Deployment", True),
        ("v1", "ConfigMap", True),
        # Unknown kinds are namespaced until a CRD template says otherwise.
        (f"{GROUP}/v1", "Gadget", True),
    ],
)
def test_the_built_in_rule(api_version: str, kind: str, namespaced: bool) -> None:
    assert scopes.KindScopes().scope(api_version, kind) == scopes.Scope(
        kinds.split_api_version(api_version)[0], kind, namespaced
    )


def test_a_crd_template_decides_its_kinds_scope_in_its_group_only() -> None:
    known = scopes.KindScopes()
    known.observe(key(crd("Gadget", "Cluster")), crd("Gadget", "Cluster"))
    scope = known.scope(f"{GROUP}/v1", "Gadget")
    assert scope == scopes.Scope(GROUP, "Gadget", False, defined_by=f"gadgets.{GROUP}")
    assert known.scope(f"{GROUP}/v2", "Gadget").namespaced is False  # any version
    assert known.namespaced("other.example.com/v1", "Gadget") is True
    # A Namespaced CRD wins over the built-in rule for a built-in kind's name.
    known.observe(key(crd("StorageClass", "Namespaced")), crd("StorageClass", "Namespaced"))
    assert known.namespaced(f"{GROUP}/v1", "StorageClass") is True
    assert known.namespaced("storage.k8s.io/v1", "StorageClass") is False


def test_a_crd_replaced_or_deleted_takes_its_answer_with_it() -> None:
    known = scopes.KindScopes()
    where = key(crd("Gadget", "Cluster"))
    known.observe(where, crd("Gadget", "Cluster"))
    known.observe(where, crd("Gadget", "Namespaced"))
    assert known.namespaced(f"{GROUP}/v1", "Gadget") is True
    known.observe(where, crd("Gadget", "Cluster"))
    known.observe(where, None)
    assert known.scope(f"{GROUP}/v1", "Gadget") == scopes.Scope(GROUP, "Gadget", True)
    # Something else at the key (not a CRD, or a CRD that says nothing) defines nothing.
    known.observe(where, crd("Gadget", "Cluster"))
    known.observe(where, {**crd("Gadget", "Cluster"), "spec": {"group": GROUP}})
    assert known.namespaced(f"{GROUP}/v1", "Gadget") is True


def test_two_crds_of_one_kind_the_first_key_decides_whatever_the_order() -> None:
    first, second = crd("Gadget", "Cluster", plural="a"), crd("Gadget", "Namespaced", plural="b")
    for order in ((first, second), (second, first)):
        known = scopes.KindScopes()
        for manifest in order:
            known.observe(key(manifest), manifest)
        assert known.scope(f"{GROUP}/v1", "Gadget").defined_by == f"a.{GROUP}"
    known.observe(key(first), None)
    assert known.scope(f"{GROUP}/v1", "Gadget").defined_by == f"b.{GROUP}"


@pytest.mark.parametrize(
    "spec",
    [
        {"group": GROUP, "names": {"kind": "Gadget"}, "scope": "Sideways"},
        {"group": "", "names": {"kind": "Gadget"}, "scope": "Cluster"},
        {"group": GROUP, "names": "Gadget", "scope": "Cluster"},
        {"group": GROUP, "scope": "Cluster"},
        "not an object",
    ],
)
def test_a_crd_that_does_not_say_defines_nothing(spec: Any) -> None:
    assert scopes.crd_scope({**crd("Gadget", "Cluster"), "spec": spec}) is None


def test_only_crds_define_scopes() -> None:
    other = {**crd("Gadget", "Cluster"), "apiVersion": "other.example.com/v1"}
    assert scopes.crd_scope(other) is None
    assert scopes.crd_scope(crd("Gadget", "Cluster")) == scopes.CrdScope(
        GROUP, "Gadget", False, f"gadgets.{GROUP}"
    )


def test_templates_that_a_scope_contradicts() -> None:
    going = custom("Gadget", "going", "team")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    stored = [custom("Gadget", "b", "team"), custom("Gadget", "a"), going]
    assert scopes.contradicting(False, stored) == ["team/b"]
    assert scopes.contradicting(True, stored) == ["a"]
    assert scopes.contradicting(True, []) == []


def test_validation_holds_a_custom_resource_to_its_crds_scope() -> None:
    known = scopes.KindScopes()
    known.observe(key(crd("Gadget", "Cluster")), crd("Gadget", "Cluster"))
    applied = validation.check_template(custom("Gadget"), scope_of=known.scope)
    assert "namespace" not in applied["metadata"]
    with pytest.raises(Invalid, match=f"cluster-scoped.*gadgets.{GROUP}") as refused:
        validation.check_template(custom("Gadget", namespace="team"), scope_of=known.scope)
    assert refused.value.field == "metadata.namespace"
    # Before the CRD is known (applied before it), the kind is namespaced, as always.
    early = validation.check_template(custom("Gadget"))
    assert early["metadata"]["namespace"] == "default"


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("scheduling.k8s.io/v1", "PriorityClass"),
        ("storage.k8s.io/v1", "StorageClass"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ],
)
def test_built_in_cluster_scoped_kinds_refuse_a_namespace(api_version: str, kind: str) -> None:
    manifest: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
    if kind == "PriorityClass":
        manifest["value"] = 1000  # required of a PriorityClass
    assert "namespace" not in validation.check_template(manifest)["metadata"]
    with pytest.raises(Invalid) as refused:
        validation.check_template({**manifest, "metadata": {"name": "x", "namespace": "team"}})
    assert refused.value.field == "metadata.namespace"


def test_a_binding_lives_where_its_template_does() -> None:
    """The binding of a cluster-scoped template has no namespace (Karmada's
    ClusterResourceBinding), so `archipel reschedule` can write it back."""
    binding = work_pb2.PropagationBinding()
    binding.metadata.name = "p-priorityclass"
    binding.spec.resource.api_version = "scheduling.k8s.io/v1"
    binding.spec.resource.kind = "PriorityClass"
    binding.spec.resource.name = "p"
    api._VALIDATORS[kinds.PROPAGATION_BINDING.name](binding)
    binding.metadata.namespace = "team"
    with pytest.raises(Invalid) as refused:
        api._VALIDATORS[kinds.PROPAGATION_BINDING.name](binding)
    assert refused.value.field == "metadata.namespace"
    binding.spec.resource.namespace = "team"
    api._VALIDATORS[kinds.PROPAGATION_BINDING.name](binding)
    binding.metadata.namespace = ""
    with pytest.raises(Invalid):
        api._VALIDATORS[kinds.PROPAGATION_BINDING.name](binding)
