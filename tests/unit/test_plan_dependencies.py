"""The dependencies controller's decisions, as tables.

:func:`controlplane.controllers.dependencies.plan`: what it observes -> every write of
the pass, in one plan. :func:`enqueued_by_binding`: which workloads a binding change
sends to the controller (a dependency's binding that goes brings back the workloads
its ``requiredBy`` names, which is how a workload waiting for it is looked at again).
Real protobuf objects; no etcd, no informer.
"""

from __future__ import annotations

from typing import Any

import pytest

from archipel.core import kinds
from archipel.core.kinds import Manifest
from archipel.v1alpha1 import work_pb2
from controlplane.context import FINALIZER
from controlplane.controllers import dependencies
from controlplane.controllers.dependencies import (
    DependenciesObserved,
    DependencyObserved,
    enqueued_by_binding,
    parent_of,
)
from controlplane.plan import Create, Delete, Plan, Purge, Write

PARENT_KEY = "propagationbindings/shop/web-deployment"
CONFIG_KEY = "templates/core/ConfigMap/shop/config"
TOKEN_KEY = "templates/core/Secret/shop/token"
OLD_KEY = "templates/core/ConfigMap/shop/old"


def template(kind: str, name: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop", "uid": f"{name}-uid"},
        "data": {},
    }


def workload(
    *,
    clusters: tuple[str, ...] = ("member1",),
    propagate_deps: bool = True,
    policy: bool = True,
) -> work_pb2.PropagationBinding:
    binding = work_pb2.PropagationBinding(
        api_version=kinds.PROPAGATION_BINDING.api_version, kind="PropagationBinding"
    )
    binding.metadata.name = "web-deployment"
    binding.metadata.namespace = "shop"
    binding.metadata.resource_version = "10"
    binding.metadata.generation = 1
    binding.metadata.finalizers.append(FINALIZER)
    binding.spec.resource.api_version = "apps/v1"
    binding.spec.resource.kind = "Deployment"
    binding.spec.resource.namespace = "shop"
    binding.spec.resource.name = "web"
    binding.spec.propagate_deps = propagate_deps
    binding.spec.conflict_resolution = "Overwrite"
    if policy:
        binding.spec.policy.kind = "PropagationPolicy"
        binding.spec.policy.namespace = "shop"
        binding.spec.policy.name = "place"
    for cluster in clusters:
        binding.spec.clusters.add(name=cluster, replicas=1)
    return binding


def dependency_binding(
    kind: str,
    name: str,
    *,
    required_by: tuple[tuple[str, tuple[str, ...]], ...] = (),
    policy: bool = False,
    version: str = "20",
) -> work_pb2.PropagationBinding:
    """The binding of a dependency, with requiredBy entries (workload, its clusters)."""
    binding = work_pb2.PropagationBinding(
        api_version=kinds.PROPAGATION_BINDING.api_version, kind="PropagationBinding"
    )
    binding.metadata.name = f"{name}-{kind.lower()}"
    binding.metadata.namespace = "shop"
    binding.metadata.resource_version = version
    binding.metadata.finalizers.append(FINALIZER)
    binding.spec.resource.api_version = "v1"
    binding.spec.resource.kind = kind
    binding.spec.resource.namespace = "shop"
    binding.spec.resource.name = name
    if policy:
        binding.spec.policy.kind = "PropagationPolicy"
        binding.spec.policy.namespace = "shop"
        binding.spec.policy.name = "own"
    for parent, clusters in required_by:
        snapshot = binding.spec.required_by.add(namespace="shop", name=parent)
        for cluster in clusters:
            snapshot.clusters.add(name=cluster)
    return binding


def deleting(binding: work_pb2.PropagationBinding) -> work_pb2.PropagationBinding:
    marked = kinds.PROPAGATION_BINDING.copy(binding)
    marked.metadata.deletion_timestamp.FromSeconds(1_700_000_000)
    return marked


def config(
    binding: work_pb2.PropagationBinding | None = None, *, quarantined: int = 0
) -> DependencyObserved:
    return DependencyObserved(
        template_key=CONFIG_KEY,
        template=template("ConfigMap", "config"),
        binding=binding,
        new_binding_name="" if binding is not None else "config-configmap",
        quarantined=quarantined,
    )


def token(binding: work_pb2.PropagationBinding | None = None) -> DependencyObserved:
    return DependencyObserved(
        template_key=TOKEN_KEY,
        template=template("Secret", "token"),
        binding=binding,
        new_binding_name="" if binding is not None else "token-secret",
    )


