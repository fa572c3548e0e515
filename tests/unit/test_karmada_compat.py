"""Karmada policy YAML is accepted unchanged: every field parses into our messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from archipel.client import API_KINDS, ClientError, api_kind_of_document, to_message
from archipel.core import validation
from archipel.core.errors import Invalid

FULL_KARMADA_POLICY = """
apiVersion: policy.karmada.io/v1alpha1
kind: PropagationPolicy
metadata:
  name: nginx-propagation
  namespace: default
  labels: {team: web}
spec:
  resourceSelectors:
    - apiVersion: apps/v1
      kind: Deployment
      name: nginx
    - apiVersion: v1
      kind: ConfigMap
      labelSelector:
        matchLabels: {app: nginx}
        matchExpressions:
          - {key: tier, operator: In, values: [web]}
  propagateDeps: true
  priority: 10
  preemption: Always
  conflictResolution: Overwrite
  schedulerName: default-scheduler
  activationPreference: Lazy
  preserveResourcesOnDeletion: true
  dependentOverrides: [nginx-override]
  suspension:
    dispatching: false
    dispatchingOnClusters: {clusterNames: [member3]}
  schedulePriority:
    priorityClassSource: KubePriorityClass
    priorityClassName: high
  failover:
    application:
      decisionConditions: {tolerationSeconds: 120}
      purgeMode: Gracefully
      gracePeriodSeconds: 600
      statePreservation:
        rules:
          - {aliasLabelName: app.state, jsonPath: "{ .replicas }"}
    cluster:
      purgeMode: Directly
  placement:
    clusterAffinity:
      labelSelector:
        matchLabels: {location: eu}
      fieldSelector:
        matchExpressions:
          - {key: region, operator: In, values: [eu-west-1]}
      clusterNames: [member1, member2]
      exclude: [member3]
    clusterTolerations:
      - key: cluster.karmada.io/not-ready
        operator: Exists
        effect: NoExecute
        tolerationSeconds: 300
    spreadConstraints:
      - {spreadByField: cluster, maxGroups: 2, minGroups: 1}
      - {spreadByField: region, minGroups: 1}
    replicaScheduling:
      replicaSchedulingType: Divided
      replicaDivisionPreference: Weighted
      weightPreference:
        staticWeightList:
          - targetCluster: {clusterNames: [member1]}
            weight: 2
          - targetCluster: {clusterNames: [member2]}
            weight: 1
    workloadAffinity:
      antiAffinity: {groupByLabelKey: app.group}
"""

AFFINITIES = """
apiVersion: policy.karmada.io/v1alpha1
kind: ClusterPropagationPolicy
metadata:
  name: fallback
spec:
  resourceSelectors:
    - apiVersion: v1
      kind: Namespace
  placement:
    clusterAffinities:
      - affinityName: local
        clusterNames: [member1]
      - affinityName: cloud
        labelSelector:
          matchLabels: {provider: aws}
    replicaScheduling:
      replicaSchedulingType: Duplicated
"""


# Karmada fields Archipel does not act on yet: refused, each naming itself, rather
# than accepted and ignored (docs/karmada-fields.md).
NOT_YET = {
    "spec.placement.workloadAffinity": ("placement", "workloadAffinity"),
}


@pytest.mark.parametrize("text", [FULL_KARMADA_POLICY, AFFINITIES], ids=["propagation", "cluster"])
def test_karmada_yaml_round_trips(text: str) -> None:
    document = yaml.safe_load(text)
    api_kind = api_kind_of_document(document)
    assert api_kind is not None
    message = to_message(api_kind, document)
    # proto3 JSON names are Karmada's: the message prints back the same document.
    assert json_format.MessageToDict(message) == document
    for path in NOT_YET.values():
        parent = document["spec"]
        for step in path[:-1]:
            parent = parent[step]
        parent.pop(path[-1], None)
    namespace = document["metadata"].get("namespace", "")
    validation.check_propagation_spec(
        to_message(api_kind, document).spec, policy_namespace=namespace
    )


@pytest.mark.parametrize("field", sorted(NOT_YET))
def test_a_karmada_field_not_acted_on_yet_is_refused_naming_it(field: str) -> None:
    document = yaml.safe_load(FULL_KARMADA_POLICY)
    for other, path in NOT_YET.items():
        if other == field:
            continue
        parent = document["spec"]
        for step in path[:-1]:
            parent = parent[step]
        del parent[path[-1]]
    message = to_message(API_KINDS[1], document)
    with pytest.raises(Invalid) as refused:
        validation.check_propagation_spec(message.spec, policy_namespace="default")
    assert refused.value.field == field
    assert "not supported yet" in str(refused.value)


def test_another_scheduler_is_refused() -> None:
    document = yaml.safe_load(AFFINITIES)
    document["spec"]["schedulerName"] = "volcano"
    message = to_message(API_KINDS[2], document)
    with pytest.raises(Invalid) as refused:
        validation.check_propagation_spec(message.spec, policy_namespace="")
    assert refused.value.field == "spec.schedulerName"


def test_unknown_field_is_named() -> None:
    document = yaml.safe_load(AFFINITIES)
    document["spec"]["placement"]["clusterAffinity"] = {"clusterNamez": ["a"]}
    with pytest.raises(ClientError, match="clusterNamez"):
        to_message(API_KINDS[2], document)


def test_samples_are_valid() -> None:
    for path in sorted(Path("samples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            api_kind = api_kind_of_document(document)
            if api_kind is None:
                validation.check_template(document)
            else:
                to_message(api_kind, document)


# Karmada's documentation (tutorials/workload-rebalancer), steps 3 and 6, unchanged.
KARMADA_REBALANCER = """
apiVersion: apps.karmada.io/v1alpha1
kind: WorkloadRebalancer
metadata:
  name: demo
