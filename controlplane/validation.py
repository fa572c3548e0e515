"""Validation of everything a caller can write; each error names the field.

Karmada's string enumerations are checked here, since the proto keeps them as
strings for JSON compatibility.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from archipel.v1alpha1 import cluster_pb2, meta_pb2, override_pb2, policy_pb2
from controlplane import selectors
from controlplane.errors import Invalid
from controlplane.kinds import Manifest

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Names of cluster-scoped objects such as ClusterRoles may hold ':' (system:...).
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.:@]*[A-Za-z0-9])?$")

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
SPREAD_FIELDS = ("cluster", "region", "zone", "provider")
FIELD_SELECTOR_KEYS = ("provider", "region", "zone")

# Kinds that are cluster-scoped in every Kubernetes cluster; anything else is
# treated as namespaced, and defaults to the "default" namespace as kubectl does.
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "RuntimeClass",
        "CSIDriver",
        "CSINode",
        "APIService",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "VolumeSnapshotClass",
        "FlowSchema",
        "PriorityLevelConfiguration",
    }
)


def check_choice(value: str, choices: tuple[str, ...], field: str) -> None:
    if value and value not in choices:
        raise Invalid(field, f"must be one of {', '.join(choices)}, not {value!r}")


def check_dns_label(value: str, field: str) -> None:
    if not value:
        raise Invalid(field, "required")
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise Invalid(field, f"{value!r} must be a lowercase DNS label (a-z, 0-9, '-')")


def check_name(value: str, field: str = "metadata.name") -> None:
    if not value:
        raise Invalid(field, "required")
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise Invalid(field, f"{value!r} must be a lowercase DNS subdomain (a-z, 0-9, '-', '.')")


def check_object_name(value: str, field: str = "metadata.name") -> None:
    """Any Kubernetes object's name (templates may be ClusterRoles named system:...)."""
    if not value:
        raise Invalid(field, "required")
    if len(value) > 253 or not _OBJECT_NAME.match(value):
        raise Invalid(field, f"{value!r} is not a valid object name")


def check_metadata(meta: meta_pb2.ObjectMeta, *, namespaced: bool) -> None:
    check_name(meta.name)
    if namespaced:
        check_dns_label(meta.namespace, "metadata.namespace")
    elif meta.namespace:
        raise Invalid("metadata.namespace", "must be empty: the kind is cluster-scoped")
    for key, value in meta.labels.items():
        selectors.parse(f"{key}={value}", field=f"metadata.labels[{key}]")


def _check_affinity(
    affinity: policy_pb2.ClusterAffinity | policy_pb2.ClusterAffinityTerm, field: str
) -> None:
    for index, name in enumerate(affinity.cluster_names):
        check_dns_label(name, f"{field}.clusterNames[{index}]")
    for index, name in enumerate(affinity.exclude):
        check_dns_label(name, f"{field}.exclude[{index}]")
    if affinity.HasField("label_selector"):
        selectors.from_proto(affinity.label_selector, field=f"{field}.labelSelector")
    for index, expression in enumerate(affinity.field_selector.match_expressions):
        where = f"{field}.fieldSelector.matchExpressions[{index}]"
        check_choice(expression.key, FIELD_SELECTOR_KEYS, f"{where}.key")
        if not expression.key:
            raise Invalid(f"{where}.key", "required")
        check_choice(expression.operator, ("In", "NotIn"), f"{where}.operator")
        if not expression.operator:
            raise Invalid(f"{where}.operator", "required")