def observed(
    parent: work_pb2.PropagationBinding | None = None,
    needs: tuple[DependencyObserved, ...] | None = (),
    required: tuple[work_pb2.PropagationBinding, ...] = (),
) -> DependenciesObserved:
    return DependenciesObserved(
        key=PARENT_KEY, parent=parent, dependencies=needs, required=required
    )


def entries(binding: work_pb2.PropagationBinding) -> list[str]:
    """``requiredBy`` as "namespace/name@cluster,cluster"."""
    return [
        f"{s.namespace}/{s.name}@{','.join(c.name for c in s.clusters)}"
        for s in binding.spec.required_by
    ]


def summary(write: Write) -> dict[str, Any]:
    """The facts of one write that the table rows check."""
    if isinstance(write, Purge):
        return {"op": "purge", "key": write.key}
    if isinstance(write, Delete):
        return {
            "op": "delete",
            "kind": write.kind.name,
            "key": write.kind.key_of(write.current),
            "observed": write.current.metadata.resource_version,
            "marked": write.marked,
        }
    obj: work_pb2.PropagationBinding = write.obj
    facts: dict[str, Any] = {
        "op": "create" if isinstance(write, Create) else "update",
        "kind": write.kind.name,
        "key": write.kind.key_of(obj),
        "resource": f"{obj.spec.resource.kind} {obj.spec.resource.namespace}/"
        f"{obj.spec.resource.name}",
        "required_by": entries(obj),
        "policy": obj.spec.policy.name,
        "deleting": obj.metadata.HasField("deletion_timestamp"),
    }
    if isinstance(write, Create):
        facts["replacing"] = write.replacing
        facts["finalizers"] = list(obj.metadata.finalizers)
        facts["conflict_resolution"] = obj.spec.conflict_resolution
        facts["uid"] = obj.spec.resource.uid
    else:
        facts["observed"] = write.current.metadata.resource_version
    return facts


def check(result: Plan | None, expected: list[dict[str, Any]]) -> None:
    if not expected:
        assert result is None or not result.writes
        return
    assert result is not None
    assert len(result.writes) == len(expected)
    for write, wanted in zip(result.writes, expected, strict=True):
        facts = summary(write)
        assert {k: facts.get(k) for k in wanted} == wanted
    assert result.requeue_after == 0  # nothing is decided by a timer