spec:
  workloads:
    - apiVersion: apps/v1
      kind: Deployment
      name: foo
      namespace: default
"""

KARMADA_REBALANCER_WITH_TTL = """
apiVersion: apps.karmada.io/v1alpha1
kind: WorkloadRebalancer
metadata:
  name: demo
spec:
  ttlSecondsAfterFinished: 300
  workloads:
    - apiVersion: apps/v1
      kind: Deployment
      name: foo
      namespace: default
"""

# What Karmada's documentation shows the status becomes (step 4).
KARMADA_REBALANCER_STATUS = """
apiVersion: apps.karmada.io/v1alpha1
kind: WorkloadRebalancer
metadata:
  creationTimestamp: "2024-05-25T09:49:51Z"
  generation: 1
  name: demo
spec:
  workloads:
  - apiVersion: apps/v1
    kind: Deployment
    name: foo
    namespace: default
status:
  finishTime: "2024-05-25T09:49:51Z"
  observedGeneration: 1
  observedWorkloads:
  - result: Successful
    workload:
      apiVersion: apps/v1
      kind: Deployment
      name: foo
      namespace: default
"""


@pytest.mark.parametrize(
    "text", [KARMADA_REBALANCER, KARMADA_REBALANCER_WITH_TTL], ids=["rebalancer", "ttl"]
)
def test_karmada_workload_rebalancers_round_trip(text: str) -> None:
    document = yaml.safe_load(text)
    api_kind = api_kind_of_document(document)
    assert api_kind is not None and api_kind.name == "WorkloadRebalancer"
    assert not api_kind.namespaced
    message = to_message(api_kind, document)
    validation.check_workload_rebalancer(message)
    assert json_format.MessageToDict(message) == document


def test_karmada_workload_rebalancer_status_reads_as_karmada_writes_it() -> None:
    document = yaml.safe_load(KARMADA_REBALANCER_STATUS)
    api_kind = api_kind_of_document(document)
    assert api_kind is not None
    message = to_message(api_kind, document)
    status = message.status
    assert status.observed_generation == 1
    assert status.finish_time.ToJsonString() == "2024-05-25T09:49:51Z"
    (observed,) = status.observed_workloads
    assert (observed.result, observed.workload.name, observed.workload.namespace) == (
        "Successful",
        "foo",
        "default",
    )
    # What the control plane prints reads back as the same object.
    assert to_message(api_kind, json_format.MessageToDict(message)) == message


# Karmada's documentation (userguide/failover/cluster-taint-management and the v1.14
# release notes), unchanged.
KARMADA_TAINT_POLICY = """
apiVersion: policy.karmada.io/v1alpha1
kind: ClusterTaintPolicy
metadata:
  name: detect-cluster-notready
spec:
  targetClusters:
    clusterNames:
    - member1
    - member2
  addOnConditions:
  - conditionType: Ready
    operator: NotIn
    statusValues:
    - "True"
  removeOnConditions:
  - conditionType: Ready
    operator: In
    statusValues:
    - "True"
  taints:
  - key: not-ready
    effect: NoSchedule
"""

KARMADA_TAINT_POLICY_TWO_CONDITIONS = """
apiVersion: policy.karmada.io/v1alpha1
kind: ClusterTaintPolicy
metadata:
  name: detect-cluster-notready
spec:
  targetClusters:
    clusterNames:
    - member1
    - member2
  addOnConditions:
  - conditionType: Ready
    operator: NotIn
    statusValues:
    - "True"
  - conditionType: NetworkAvailable
    operator: NotIn
    statusValues:
    - "True"
  removeOnConditions:
  - conditionType: Ready
    operator: In
    statusValues:
    - "True"
  - conditionType: NetworkAvailable
    operator: In
    statusValues:
    - "True"
  taints:
  - key: not-ready
    effect: NoSchedule
  - key: not-ready
    effect: NoExecute