def check_placement(placement: policy_pb2.Placement, field: str) -> None:
    if placement.HasField("cluster_affinity") and len(placement.cluster_affinities):
        raise Invalid(f"{field}.clusterAffinities", "cannot be used with clusterAffinity")
    if placement.HasField("cluster_affinity"):
        _check_affinity(placement.cluster_affinity, f"{field}.clusterAffinity")
    seen = set()
    for index, term in enumerate(placement.cluster_affinities):
        where = f"{field}.clusterAffinities[{index}]"
        if not term.affinity_name:
            raise Invalid(f"{where}.affinityName", "required")
        if term.affinity_name in seen:
            raise Invalid(f"{where}.affinityName", f"{term.affinity_name!r} is used twice")
        seen.add(term.affinity_name)
        _check_affinity(term, where)
    for index, toleration in enumerate(placement.cluster_tolerations):
        where = f"{field}.clusterTolerations[{index}]"
        check_choice(toleration.operator, ("Equal", "Exists"), f"{where}.operator")
        check_choice(toleration.effect, TAINT_EFFECTS, f"{where}.effect")
        if toleration.operator == "Exists" and toleration.value:
            raise Invalid(f"{where}.value", "must be empty when operator is Exists")
    by_field = False
    for index, constraint in enumerate(placement.spread_constraints):
        where = f"{field}.spreadConstraints[{index}]"
        if constraint.spread_by_field and constraint.spread_by_label:
            raise Invalid(where, "spreadByField and spreadByLabel are mutually exclusive")
        if not constraint.spread_by_field and not constraint.spread_by_label:
            raise Invalid(where, "one of spreadByField or spreadByLabel is required")
        check_choice(constraint.spread_by_field, SPREAD_FIELDS, f"{where}.spreadByField")
        by_field = by_field or bool(constraint.spread_by_field)
        if constraint.min_groups < 0 or constraint.max_groups < 0:
            raise Invalid(where, "minGroups and maxGroups must not be negative")
        if constraint.max_groups and constraint.min_groups > constraint.max_groups:
            raise Invalid(f"{where}.minGroups", "must not exceed maxGroups")
    if by_field and not any(c.spread_by_field == "cluster" for c in placement.spread_constraints):
        raise Invalid(
            f"{field}.spreadConstraints",
            "spreading by region, zone or provider needs a cluster entry",
        )
    scheduling = placement.replica_scheduling
    where = f"{field}.replicaScheduling"
    check_choice(
        scheduling.replica_scheduling_type,
        ("Duplicated", "Divided"),
        f"{where}.replicaSchedulingType",
    )
    check_choice(
        scheduling.replica_division_preference,
        ("Aggregated", "Weighted"),
        f"{where}.replicaDivisionPreference",
    )
    preference = scheduling.weight_preference
    check_choice(
        preference.dynamic_weight, ("AvailableReplicas",), f"{where}.weightPreference.dynamicWeight"
    )
    if preference.dynamic_weight and len(preference.static_weight_list):
        raise Invalid(
            f"{where}.weightPreference", "staticWeightList and dynamicWeight are mutually exclusive"
        )
    for index, weight in enumerate(preference.static_weight_list):
        item = f"{where}.weightPreference.staticWeightList[{index}]"
        if weight.weight < 1:
            raise Invalid(f"{item}.weight", "must be at least 1")
        _check_affinity(weight.target_cluster, f"{item}.targetCluster")
    affinity = placement.workload_affinity
    if affinity.HasField("affinity") and not affinity.affinity.group_by_label_key:
        raise Invalid(f"{field}.workloadAffinity.affinity.groupByLabelKey", "required")
    if affinity.HasField("anti_affinity") and not affinity.anti_affinity.group_by_label_key:
        raise Invalid(f"{field}.workloadAffinity.antiAffinity.groupByLabelKey", "required")


def _check_resource_selectors(
    selectors_: Sequence[policy_pb2.ResourceSelector], *, policy_namespace: str, kind: str
) -> None:
    for index, selector in enumerate(selectors_):
        where = f"spec.resourceSelectors[{index}]"
        if not selector.api_version:
            raise Invalid(f"{where}.apiVersion", "required")
        if not selector.kind:
            raise Invalid(f"{where}.kind", "required")
        if policy_namespace and selector.namespace and selector.namespace != policy_namespace:
            raise Invalid(
                f"{where}.namespace",
                f"a namespaced {kind} only selects objects in its own namespace "
                f"{policy_namespace!r}",
            )
        if selector.HasField("label_selector"):
            selectors.from_proto(selector.label_selector, field=f"{where}.labelSelector")


def check_propagation_spec(spec: policy_pb2.PropagationSpec, *, policy_namespace: str) -> None:
    if not len(spec.resource_selectors):
        raise Invalid("spec.resourceSelectors", "at least one selector is required")
    _check_resource_selectors(
        spec.resource_selectors, policy_namespace=policy_namespace, kind="PropagationPolicy"
    )
    if spec.HasField("placement"):
        check_placement(spec.placement, "spec.placement")
    check_choice(spec.preemption, ("Always", "Never"), "spec.preemption")
    check_choice(spec.conflict_resolution, ("Abort", "Overwrite"), "spec.conflictResolution")
    check_choice(spec.activation_preference, ("Lazy",), "spec.activationPreference")
    purge = ("Directly", "Gracefully", "Never")
    check_choice(spec.failover.application.purge_mode, purge, "spec.failover.application.purgeMode")
    check_choice(
        spec.failover.cluster.purge_mode,
        ("Directly", "Gracefully"),
        "spec.failover.cluster.purgeMode",
    )
    check_choice(
        spec.schedule_priority.priority_class_source,
        ("KubePriorityClass", "PodPriorityClass", "FederatedPriorityClass"),
        "spec.schedulePriority.priorityClassSource",
    )
    for index, name in enumerate(spec.suspension.dispatching_on_clusters.cluster_names):
        check_dns_label(name, f"spec.suspension.dispatchingOnClusters.clusterNames[{index}]")


def check_member_cluster(cluster: cluster_pb2.MemberCluster) -> None:
    check_metadata(cluster.metadata, namespaced=False)
    check_dns_label(cluster.metadata.name, "metadata.name")
    check_choice(cluster.spec.sync_mode, ("Pull",), "spec.syncMode")
    for index, taint in enumerate(cluster.spec.taints):
        where = f"spec.taints[{index}]"
        if not taint.key:
            raise Invalid(f"{where}.key", "required")
        if taint.effect not in TAINT_EFFECTS:
            raise Invalid(f"{where}.effect", f"must be one of {', '.join(TAINT_EFFECTS)}")


