"""Namespace auto-propagation, as tables: what the namespace controller observes -> what
it writes; and how the policy and dependencies controllers treat its bindings (a
policy wins, and hands the Namespace back when it lets go).

Each row builds the observation from real protobuf objects and checks the writes of
the pure ``plan`` functions; no etcd, no informer. The ``--skipped-propagating-namespaces``
flag is checked as the process parses it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from archipel.core import kinds
from archipel.core.kinds import Manifest
from archipel.v1alpha1 import policy_pb2, work_pb2
from controlplane.bindings import auto_propagated_spec
from controlplane.context import FINALIZER
from controlplane.controllers import dependencies, namespace, policy
from controlplane.controllers.dependencies import DependenciesObserved
from controlplane.controllers.namespace import NamespaceObserved
from controlplane.controllers.policy import PolicyObserved
from controlplane.plan import Create, Delete, Plan, Update, Write
from controlplane.server import parse_args

KEY = "propagationbindings/_/team-a-namespace"
MEMBERS = ("member1", "member2")


def ns(name: str = "team-a", *, labels: dict[str, str] | None = None, **meta: Any) -> Manifest:
    metadata: dict[str, Any] = {"name": name, "uid": f"{name}-uid", "resourceVersion": "5"}
    if labels is not None:
        metadata["labels"] = labels
    metadata.update(meta)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def stored(binding: work_pb2.PropagationBinding) -> work_pb2.PropagationBinding:
    binding.metadata.uid = "binding-uid"
    binding.metadata.resource_version = "7"
    binding.metadata.generation = 1
    return binding


def auto(
    template: Manifest | None = None,
    clusters: tuple[str, ...] = MEMBERS,
    *,
    required_by: tuple[str, ...] = (),
) -> work_pb2.PropagationBinding:
    """A binding as the namespace controller leaves it."""
    binding = work_pb2.PropagationBinding(
        api_version=kinds.PROPAGATION_BINDING.api_version, kind="PropagationBinding"
    )
    binding.metadata.name = "team-a-namespace"
    binding.metadata.finalizers.append(FINALIZER)
    binding.spec.CopyFrom(auto_propagated_spec(template or ns(), clusters))
    for parent in required_by:
        binding.spec.required_by.add(namespace="shop", name=parent)
    return stored(binding)


def cpp(
    name: str = "team-a", *, clusters: tuple[str, ...] = ("member1",)
) -> policy_pb2.ClusterPropagationPolicy:
    found = policy_pb2.ClusterPropagationPolicy()
    found.metadata.name = name
    found.spec.resource_selectors.add(api_version="v1", kind="Namespace", name="team-a")
    found.spec.placement.cluster_affinity.cluster_names.extend(clusters)
    return found


def claimed(by: policy_pb2.ClusterPropagationPolicy | None = None) -> work_pb2.PropagationBinding:
    """The binding once ``by`` took the Namespace over and the scheduler placed it."""
    by = by or cpp()
    made = policy.plan(PolicyObserved(ns(), auto(), cluster_policies=(by,)))
    assert made is not None and isinstance(made.writes[0], Update)
    binding: work_pb2.PropagationBinding = made.writes[0].obj
    del binding.spec.clusters[:]
    for name in by.spec.placement.cluster_affinity.cluster_names:
        binding.spec.clusters.add(name=name)
    return stored(binding)


def dependency_only() -> work_pb2.PropagationBinding:
    binding = auto(required_by=("api",))
    spec = work_pb2.PropagationBindingSpec()
    spec.resource.CopyFrom(binding.spec.resource)
    spec.required_by.extend(binding.spec.required_by)
    binding.spec.CopyFrom(spec)
    return binding


def deleting(binding: work_pb2.PropagationBinding) -> work_pb2.PropagationBinding:
    marked = kinds.PROPAGATION_BINDING.copy(binding)
    marked.metadata.deletion_timestamp.FromSeconds(1_700_000_000)
    return marked


def summary(write: Write) -> dict[str, Any]:
    """The facts of one write that the rows check."""
    if isinstance(write, Delete):
        marked = write.marked
        return {
            "op": "delete",
            "key": write.kind.key_of(write.current),
            "observed": write.current.metadata.resource_version,
            "preserve": None if marked is None else marked.spec.preserve_resources_on_deletion,
        }
    assert isinstance(write, Create | Update)
    obj: work_pb2.PropagationBinding = write.obj
    spec = obj.spec
    facts: dict[str, Any] = {
        "op": "create" if isinstance(write, Create) else "update",
        "key": write.kind.key_of(obj),
        "auto": spec.auto_propagated,
        "policy": "/".join((spec.policy.kind, spec.policy.name)),
        "resource": f"{spec.resource.kind} {spec.resource.name} {spec.resource.resource_version}",
        "clusters": [t.name for t in spec.clusters],
        "required_by": [f"{s.namespace}/{s.name}" for s in spec.required_by],
        "conflict": spec.conflict_resolution,
        "finalizers": list(obj.metadata.finalizers),
    }
    if isinstance(write, Create):
        facts["replacing"] = write.replacing
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


def observed(template: Manifest | None, binding: Any = None, **fields: Any) -> NamespaceObserved:
    fields.setdefault("clusters", MEMBERS)
    fields.setdefault("new_binding_name", "" if binding is not None else "team-a-namespace")
    return NamespaceObserved(template, binding, **fields)


NEW = {
    "op": "create",
    "key": KEY,
    "replacing": 0,
    "auto": True,
    "policy": "/",
    "resource": "Namespace team-a 5",
    "clusters": list(MEMBERS),
    "required_by": [],
    "conflict": "Abort",
    "finalizers": [FINALIZER],
}
SKIP = "namespace.karmada.io/skip-auto-propagation"
ARCHIPEL_SKIP = "namespace.archipel.io/skip-auto-propagation"
TEAMS = (re.compile("team-.*"),)


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        pytest.param(observed(ns()), [NEW], id="eligible-sent-to-every-cluster"),
        pytest.param(
            observed(ns(), quarantined=41), [{**NEW, "replacing": 41}], id="over-undecodable"
        ),
        pytest.param(observed(ns(), clusters=()), [{**NEW, "clusters": []}], id="no-cluster-yet"),
        pytest.param(observed(ns(), auto()), [], id="steady"),
        pytest.param(
            observed(ns(), auto(clusters=("member1",))),
            [{"op": "update", "key": KEY, "observed": "7", "clusters": list(MEMBERS)}],
            id="cluster-joins",
        ),
        pytest.param(
            observed(ns(), auto(), clusters=("member2",)),
            [{"op": "update", "key": KEY, "clusters": ["member2"]}],
            id="cluster-leaves",
        ),
        pytest.param(
            observed(ns(resourceVersion="9"), auto()),
            [{"op": "update", "key": KEY, "resource": "Namespace team-a 9"}],
            id="template-changed",
        ),
        *(
            pytest.param(observed(ns(name)), [], id=f"system-{name}")
            for name in ("kube-system", "kube-lab", "archipel-system", "archipel-es-member1")
        ),
        pytest.param(observed(ns("default")), [], id="default-every-cluster-has-its-own"),
        pytest.param(observed(ns(labels={SKIP: "true"})), [], id="karmada-skip-label"),
        pytest.param(observed(ns(labels={ARCHIPEL_SKIP: "true"})), [], id="archipel-skip-label"),
        pytest.param(observed(ns(labels={SKIP: "True"})), [], id="skip-label-any-case-as-karmada"),
        pytest.param(observed(ns(labels={SKIP: "false"})), [NEW], id="skip-label-false-sends"),
        pytest.param(observed(ns(labels={SKIP: "yes"})), [NEW], id="skip-label-yes-sends"),
        pytest.param(observed(ns(labels={SKIP: ""})), [NEW], id="skip-label-empty-sends"),
        pytest.param(observed(ns(), skipped=TEAMS), [], id="regex-skips"),
        pytest.param(
            observed(ns(), skipped=(re.compile("team"), re.compile("a"))),
            [NEW],
            id="regex-must-match-the-whole-name",
        ),
        pytest.param(
            observed(ns(labels={SKIP: "true"}), auto()),
            [{"op": "delete", "key": KEY, "observed": "7", "preserve": True}],
            id="skip-label-added-stops-syncing-and-leaves-it-in-the-members",
        ),
        pytest.param(
            observed(ns(), auto(), skipped=TEAMS),
            [{"op": "delete", "key": KEY, "preserve": True}],
            id="pattern-added-stops-syncing-and-leaves-it-in-the-members",
        ),
        pytest.param(
            observed(ns(labels={SKIP: "true"}), auto(required_by=("api",))),
            [
                {
                    "op": "update",
                    "key": KEY,
                    "auto": False,
                    "clusters": [],
                    "required_by": ["shop/api"],
                }
            ],
            id="skip-label-added-what-requires-it-keeps-it",
        ),
        pytest.param(
            observed(ns(), dependency_only()),
            [{"op": "update", "key": KEY, "auto": True, "required_by": ["shop/api"]}],
            id="dependency-only-now-sent-everywhere",
        ),
        pytest.param(observed(ns(labels={SKIP: "true"}), dependency_only()), [], id="skip-dep"),
        pytest.param(observed(ns(), cluster_policies=(cpp(),)), [], id="policy-claimed-no-binding"),
        pytest.param(
            observed(ns(), auto(), cluster_policies=(cpp(),)),
            [],
            id="policy-claimed-left-to-the-policy-controller",
        ),
        pytest.param(observed(ns(), claimed()), [], id="policy-binding-untouched"),
        pytest.param(observed(ns(), claimed(), clusters=()), [], id="policy-binding-no-clusters"),
        pytest.param(
            observed(ns(), cluster_policies=(cpp("other"),)),
            [],
            id="any-matching-policy-claims",
        ),
        pytest.param(
            observed(ns("team-b"), new_binding_name="team-b-namespace", cluster_policies=(cpp(),)),
            [
                {
                    **NEW,
                    "key": "propagationbindings/_/team-b-namespace",
                    "resource": "Namespace team-b 5",
                }
            ],
            id="a-policy-for-another-namespace-claims-nothing",
        ),
        pytest.param(
            observed(ns(deletionTimestamp="2026-01-01T00:00:00Z"), auto(clusters=("member1",))),
            [],
            id="deleting-namespace-changes-nothing-until-gone",
        ),
        pytest.param(observed(ns(), deleting(auto()), clusters=()), [], id="binding-deleting"),
        pytest.param(
            observed(None, auto()),
            [{"op": "delete", "key": KEY, "observed": "7", "preserve": None}],
            id="namespace-deleted-removed-from-members",
        ),
        pytest.param(observed(None, None), [], id="gone"),
        pytest.param(observed(None, claimed()), [], id="deleted-policys-binding-not-ours"),
        pytest.param(observed(None, dependency_only()), [], id="deleted-dependency-not-ours"),
    ],
)
def test_plan(seen: NamespaceObserved, expected: list[dict[str, Any]]) -> None:
    check(namespace.plan(seen), expected)


POLICY = cpp()


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        pytest.param(PolicyObserved(ns(), auto(), auto_propagates=True), [], id="auto-untouched"),
        pytest.param(PolicyObserved(None, auto()), [], id="auto-deleted-by-namespace-controller"),
        pytest.param(
            PolicyObserved(ns(), auto(), cluster_policies=(POLICY,), auto_propagates=True),
            [
                {
                    "op": "update",
                    "key": KEY,
                    "observed": "7",
                    "auto": False,
                    "policy": "ClusterPropagationPolicy/team-a",
                    # Until the scheduler places it by the policy.
                    "clusters": list(MEMBERS),
                }
            ],
            id="policy-takes-it-over",
        ),
        pytest.param(
            PolicyObserved(ns(), claimed(), auto_propagates=True, claimed_policy_exists=False),
            [
                {
                    "op": "update",
                    "key": KEY,
                    "auto": True,
                    "policy": "/",
                    "clusters": ["member1"],
                    "conflict": "Abort",
                }
            ],
            id="policy-deleted-hands-it-back-in-place",
        ),
        pytest.param(
            PolicyObserved(ns(), claimed(), auto_propagates=True, claimed_policy_exists=True),
            [{"op": "update", "key": KEY, "auto": True, "clusters": ["member1"]}],
            id="policy-no-longer-matching-hands-it-back-in-place",
        ),
        pytest.param(
            PolicyObserved(ns(labels={SKIP: "true"}), claimed(), claimed_policy_exists=True),
            [{"op": "delete", "key": KEY, "preserve": None}],
            id="skipped-and-let-go-removed-as-any-template",
        ),
        pytest.param(
            PolicyObserved(ns(labels={SKIP: "true"}), claimed(), claimed_policy_exists=False),
            [{"op": "delete", "key": KEY, "preserve": True}],
            id="skipped-and-policy-deleted-orphaned-as-any-template",
        ),
        pytest.param(
            PolicyObserved(ns(), dependency_only(), auto_propagates=True),
            [],
            id="dependency-only-left-to-the-namespace-controller",
        ),
    ],
)
def test_policy_controller_and_auto_propagated_namespaces(
    seen: PolicyObserved, expected: list[dict[str, Any]]
) -> None:
    check(policy.plan(seen), expected)


def test_a_workload_letting_go_keeps_an_auto_propagated_namespace() -> None:
    # The last requiredBy entry goes; the namespace goes on everywhere.
    binding = auto(required_by=("api",))
    seen = DependenciesObserved(
        key="propagationbindings/shop/api", parent=None, required=(binding,)
    )
    check(
        dependencies.plan(seen),
        [{"op": "update", "key": KEY, "auto": True, "required_by": [], "clusters": list(MEMBERS)}],
    )


def test_the_flag_takes_regular_expressions_as_karmadas_string_slice() -> None:
    settings = parse_args(
        [
            "--etcd=http://127.0.0.1:1",
            "--skipped-propagating-namespaces=team-.*,tmp",
            '--skipped-propagating-namespaces="scratch-[0-9]{1,3}"',
        ]
    )
    patterns = [p.pattern for p in settings.skipped_propagating_namespaces]
    assert patterns == ["team-.*", "tmp", "scratch-[0-9]{1,3}"]
    assert parse_args(["--etcd=http://127.0.0.1:1"]).skipped_propagating_namespaces == ()


def test_a_bad_regular_expression_is_one_line_and_exit_code_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--etcd=http://127.0.0.1:1", "--skipped-propagating-namespaces=ok,team-["])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "--skipped-propagating-namespaces: 'team-[' is not a regular expression" in err