ME = "shop/web-deployment@member1"
OTHER = ("api-deployment", ("member3",))
CONFIG_BINDING = "propagationbindings/shop/config-configmap"
TOKEN_BINDING = "propagationbindings/shop/token-secret"
OLD_BINDING = "propagationbindings/shop/old-configmap"


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        pytest.param(
            observed(workload(), (config(),)),
            [
                {
                    "op": "create",
                    "kind": "PropagationBinding",
                    "key": CONFIG_BINDING,
                    "resource": "ConfigMap shop/config",
                    "uid": "config-uid",
                    "required_by": [ME],
                    "policy": "",
                    "finalizers": [FINALIZER],
                    # Taking over a member's object is the workload's policy's call.
                    "conflict_resolution": "Overwrite",
                    "replacing": 0,
                }
            ],
            id="creates-the-dependency-binding-with-requiredBy",
        ),
        pytest.param(
            observed(workload(), (config(quarantined=33),)),
            [{"op": "create", "key": CONFIG_BINDING, "replacing": 33}],
            id="creates-over-an-undecodable-value",
        ),
        pytest.param(
            observed(
                workload(clusters=("member1", "member2")),
                (
                    config(
                        dependency_binding(
                            "ConfigMap", "config", required_by=(("web-deployment", ("member1",)),)
                        )
                    ),
                ),
            ),
            [
                {
                    "op": "update",
                    "key": CONFIG_BINDING,
                    "observed": "20",
                    "required_by": ["shop/web-deployment@member1,member2"],
                }
            ],
            id="updates-the-snapshot-when-the-workload-moves",
        ),
        pytest.param(
            observed(
                workload(),
                (
                    config(
                        dependency_binding("ConfigMap", "config", required_by=(OTHER,), policy=True)
                    ),
                ),
            ),
            [
                {
                    "op": "update",
                    "key": CONFIG_BINDING,
                    "required_by": ["shop/api-deployment@member3", ME],
                    "policy": "own",
                }
            ],
            id="appends-an-entry-next-to-others",
        ),
        pytest.param(
            observed(
                workload(),
                (
                    config(
                        dependency_binding(
                            "ConfigMap", "config", required_by=(("web-deployment", ("member1",)),)
                        )
                    ),
                ),
            ),
            [],
            id="already-recorded",
        ),
        pytest.param(
            observed(
                workload(),
                (config(),),
                required=(
                    dependency_binding(
                        "ConfigMap", "old", required_by=(("web-deployment", ("member1",)), OTHER)
                    ),
                ),
            ),
            [
                {"op": "create", "key": CONFIG_BINDING, "required_by": [ME]},
                {
                    "op": "update",
                    "key": OLD_BINDING,
                    "observed": "20",
                    "required_by": ["shop/api-deployment@member3"],
                },
            ],
            id="releases-an-entry-no-longer-needed",
        ),
        pytest.param(
            observed(
                workload(),
                (),
                required=(
                    dependency_binding(
                        "ConfigMap",
                        "old",
                        required_by=(("web-deployment", ("member1",)),),
                        policy=True,
                    ),
                ),
            ),
            [{"op": "update", "key": OLD_BINDING, "required_by": [], "policy": "own"}],
            id="releases-the-last-entry-of-a-binding-with-its-own-policy",
        ),
        pytest.param(
            observed(
                workload(),
                (),
                required=(
                    dependency_binding("ConfigMap", "old", required_by=(("web-deployment", ()),)),
                ),
            ),
            [
                {
                    "op": "delete",
                    "kind": "PropagationBinding",
                    "key": OLD_BINDING,
                    "observed": "20",
                    "marked": None,
                }
            ],
            id="deletes-a-binding-left-with-no-entry-and-no-policy",
        ),
        pytest.param(
            observed(
                workload(),
                None,
                required=(
                    dependency_binding("ConfigMap", "old", required_by=(("web-deployment", ()),)),
                ),
            ),
            [],
            id="interpreter-error-keeps-what-is-recorded",
        ),
        pytest.param(
            observed(
                deleting(workload()),
                (config(dependency_binding("ConfigMap", "config")),),
                required=(
                    dependency_binding(
                        "ConfigMap", "config", required_by=(("web-deployment", ()),)
                    ),
                    dependency_binding(
                        "Secret", "token", required_by=(("web-deployment", ()), OTHER)
                    ),
                ),
            ),
            [
                {"op": "delete", "key": CONFIG_BINDING, "marked": None},
                {
                    "op": "update",
                    "key": TOKEN_BINDING,
                    "required_by": ["shop/api-deployment@member3"],
                },
            ],
            id="deleting-workload-releases-all",
        ),
        pytest.param(
            observed(
                None,
                (),
                required=(
                    dependency_binding(
                        "ConfigMap", "config", required_by=(("web-deployment", ()),)
                    ),
                ),
            ),
            [{"op": "delete", "key": CONFIG_BINDING}],
            id="workload-gone-releases-all",
        ),
        pytest.param(
            observed(
                workload(propagate_deps=False),
                (config(),),
                required=(
                    dependency_binding(
                        "ConfigMap", "config", required_by=(("web-deployment", ()),)
                    ),
                ),
            ),
            [{"op": "delete", "key": CONFIG_BINDING}],
            id="propagateDeps-turned-off-releases-all",
        ),
        pytest.param(
            observed(
                workload(policy=False),
                (config(),),
                required=(
                    dependency_binding(
                        "ConfigMap", "config", required_by=(("web-deployment", ()),), policy=True
                    ),
                ),
            ),
            [{"op": "update", "key": CONFIG_BINDING, "required_by": []}],
            id="workload-without-policy-releases-all",
        ),
        pytest.param(
            observed(
                workload(),
                (config(deleting(dependency_binding("ConfigMap", "config", policy=True))),),
            ),
            [
                {
                    "op": "update",
                    "key": CONFIG_BINDING,
                    "deleting": True,
                    "required_by": [ME],
                }
            ],
            id="deleting-dependency-binding-records-who-waits-for-it",
        ),
        pytest.param(
            observed(
                workload(),
                (
                    config(
                        deleting(
                            dependency_binding(
                                "ConfigMap", "config", required_by=(("web-deployment", ()),)
                            )
                        )
                    ),
                ),
            ),
            [],
            id="deleting-dependency-binding-already-names-the-workload",
        ),
        pytest.param(
            observed(
                workload(),
                (),
                required=(
                    deleting(
                        dependency_binding(
                            "ConfigMap", "old", required_by=(("web-deployment", ()),)
                        )
                    ),
                ),
            ),
            [],
            id="deleting-binding-is-not-released-again",
        ),
        pytest.param(
            observed(
                workload(),
                (
                    config(),
                    token(dependency_binding("Secret", "token", required_by=(OTHER,))),
                ),
                required=(
                    dependency_binding("ConfigMap", "old", required_by=(("web-deployment", ()),)),
                ),
            ),
            [
                {"op": "create", "key": CONFIG_BINDING, "required_by": [ME]},
                {
                    "op": "update",
                    "key": TOKEN_BINDING,
                    "required_by": ["shop/api-deployment@member3", ME],
                },
                {"op": "delete", "key": OLD_BINDING},
            ],
            id="every-write-of-a-pass-in-one-plan",
        ),
    ],
)
def test_plan(seen: DependenciesObserved, expected: list[dict[str, Any]]) -> None:
    cached = [
        b.SerializeToString(deterministic=True)
        for b in (
            *(d.binding for d in seen.dependencies or () if d.binding is not None),
            *seen.required,
        )
    ]
    check(dependencies.plan(seen), expected)
    # What was observed is the caches' own objects: the plan edits copies.
    assert cached == [
        b.SerializeToString(deterministic=True)
        for b in (
            *(d.binding for d in seen.dependencies or () if d.binding is not None),
            *seen.required,
        )
    ]


