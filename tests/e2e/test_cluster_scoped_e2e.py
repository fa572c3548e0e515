"""Cluster-scoped templates of any kind through the CLI, on real members: a PriorityClass,
a StorageClass, a ClusterRoleBinding, a CRD and a custom resource of a cluster-scoped
CRD are applied (with ``-n``, which cluster-scoped kinds ignore), read with ``get`` and
``describe``, rendered, rescheduled and deleted (by name and with ``-f``), and really
land in and leave both members. The CLI learns each kind's scope from the control
plane's GetScope, so the custom resource is found without a namespace."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from archipel import structs
from tests.e2e.conftest import Pipeline, wait_for

pytestmark = pytest.mark.members(count=2, profile="api", isolated=True)
MEMBERS = ["member1", "member2"]
SUFFIX = uuid.uuid4().hex[:6]
GROUP = f"scoped{SUFFIX}.example.com"
CRD_NAME = f"gizmos.{GROUP}"
GIZMO = f"gizmo-{SUFFIX}"
# (what the CLI calls the kind, apiVersion, kind, name) of every template of the test.
TARGETS = [
    ("pc", "scheduling.k8s.io/v1", "PriorityClass", f"pc-{SUFFIX}"),
    ("storageclass", "storage.k8s.io/v1", "StorageClass", f"sc-{SUFFIX}"),
    (
        "clusterrolebinding",
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        f"crb-{SUFFIX}",
    ),
    ("crd", "apiextensions.k8s.io/v1", "CustomResourceDefinition", CRD_NAME),
    (f"Gizmo.v1.{GROUP}", f"{GROUP}/v1", "Gizmo", GIZMO),
]


def _documents() -> list[dict[str, Any]]:
    """The custom resource comes before its CRD: the CLI applies CRDs first."""
    return [
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Gizmo",
            "metadata": {"name": GIZMO},
            "spec": {"size": 3},
        },
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": CRD_NAME},
            "spec": {
                "group": GROUP,
                "names": {"kind": "Gizmo", "plural": "gizmos", "singular": "gizmo"},
                "scope": "Cluster",
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": f"pc-{SUFFIX}"},
            "value": 1000,
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": f"sc-{SUFFIX}"},
            "provisioner": "example.com/none",
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"crb-{SUFFIX}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "auditors"}
            ],
        },
        {
            "apiVersion": "policy.karmada.io/v1alpha1",
            "kind": "ClusterPropagationPolicy",
            "metadata": {"name": f"scoped-{SUFFIX}"},
            "spec": {
                "resourceSelectors": [
                    {"apiVersion": api_version, "kind": kind, "name": name}
                    for _, api_version, kind, name in TARGETS
                ],
                "placement": {"clusterAffinity": {"clusterNames": MEMBERS}},
            },
        },
    ]


def _reader(pipeline: Pipeline, member: str, kind: str, name: str) -> Callable[[], Any]:
    api = pipeline.fleet[member].api_client()
    readers: dict[str, Callable[[], Any]] = {
        "PriorityClass": lambda: k8s.SchedulingV1Api(api).read_priority_class(name),
        "StorageClass": lambda: k8s.StorageV1Api(api).read_storage_class(name),
        "ClusterRoleBinding": lambda: k8s.RbacAuthorizationV1Api(api).read_cluster_role_binding(
            name
        ),
        "CustomResourceDefinition": lambda: k8s.ApiextensionsV1Api(
            api
        ).read_custom_resource_definition(name),
        "Gizmo": lambda: k8s.CustomObjectsApi(api).get_cluster_custom_object(
            GROUP, "v1", "gizmos", name
        ),
    }
    return readers[kind]


def _in_member(pipeline: Pipeline, member: str, kind: str, name: str) -> Any:
    """The object in the member, or None (a custom resource's kind may not be served
    yet, or any more: 404 as well)."""
    try:
        return _reader(pipeline, member, kind, name)()
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _gone(pipeline: Pipeline, kind: str, name: str) -> bool:
    return all(_in_member(pipeline, m, kind, name) is None for m in MEMBERS)


def _ok(result: Any) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return str(result.stdout)


def _described_applied(pipeline: Pipeline, cli_kind: str, name: str) -> str:
    """``describe``'s output once it says FullyApplied: True; else ""."""
    out = _ok(pipeline.cli("describe", cli_kind, name))
    return out if "FullyApplied: True" in out else ""


def _delete_cleanly(pipeline: Pipeline, *args: str) -> list[str]:
    return _ok(pipeline.cli("delete", *args)).splitlines()