def check_template(manifest: Any) -> Manifest:
    """A resource template; returns it with the namespace defaulted where needed."""
    if not isinstance(manifest, dict):
        raise Invalid("manifest", "must be a Kubernetes object")
    api_version = manifest.get("apiVersion")
    kind = manifest.get("kind")
    if not api_version or not isinstance(api_version, str):
        raise Invalid("apiVersion", "required")
    if not kind or not isinstance(kind, str):
        raise Invalid("kind", "required")
    metadata = manifest.get("metadata")
    if not isinstance(metadata, dict):
        raise Invalid("metadata", "required")
    name = metadata.get("name")
    if not isinstance(name, str):
        raise Invalid("metadata.name", "required")
    check_object_name(name)
    namespace = metadata.get("namespace", "")
    if kind in CLUSTER_SCOPED_KINDS:
        if namespace:
            raise Invalid("metadata.namespace", f"must be empty: {kind} is cluster-scoped")
    else:
        if not namespace:
            metadata["namespace"] = namespace = "default"
        if not isinstance(namespace, str):
            raise Invalid("metadata.namespace", "must be a string")
        check_dns_label(namespace, "metadata.namespace")
    for field in ("labels", "annotations"):
        values = metadata.get(field, {})
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()
        ):
            raise Invalid(f"metadata.{field}", "must map strings to strings")
    for key, value in metadata.get("labels", {}).items():
        selectors.parse(f"{key}={value}", field=f"metadata.labels[{key}]")
    if namespace and kind == "Namespace":
        raise Invalid("metadata.namespace", "must be empty for a Namespace")
    return manifest


def _check_overriders(overriders: override_pb2.Overriders, field: str) -> None:
    for index, plain in enumerate(overriders.plaintext):
        where = f"{field}.plaintext[{index}]"
        check_choice(plain.operator, ("add", "remove", "replace"), f"{where}.operator")
        if not plain.operator:
            raise Invalid(f"{where}.operator", "required")
        if not plain.path.startswith("/"):
            raise Invalid(f"{where}.path", "must be a JSON pointer starting with '/'")
        if plain.operator != "remove" and not plain.HasField("value"):
            raise Invalid(f"{where}.value", f"required for {plain.operator}")
    for index, image in enumerate(overriders.image_overrider):
        where = f"{field}.imageOverrider[{index}]"
        check_choice(image.component, ("Registry", "Repository", "Tag"), f"{where}.component")
        if not image.component:
            raise Invalid(f"{where}.component", "required")
        check_choice(image.operator, ("add", "remove", "replace"), f"{where}.operator")
        if not image.operator:
            raise Invalid(f"{where}.operator", "required")
        if image.predicate.path and not image.predicate.path.startswith("/"):
            raise Invalid(f"{where}.predicate.path", "must be a JSON pointer starting with '/'")
    for name in ("command_overrider", "args_overrider"):
        camel = "commandOverrider" if name == "command_overrider" else "argsOverrider"
        for index, item in enumerate(getattr(overriders, name)):
            where = f"{field}.{camel}[{index}]"
            if not item.container_name:
                raise Invalid(f"{where}.containerName", "required")
            check_choice(item.operator, ("add", "remove"), f"{where}.operator")
            if not item.operator:
                raise Invalid(f"{where}.operator", "required")
    for name in ("labels_overrider", "annotations_overrider"):
        camel = "labelsOverrider" if name == "labels_overrider" else "annotationsOverrider"
        for index, item in enumerate(getattr(overriders, name)):
            where = f"{field}.{camel}[{index}]"
            check_choice(item.operator, ("add", "remove", "replace"), f"{where}.operator")
            if not item.operator:
                raise Invalid(f"{where}.operator", "required")
    for index, item in enumerate(overriders.field_overrider):
        where = f"{field}.fieldOverrider[{index}]"
        if not item.field_path.startswith("/"):
            raise Invalid(f"{where}.fieldPath", "must be a JSON pointer starting with '/'")
        if len(item.json) and len(item.yaml):
            raise Invalid(where, "json and yaml are mutually exclusive")
        for kind, operators in (
            ("json", [o.operator for o in item.json]),
            ("yaml", [o.operator for o in item.yaml]),
        ):
            for number, operator in enumerate(operators):
                check_choice(
                    operator,
                    ("add", "remove", "replace"),
                    f"{where}.{kind}[{number}].operator",
                )


def check_override_spec(spec: override_pb2.OverrideSpec, *, policy_namespace: str) -> None:
    _check_resource_selectors(
        spec.resource_selectors, policy_namespace=policy_namespace, kind="OverridePolicy"
    )
    for index, rule in enumerate(spec.override_rules):
        if rule.HasField("target_cluster"):
            _check_affinity(rule.target_cluster, f"spec.overrideRules[{index}].targetCluster")
        _check_overriders(rule.overriders, f"spec.overrideRules[{index}].overriders")
    if spec.HasField("target_cluster"):
        _check_affinity(spec.target_cluster, "spec.targetCluster")
    _check_overriders(spec.overriders, "spec.overriders")