"""


@pytest.mark.parametrize(
    "text",
    [KARMADA_TAINT_POLICY, KARMADA_TAINT_POLICY_TWO_CONDITIONS],
    ids=["user-guide", "release-notes"],
)
def test_karmada_cluster_taint_policies_round_trip(text: str) -> None:
    document = yaml.safe_load(text)
    api_kind = api_kind_of_document(document)
    assert api_kind is not None and api_kind.name == "ClusterTaintPolicy"
    assert not api_kind.namespaced
    message = to_message(api_kind, document)
    validation.check_cluster_taint_policy(message)
    assert json_format.MessageToDict(message) == document
    assert message.spec.add_on_conditions[0].status_values == ["True"]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        pytest.param(
            ("schedulePriority", "priorityClassSource"),
            "PodPriorityClass",
            "spec.schedulePriority.priorityClassSource",
            id="pod-priority-class",
        ),
        pytest.param(
            ("schedulePriority", "priorityClassSource"),
            "FederatedPriorityClass",
            "spec.schedulePriority.priorityClassSource",
            id="federated-priority-class",
        ),
        pytest.param(
            ("schedulePriority", "priorityClassName"),
            "",
            "spec.schedulePriority.priorityClassName",
            id="no-class-named",
        ),
        pytest.param(
            ("activationPreference",), "Eager", "spec.activationPreference", id="not-lazy"
        ),
    ],
)
def test_what_schedule_priority_and_activation_do_not_take_is_refused(
    path: tuple[str, ...], value: str, field: str
) -> None:
    document = yaml.safe_load(FULL_KARMADA_POLICY)
    del document["spec"]["placement"]["workloadAffinity"]
    parent = document["spec"]
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    message = to_message(API_KINDS[1], document)
    with pytest.raises(Invalid) as refused:
        validation.check_propagation_spec(message.spec, policy_namespace="default")
    assert refused.value.field == field


OVERFLOW = """
apiVersion: policy.karmada.io/v1alpha1
kind: PropagationPolicy
metadata:
  name: burst
  namespace: default
spec:
  resourceSelectors:
    - apiVersion: apps/v1
      kind: Deployment
  placement:
    clusterAffinities:
      - affinityName: idc
        clusterNames: [member1]
        overflowAffinities:
          - affinityName: cloud-1
            clusterNames: [member2]
          - affinityName: cloud-2
            labelSelector:
              matchLabels: {provider: aws}
    replicaScheduling:
      replicaSchedulingType: Divided
      replicaDivisionPreference: Weighted
      weightPreference:
        dynamicWeight: AvailableReplicas
"""


def test_karmadas_overflow_yaml_is_accepted_unchanged() -> None:
    document = yaml.safe_load(OVERFLOW)
    message = to_message(API_KINDS[1], document)
    assert json_format.MessageToDict(message) == document
    validation.check_propagation_spec(message.spec, policy_namespace="default")


def _overflow_refusal(change: Any) -> Invalid:
    document = yaml.safe_load(OVERFLOW)
    change(document["spec"]["placement"])
    message = to_message(API_KINDS[1], document)
    with pytest.raises(Invalid) as refused:
        validation.check_propagation_spec(message.spec, policy_namespace="default")
    return refused.value


def _set(path: str, value: Any) -> Any:
    def change(placement: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        parent: Any = placement
        for step in parents:
            parent = parent[int(step)] if step.isdigit() else parent[step]
        parent[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        pytest.param(
            lambda p: p.pop("replicaScheduling"),
            "spec.placement.clusterAffinities[0].overflowAffinities",
            "dynamic weight or aggregated",
            id="duplicated",
        ),
        pytest.param(
            _set("replicaScheduling.weightPreference", {"staticWeightList": []}),
            "spec.placement.clusterAffinities[0].overflowAffinities",
            "dynamic weight or aggregated",
            id="static-weights",
        ),
        pytest.param(
            _set("clusterAffinities.0.clusterNames", []),
            "spec.placement.clusterAffinities[0].overflowAffinities",
            "inline ClusterAffinity",
            id="group-selects-nothing",
        ),
        pytest.param(
            _set("clusterAffinities.0.overflowAffinities.1.affinityName", "cloud-1"),
            "spec.placement.clusterAffinities[0].overflowAffinities[1].affinityName",
            "must be unique",
            id="tier-names-repeat",
        ),
        pytest.param(
            _set("clusterAffinities.0.overflowAffinities.0.affinityName", "idc"),
            "spec.placement.clusterAffinities[0].overflowAffinities[0].affinityName",
            "primary group",
            id="tier-named-like-its-group",
        ),
        pytest.param(
            _set("clusterAffinities.0.overflowAffinities.0.affinityName", ""),
            "spec.placement.clusterAffinities[0].overflowAffinities[0].affinityName",
            "required",
            id="tier-unnamed",
        ),
    ],
)
def test_karmadas_overflow_rules(change: Any, field: str, problem: str) -> None:
    refused = _overflow_refusal(change)
    assert refused.field == field
    assert problem in str(refused)


def test_a_name_on_a_plain_cluster_affinity_is_refused() -> None:
    document = yaml.safe_load(AFFINITIES)
    document["spec"]["placement"] = {
        "clusterAffinity": {"affinityName": "x", "clusterNames": ["member1"]}
    }
    message = to_message(API_KINDS[2], document)
    with pytest.raises(Invalid) as refused:
        validation.check_propagation_spec(message.spec, policy_namespace="")
    assert refused.value.field == "spec.placement.clusterAffinity.affinityName"