def test_cluster_scoped_templates_through_the_cli(
    pipeline: Pipeline, namespace: str, tmp_path: Path
) -> None:
    manifests = tmp_path / "scoped.yaml"
    manifests.write_text(yaml.safe_dump_all(_documents(), sort_keys=False))
    applied = _ok(pipeline.cli("apply", "-f", str(manifests), "-n", namespace)).splitlines()
    assert applied == [
        f"customresourcedefinition/{CRD_NAME} created",
        f"gizmo/{GIZMO} created",
        f"priorityclass/pc-{SUFFIX} created",
        f"storageclass/sc-{SUFFIX} created",
        f"clusterrolebinding/crb-{SUFFIX} created",
        f"clusterpropagationpolicy/scoped-{SUFFIX} created",
    ]
    for _, _, kind, name in TARGETS:
        for member in MEMBERS:
            wait_for(
                f"{kind} {name} in {member}",
                functools.partial(_in_member, pipeline, member, kind, name),
                timeout=90,
            )
    gizmo = _in_member(pipeline, "member1", "Gizmo", GIZMO)
    assert gizmo["spec"] == {"size": 3}
    assert "namespace" not in gizmo["metadata"]

    for cli_kind, api_version, kind, name in TARGETS:
        # -n is no place for a cluster-scoped template: ignored, as kubectl does.
        got = json.loads(_ok(pipeline.cli("get", cli_kind, name, "-n", namespace, "-o", "json")))
        assert (got["kind"], got["metadata"]["name"]) == (kind, name)
        assert "namespace" not in got["metadata"]
        assert name in _ok(pipeline.cli("get", cli_kind))
        described = wait_for(
            f"describe {kind} to show it applied in both members",
            functools.partial(_described_applied, pipeline, cli_kind, name),
            timeout=90,
        )
        assert f"Name:         {name}" in described
        assert f"Kind:         {kind} ({api_version})" in described
        for member in MEMBERS:
            assert member in described
        rendered = yaml.safe_load(
            _ok(pipeline.cli("render", f"{cli_kind}/{name}", "--cluster", "member1"))
        )
        assert (rendered["kind"], rendered["metadata"]["name"]) == (kind, name)
        assert "namespace" not in rendered["metadata"]
        rescheduled = _ok(pipeline.cli("reschedule", cli_kind, name))
        assert rescheduled.strip() == f"{kind.lower()}/{name} rescheduling"
        api = pipeline.client()
        try:
            binding = api.binding_of(api_version, kind, "", name)
        finally:
            api.close()
        assert binding is not None
        assert binding.spec.HasField("reschedule_triggered_at")

    # The control plane keeps the custom resource without a namespace.
    stored = pipeline.template(f"{GROUP}/v1", "Gizmo", "", GIZMO)
    assert "namespace" not in stored["metadata"]

    # delete -f: the custom resource and the ClusterRoleBinding.
    doomed = tmp_path / "doomed.yaml"
    doomed.write_text(
        yaml.safe_dump_all(
            [d for d in _documents() if d["kind"] in ("Gizmo", "ClusterRoleBinding")],
            sort_keys=False,
        )
    )
    deleted = _delete_cleanly(pipeline, "-f", str(doomed), "-n", namespace)
    assert sorted(line.split()[0] for line in deleted) == [
        f"clusterrolebinding/crb-{SUFFIX}",
        f"gizmo/{GIZMO}",
    ]
    for kind, name in (("Gizmo", GIZMO), ("ClusterRoleBinding", f"crb-{SUFFIX}")):
        wait_for(
            f"{kind} {name} gone from the members", functools.partial(_gone, pipeline, kind, name)
        )
    api = pipeline.client()
    try:
        wait_for(
            "the custom resource's template gone",
            lambda: not api.list_templates(f"{GROUP}/v1", "Gizmo"),
        )
    finally:
        api.close()

    # delete KIND NAME: the rest, the CRD once none of its custom resources is left.
    for cli_kind, _, kind, name in TARGETS:
        if kind in ("PriorityClass", "StorageClass", "CustomResourceDefinition"):
            (line,) = _delete_cleanly(pipeline, cli_kind, name, "-n", namespace)
            assert line.startswith(f"{kind.lower()}/{name} ")
    for kind, name in (
        ("PriorityClass", f"pc-{SUFFIX}"),
        ("StorageClass", f"sc-{SUFFIX}"),
        ("CustomResourceDefinition", CRD_NAME),
    ):
        wait_for(
            f"{kind} {name} gone from the members", functools.partial(_gone, pipeline, kind, name)
        )
    _delete_cleanly(pipeline, "cpp", f"scoped-{SUFFIX}")
    api = pipeline.client()
    try:
        wait_for("every template of the test gone", lambda: not _ours(api.list_templates()))
        # With the CRD gone, its kind is namespaced again (the built-in rule).
        api.forget_scopes()
        assert api.template_scope(f"{GROUP}/v1", "Gizmo").namespaced
    finally:
        api.close()


def _ours(templates: list[Any]) -> list[str]:
    names = [structs.from_struct(t.manifest)["metadata"]["name"] for t in templates]
    return [name for name in names if SUFFIX in name]
