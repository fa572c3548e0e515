"""The policy controller's decisions, as a table: what it observes -> what it writes.

Each row builds a :class:`PolicyObserved` from real protobuf objects and checks the
writes of :func:`controlplane.controllers.policy.plan` (type, kind, key and the fields
the decision is about); no etcd, no informer.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import pytest

from archipel.core import kinds
from archipel.core.kinds import Manifest
from archipel.core.matching import Candidate
from archipel.v1alpha1 import policy_pb2, work_pb2
from controlplane.context import FINALIZER
from controlplane.controllers import policy
from controlplane.controllers.policy import PolicyObserved
from controlplane.plan import Create, Delete, Plan, Purge, Update, Write

BINDING_KEY = "propagationbindings/shop/web-deployment"


def deployment(
    *, namespace: str = "shop", replicas: int = 3, labels: dict[str, str] | None = None
) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": namespace,
            "uid": "template-uid",
            "resourceVersion": "5",
            "labels": labels if labels is not None else {"app": "web"},
        },
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}},
        },
    }


def pp(
    name: str = "place", *, clusters: tuple[str, ...] = ("member1",), preserve: bool = False
) -> policy_pb2.PropagationPolicy:
    found = policy_pb2.PropagationPolicy()
    found.metadata.name = name
    found.metadata.namespace = "shop"
    selector = found.spec.resource_selectors.add(api_version="apps/v1", kind="Deployment")
    selector.label_selector.match_labels["app"] = "web"
    found.spec.placement.cluster_affinity.cluster_names.extend(clusters)
    found.spec.preserve_resources_on_deletion = preserve
    return found


def cpp(name: str = "everywhere") -> policy_pb2.ClusterPropagationPolicy:
    found = policy_pb2.ClusterPropagationPolicy()
    found.metadata.name = name
    found.spec.resource_selectors.add(api_version="apps/v1", kind="Deployment")
    return found


def settled(
    template: Manifest,
    by: policy_pb2.PropagationPolicy,
    *,
    required_by: tuple[str, ...] = (),
    clusters: tuple[str, ...] = (),
) -> work_pb2.PropagationBinding:
    """The binding as stored after ``by`` claimed ``template`` (and the scheduler and
    the dependencies controller did their part)."""
    made = policy.plan(
        PolicyObserved(template, None, policies=(by,), new_binding_name="web-deployment")
    )
    assert made is not None and isinstance(made.writes[0], Create)
    binding: work_pb2.PropagationBinding = made.writes[0].obj
    binding.metadata.uid = "binding-uid"
    binding.metadata.resource_version = "7"
    binding.metadata.generation = 1
    for cluster in clusters:
        binding.spec.clusters.add(name=cluster, replicas=1)
    for parent in required_by:
        binding.spec.required_by.add(namespace="shop", name=parent)
    return binding


def dependency_only(*, required_by: tuple[str, ...] = ("api",)) -> work_pb2.PropagationBinding:
    """A binding the dependencies controller made: no policy, only requiredBy."""
    binding = settled(deployment(), pp(), required_by=required_by)
    spec = work_pb2.PropagationBindingSpec()
    spec.resource.CopyFrom(binding.spec.resource)
    spec.required_by.extend(binding.spec.required_by)
    binding.spec.CopyFrom(spec)
    return binding


def deleting(binding: work_pb2.PropagationBinding) -> work_pb2.PropagationBinding:
    marked = kinds.PROPAGATION_BINDING.copy(binding)
    marked.metadata.deletion_timestamp.FromSeconds(1_700_000_000)
    return marked


def with_spec(binding: work_pb2.PropagationBinding, **fields: Any) -> work_pb2.PropagationBinding:
    changed = kinds.PROPAGATION_BINDING.copy(binding)
    for name, value in fields.items():
        setattr(changed.spec, name, value)
    return changed


def summary(write: Write) -> dict[str, Any]:
    """The facts of one write that the table rows check."""
    if isinstance(write, Purge):
        return {"op": "purge", "key": write.key}
    if isinstance(write, Delete):
        marked = write.marked
        return {
            "op": "delete",
            "kind": write.kind.name,
            "key": write.kind.key_of(write.current),
            "observed": write.current.metadata.resource_version,
            "preserve": None if marked is None else marked.spec.preserve_resources_on_deletion,
        }
    obj: work_pb2.PropagationBinding = write.obj
    spec = obj.spec
    facts: dict[str, Any] = {
        "op": "create" if isinstance(write, Create) else "update",
        "kind": write.kind.name,
        "key": write.kind.key_of(obj),
        "policy": "/".join((spec.policy.kind, spec.policy.namespace, spec.policy.name)),
        "resource": f"{spec.resource.kind} {spec.resource.namespace}/{spec.resource.name}",
        "replicas": spec.replicas,
        "placement": list(spec.placement.cluster_affinity.cluster_names),
        "clusters": [t.name for t in spec.clusters],
        "required_by": [f"{s.namespace}/{s.name}" for s in spec.required_by],
        "preserve": spec.preserve_resources_on_deletion,
        "finalizers": list(obj.metadata.finalizers),
    }
    if isinstance(write, Create):
        facts["replacing"] = write.replacing
    if isinstance(write, Update):
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


TEMPLATE = deployment()
PLACED = pp()
BOUND = settled(TEMPLATE, PLACED, clusters=("member1",))
REQUIRED = settled(TEMPLATE, PLACED, required_by=("api",))
SYSTEM = deployment(namespace="kube-system")
SYSTEM_BOUND = settled(deployment(), pp())
SYSTEM_BOUND.metadata.namespace = "kube-system"
SYSTEM_BOUND.spec.resource.namespace = "kube-system"
UNLABELLED = deployment(labels={})


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        pytest.param(
            PolicyObserved(None, BOUND),
            [{"op": "delete", "key": BINDING_KEY, "observed": "7", "preserve": None}],
            id="template-gone-binding-deleted-with-its-objects",
        ),
        pytest.param(PolicyObserved(None, None), [], id="template-and-binding-gone"),
        pytest.param(
            PolicyObserved(None, deleting(BOUND)), [], id="template-gone-binding-deleting"
        ),
        pytest.param(
            PolicyObserved(TEMPLATE, deleting(BOUND), policies=(PLACED,)),
            [],
            id="binding-deleting-waits-for-it-to-go",
        ),
        pytest.param(
            PolicyObserved(UNLABELLED, None, policies=(PLACED,)), [], id="no-policy-no-binding"
        ),
        pytest.param(
            PolicyObserved(UNLABELLED, BOUND, policies=(PLACED,), claimed_policy_exists=True),
            [{"op": "delete", "key": BINDING_KEY, "preserve": None}],
            id="no-longer-matched-objects-removed",
        ),
        pytest.param(
            PolicyObserved(TEMPLATE, BOUND, claimed_policy_exists=False),
            [{"op": "delete", "kind": "PropagationBinding", "key": BINDING_KEY, "preserve": True}],
            id="claimed-policy-deleted-objects-orphaned",
        ),
        pytest.param(
            PolicyObserved(
                TEMPLATE,
                with_spec(BOUND, preserve_resources_on_deletion=True),
                claimed_policy_exists=False,
            ),
            [{"op": "delete", "key": BINDING_KEY, "preserve": None}],
            id="claimed-policy-deleted-already-preserving",
        ),
        pytest.param(
            PolicyObserved(SYSTEM, SYSTEM_BOUND, policies=(PLACED,), claimed_policy_exists=True),
            [
                {
                    "op": "delete",
                    "key": "propagationbindings/kube-system/web-deployment",
                    "preserve": True,
                }
            ],
            id="system-template-orphaned",
        ),
        pytest.param(
            PolicyObserved(UNLABELLED, REQUIRED, claimed_policy_exists=True),
            [
                {
                    "op": "update",
                    "key": BINDING_KEY,
                    "observed": "7",
                    "policy": "//",
                    "resource": "Deployment shop/web",
                    "placement": [],
                    "replicas": 0,
                    "required_by": ["shop/api"],
                }
            ],
            id="unmatched-but-required-kept-as-dependency",
        ),
        pytest.param(
            PolicyObserved(UNLABELLED, dependency_only()), [], id="unmatched-dependency-untouched"
        ),
        pytest.param(
            PolicyObserved(TEMPLATE, None, policies=(PLACED,), new_binding_name="web-deployment"),
            [
                {
                    "op": "create",
                    "kind": "PropagationBinding",
                    "key": BINDING_KEY,
                    "replacing": 0,
                    "policy": "PropagationPolicy/shop/place",
                    "resource": "Deployment shop/web",
                    "replicas": 3,
                    "placement": ["member1"],
                    "clusters": [],
                    "required_by": [],
                    "finalizers": [FINALIZER],
                }
            ],
            id="new-binding",
        ),
        pytest.param(
            PolicyObserved(
                TEMPLATE,
                None,
                cluster_policies=(cpp(),),
                new_binding_name="web-deployment-0123456789",
                quarantined=42,
            ),
            [
                {
                    "op": "create",
                    "key": BINDING_KEY + "-0123456789",
                    "replacing": 42,
                    "policy": "ClusterPropagationPolicy//everywhere",
                }
            ],
            id="new-binding-over-an-undecodable-value",
        ),
        pytest.param(
            PolicyObserved(
                deployment(replicas=5),
                settled(TEMPLATE, PLACED, required_by=("api",), clusters=("member1",)),
                policies=(pp(clusters=("member2",)),),
                claimed_policy_exists=True,
            ),
            [
                {
                    "op": "update",
                    "key": BINDING_KEY,
                    "observed": "7",
                    "replicas": 5,
                    "placement": ["member2"],
                    # The scheduler's result and requiredBy are not the policy's.
                    "clusters": ["member1"],
                    "required_by": ["shop/api"],
                }
            ],
            id="spec-change-updates",
        ),
        pytest.param(
            PolicyObserved(TEMPLATE, dependency_only(), policies=(PLACED,)),
            [
                {
                    "op": "update",
                    "key": BINDING_KEY,
                    "policy": "PropagationPolicy/shop/place",
                    "placement": ["member1"],
                    "required_by": ["shop/api"],
                }
            ],
            id="dependency-claimed-by-a-policy",
        ),
        pytest.param(
            PolicyObserved(TEMPLATE, BOUND, policies=(PLACED,), claimed_policy_exists=True),
            [],
            id="nothing-to-do",
        ),
        pytest.param(
            PolicyObserved(
                TEMPLATE,
                settled(TEMPLATE, pp("zz")),
                policies=(PLACED, pp("zz", clusters=("member1",))),
                claimed_policy_exists=True,
            ),
            [],
            id="claimed-policy-keeps-the-template",
        ),
    ],
)
def test_plan(observed: PolicyObserved, expected: list[dict[str, Any]]) -> None:
    before = copy.deepcopy(observed.template)
    binding_before = (
        observed.binding.SerializeToString(deterministic=True) if observed.binding else b""
    )
    check(policy.plan(observed), expected)
    # What was observed is the caches' own objects: the plan edits copies.
    assert observed.template == before
    if observed.binding is not None:
        assert observed.binding.SerializeToString(deterministic=True) == binding_before


def test_a_rewrite_over_an_undecodable_value_is_logged_once_it_landed() -> None:
    observed = PolicyObserved(
        TEMPLATE, None, policies=(PLACED,), new_binding_name="web-deployment", quarantined=42
    )
    result = policy.plan(observed)
    assert result is not None and len(result.committed) == 1
    clean = policy.plan(
        PolicyObserved(TEMPLATE, None, policies=(PLACED,), new_binding_name="web-deployment")
    )
    assert clean is not None and clean.committed == []


def test_one_reconcile_writes_one_key_once() -> None:
    for observed in (
        PolicyObserved(None, BOUND),
        PolicyObserved(TEMPLATE, BOUND, claimed_policy_exists=False),
        PolicyObserved(UNLABELLED, REQUIRED, claimed_policy_exists=True),
    ):
        result = policy.plan(observed)
        assert result is not None
        assert result.keys() == [BINDING_KEY]
        assert result.requeue_after == 0


# -- dependentOverrides: the policy waits for the overrides it names ----------------------


def needing(
    found: policy_pb2.PropagationPolicy | policy_pb2.ClusterPropagationPolicy, *names: str
) -> Any:
    changed = copy.deepcopy(found)
    changed.spec.dependent_overrides.extend(names)
    return changed


def ready_condition(write: Write) -> tuple[str, str, str] | None:
    assert isinstance(write, Update)
    found = next((c for c in write.obj.status.conditions if c.type == policy.OVERRIDES_READY), None)
    return None if found is None else (found.status, found.reason, found.message)


WAITING = needing(PLACED, "web-override", "db-override")
WAITING_MESSAGE = (
    "waiting for OverridePolicy shop/web-override, shop/db-override "
    "(PropagationPolicy shop/place dependentOverrides)"
)


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        pytest.param(
            PolicyObserved(TEMPLATE, None, policies=(WAITING,), new_binding_name="web-deployment"),
            [],
            id="missing-overrides-no-binding",
        ),
        pytest.param(
            PolicyObserved(
                TEMPLATE,
                None,
                policies=(WAITING,),
                new_binding_name="web-deployment",
                overrides=frozenset({"web-override"}),
                # A PropagationPolicy's names are OverridePolicies, not cluster ones.
                cluster_overrides=frozenset({"db-override"}),
            ),
            [],
            id="one-still-missing-no-binding",
        ),
        pytest.param(
            PolicyObserved(
                TEMPLATE,
                None,
                policies=(WAITING,),
                new_binding_name="web-deployment",
                overrides=frozenset({"web-override", "db-override", "other"}),
            ),
            [{"op": "create", "key": BINDING_KEY, "policy": "PropagationPolicy/shop/place"}],
            id="overrides-present-binding-created",
        ),
        pytest.param(
            PolicyObserved(
                TEMPLATE,
                None,
                cluster_policies=(needing(cpp(), "everywhere-override"),),
                new_binding_name="web-deployment",
                # A ClusterPropagationPolicy's names are ClusterOverridePolicies.
                overrides=frozenset({"everywhere-override"}),
            ),
            [],
            id="cluster-policy-waits-for-a-cluster-override",
        ),
        pytest.param(
            PolicyObserved(
                TEMPLATE,
                None,
                cluster_policies=(needing(cpp(), "everywhere-override"),),
                new_binding_name="web-deployment",
                cluster_overrides=frozenset({"everywhere-override"}),
            ),
            [
                {
                    "op": "create",
                    "key": BINDING_KEY,
                    "policy": "ClusterPropagationPolicy//everywhere",
                }
            ],
            id="cluster-override-present-binding-created",
        ),
        pytest.param(
            PolicyObserved(
                TEMPLATE,
                BOUND,
                policies=(needing(pp(clusters=("member2",)), "web-override"),),
                claimed_policy_exists=True,
            ),
            # Only the condition: the placement stays what it was.
            [{"op": "update", "key": BINDING_KEY, "observed": "7", "placement": ["member1"]}],
            id="policy-change-held-while-missing",
        ),
        pytest.param(
            PolicyObserved(
                TEMPLATE,
                dependency_only(),
                policies=(needing(PLACED, "web-override"),),
            ),
            [{"op": "update", "key": BINDING_KEY, "policy": "//", "required_by": ["shop/api"]}],
            id="dependency-not-claimed-while-missing",
        ),
        pytest.param(
            PolicyObserved(
                TEMPLATE,
                BOUND,
                policies=(needing(PLACED, "web-override"),),
                claimed_policy_exists=True,
            ),
            [],
            id="override-deleted-after-taking-effect-nothing-held",
        ),
    ],
)
def test_plan_dependent_overrides(observed: PolicyObserved, expected: list[dict[str, Any]]) -> None:
    check(policy.plan(observed), expected)


def test_waiting_without_a_binding_is_logged() -> None:
    result = policy.plan(
        PolicyObserved(TEMPLATE, None, policies=(WAITING,), new_binding_name="web-deployment")
    )
    assert result is not None and result.writes == [] and len(result.committed) == 1
    logged = result.committed[0]
    assert isinstance(logged, functools.partial)
    assert logged.args[1:] == ("Deployment", "shop/web", WAITING_MESSAGE)


def test_waiting_binding_says_why_then_resumes() -> None:
    moved = needing(pp(clusters=("member2",)), "web-override", "db-override")
    held = policy.plan(
        PolicyObserved(
            TEMPLATE,
            BOUND,
            policies=(moved,),
            claimed_policy_exists=True,
            overrides=frozenset({"db-override"}),
        )
    )
    assert held is not None and len(held.writes) == 1
    waiting = held.writes[0]
    assert isinstance(waiting, Update) and waiting.obj.spec == BOUND.spec
    assert ready_condition(waiting) == (
        "False",
        "WaitingForDependentOverrides",
        "waiting for OverridePolicy shop/web-override "
        "(PropagationPolicy shop/place dependentOverrides)",
    )
    # Stored so, the next pass while still missing writes nothing.
    stored = kinds.PROPAGATION_BINDING.copy(waiting.obj)
    again = PolicyObserved(
        TEMPLATE,
        stored,
        policies=(moved,),
        claimed_policy_exists=True,
        overrides=frozenset({"db-override"}),
    )
    assert not (policy.plan(again) or Plan()).writes
    # The override appears: the policy takes effect and the condition says so.
    ready = policy.plan(
        dataclasses.replace(again, overrides=frozenset({"db-override", "web-override"}))
    )
    assert ready is not None and len(ready.writes) == 1
    applied = ready.writes[0]
    assert summary(applied)["placement"] == ["member2"]
    assert ready_condition(applied) == (
        "True",
        "DependentOverridesPresent",
        "every override the policy depends on exists",
    )
    assert isinstance(applied, Update)
    condition = next(c for c in applied.obj.status.conditions if c.type == policy.OVERRIDES_READY)
    assert condition.observed_generation == BOUND.metadata.generation + 1


WEB_MANIFEST = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"replicas": 2},
}


def web_candidate() -> tuple[policy_pb2.PropagationPolicy, Candidate]:
    """A PropagationPolicy for Deployments in shop, and it as the one candidate."""
    web = policy_pb2.PropagationPolicy()
    web.metadata.name, web.metadata.namespace = "web", "shop"
    web.spec.resource_selectors.add(api_version="apps/v1", kind="Deployment")
    return web, Candidate(policy=web, namespaced=True, specificity=0)


def test_a_binding_level_scheduling_suspension_outlives_the_policys_rewrite() -> None:
    web, candidate = web_candidate()
    held = work_pb2.PropagationBindingSpec()
    held.suspension.scheduling = True  # set on the binding, as Karmada's users do
    assert policy.desired_spec(candidate, WEB_MANIFEST, held).suspension.scheduling
    # A policy that says otherwise wins.
    web.spec.suspension.scheduling = False
    assert not policy.desired_spec(candidate, WEB_MANIFEST, held).suspension.scheduling


def test_association_is_karmadas_old_name_for_propagate_deps() -> None:
    web, candidate = web_candidate()
    assert not policy.desired_spec(candidate, WEB_MANIFEST, None).propagate_deps
    web.spec.association = True
    assert policy.desired_spec(candidate, WEB_MANIFEST, None).propagate_deps


def lazy(policy_: policy_pb2.PropagationPolicy, revision: int) -> policy_pb2.PropagationPolicy:
    """``policy_`` made Lazy, as stored at etcd revision ``revision``."""
    made = copy.deepcopy(policy_)
    made.spec.activation_preference = "Lazy"
    made.metadata.resource_version = str(revision)
    return made


def at_revision(template: Manifest, revision: int, **spec: Any) -> Manifest:
    changed = copy.deepcopy(template)
    changed["metadata"]["resourceVersion"] = str(revision)
    changed["spec"].update(spec)
    return changed


def test_a_lazy_policy_created_after_its_template_waits_for_the_templates_change() -> None:
    template = deployment()  # resourceVersion 5
    waiting = PolicyObserved(
        template, None, policies=(lazy(pp(), 9),), new_binding_name="web-deployment"
    )
    assert policy.plan(waiting) is None
    # The template changes after the policy: the policy applies.
    changed = dataclasses.replace(waiting, template=at_revision(template, 12, replicas=4))
    made = policy.plan(changed)
    assert made is not None and isinstance(made.writes[0], Create)


def test_a_lazy_policy_older_than_its_template_applies_at_once() -> None:
    observed = PolicyObserved(
        deployment(), None, policies=(lazy(pp(), 3),), new_binding_name="web-deployment"
    )
    made = policy.plan(observed)
    assert made is not None and isinstance(made.writes[0], Create)


def test_a_lazy_policys_change_waits_for_the_templates_next_change() -> None:
    template = deployment()
    binding = settled(template, lazy(pp(), 3))
    moved = lazy(pp(clusters=("member2",)), 20)
    # Status written back into the template is no change of it.
    with_status = copy.deepcopy(template)
    with_status["status"] = {"readyReplicas": 3}
    with_status["metadata"]["resourceVersion"] = "30"
    held = PolicyObserved(with_status, binding, policies=(moved,), claimed_policy_exists=True)
    assert policy.plan(held) is None
    relabelled = copy.deepcopy(with_status)
    relabelled["metadata"]["labels"]["tier"] = "front"
    made = policy.plan(dataclasses.replace(held, template=relabelled))
    assert made is not None and isinstance(made.writes[0], Update)
    assert list(made.writes[0].obj.spec.placement.cluster_affinity.cluster_names) == ["member2"]


def test_a_non_lazy_policys_change_applies_at_once() -> None:
    template = deployment()
    binding = settled(template, pp())
    observed = PolicyObserved(
        template, binding, policies=(pp(clusters=("member2",)),), claimed_policy_exists=True
    )
    made = policy.plan(observed)
    assert made is not None and isinstance(made.writes[0], Update)


def test_a_lazy_policy_takes_over_from_a_deleted_one_at_once() -> None:
    template = deployment()
    binding = settled(template, pp("old"))
    observed = PolicyObserved(
        template, binding, policies=(lazy(pp("new"), 40),), claimed_policy_exists=False
    )
    made = policy.plan(observed)
    assert made is not None and isinstance(made.writes[0], Update)
    assert made.writes[0].obj.spec.policy.name == "new"


def prioritized(class_name: str) -> policy_pb2.PropagationPolicy:
    made = pp()
    made.spec.schedule_priority.priority_class_source = "KubePriorityClass"
    made.spec.schedule_priority.priority_class_name = class_name
    return made


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        pytest.param({"high": 1000}, 1000, id="found"),
        pytest.param({"high": 0}, 0, id="zero-is-a-value"),
        pytest.param({"low": 10}, None, id="missing"),
    ],
)
def test_the_binding_carries_the_priority_its_class_resolves_to(
    classes: dict[str, int], expected: int | None
) -> None:
    made = policy.plan(
        PolicyObserved(
            deployment(),
            None,
            policies=(prioritized("high"),),
            new_binding_name="web-deployment",
            priority_classes=classes,
        )
    )
    assert made is not None and isinstance(made.writes[0], Create)
    priority = made.writes[0].obj.spec.schedule_priority
    assert priority.priority_class_name == "high"
    assert (priority.priority if priority.HasField("priority") else None) == expected