def status_only(binding: work_pb2.PropagationBinding) -> work_pb2.PropagationBinding:
    changed = kinds.PROPAGATION_BINDING.copy(binding)
    changed.metadata.resource_version = "99"
    changed.status.conditions.add(type="FullyApplied", status="True")
    return changed


def respecced(binding: work_pb2.PropagationBinding, **fields: Any) -> work_pb2.PropagationBinding:
    changed = kinds.PROPAGATION_BINDING.copy(binding)
    changed.metadata.generation += 1
    for name, value in fields.items():
        setattr(changed.spec, name, value)
    return changed


WORKLOAD = workload()
PLAIN = workload(propagate_deps=False)
NEEDED = dependency_binding(
    "ConfigMap",
    "config",
    required_by=(("web-deployment", ("member1",)), ("api-deployment", ("member3",))),
)
CONFIG_PARENTS = [PARENT_KEY, "propagationbindings/shop/api-deployment"]


@pytest.mark.parametrize(
    ("key", "old", "new", "expected"),
    [
        pytest.param(PARENT_KEY, None, WORKLOAD, [PARENT_KEY], id="workload-created"),
        pytest.param(
            PARENT_KEY, WORKLOAD, status_only(WORKLOAD), [], id="workload-status-only-ignored"
        ),
        pytest.param(
            PARENT_KEY, WORKLOAD, respecced(WORKLOAD, replicas=4), [PARENT_KEY], id="workload-spec"
        ),
        pytest.param(
            PARENT_KEY,
            WORKLOAD,
            respecced(WORKLOAD, propagate_deps=False),
            [PARENT_KEY],
            id="workload-stops-propagating-deps",
        ),
        pytest.param(
            PARENT_KEY, WORKLOAD, deleting(WORKLOAD), [PARENT_KEY], id="workload-deletion-began"
        ),
        pytest.param(PARENT_KEY, WORKLOAD, None, [PARENT_KEY], id="workload-gone"),
        pytest.param(PARENT_KEY, PLAIN, respecced(PLAIN, replicas=4), [], id="plain-binding-spec"),
        pytest.param(PARENT_KEY, PLAIN, None, [], id="plain-binding-gone"),
        pytest.param(
            CONFIG_BINDING, None, NEEDED, [], id="dependency-binding-created-enqueues-nothing"
        ),
        pytest.param(
            CONFIG_BINDING, NEEDED, deleting(NEEDED), [], id="dependency-deletion-began-waits"
        ),
        pytest.param(
            CONFIG_BINDING,
            deleting(NEEDED),
            None,
            CONFIG_PARENTS,
            id="dependency-binding-gone-enqueues-its-workloads",
        ),
        pytest.param(
            PARENT_KEY,
            dependency_binding(
                "Deployment", "web", required_by=(("web-deployment", ()), ("api-deployment", ()))
            ),
            None,
            [PARENT_KEY, "propagationbindings/shop/api-deployment"],
            id="gone-binding-names-each-workload-once",
        ),
    ],
)
def test_enqueued_by_binding(
    key: str,
    old: work_pb2.PropagationBinding | None,
    new: work_pb2.PropagationBinding | None,
    expected: list[str],
) -> None:
    assert enqueued_by_binding(key, old, new) == expected


@pytest.mark.parametrize(
    ("key", "parent"),
    [
        ("propagationbindings/shop/web-deployment", ("shop", "web-deployment")),
        # requiredBy entries of a cluster-scoped workload say "", as its metadata does.
        (
            "propagationbindings/_/crd-customresourcedefinition",
            ("", "crd-customresourcedefinition"),
        ),
    ],
)
def test_parent_of(key: str, parent: tuple[str, str]) -> None:
    assert parent_of(key) == parent
