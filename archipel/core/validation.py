"""Validation of everything a caller can write; each error names the field.

Karmada's string enumerations are checked here, since the proto keeps them as
strings for JSON compatibility.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf import message as pb_message

from archipel import interpreter, jsonpath, limits
from archipel.core import kinds, scopes, selectors, workloads
from archipel.core.errors import Invalid
from archipel.core.kinds import Manifest
from archipel.v1alpha1 import apps_pb2, cluster_pb2, meta_pb2, override_pb2, policy_pb2, work_pb2

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Kubernetes' rule for kinds (CRD names.kind): an identifier.
_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
# Control characters never belong in a name, even where Kubernetes allows any path segment.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
SPREAD_FIELDS = ("cluster", "region", "zone", "provider")
FIELD_SELECTOR_KEYS = ("provider", "region", "zone")

# Kinds whose names Kubernetes checks as path segments rather than DNS subdomains (RBAC
# objects are named system:controller:... and the like); everything else is stricter.
PATH_SEGMENT_NAMED = frozenset(
    ("rbac.authorization.k8s.io", kind)
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
)
# Kinds whose names Kubernetes checks as DNS labels (RFC 1123) or RFC 1035 labels.
DNS_LABEL_NAMED = frozenset({("", "Namespace")})
DNS_1035_NAMED = frozenset({("", "Service")})

# Which fields hold replica counts is the interpreter's knowledge (built-in kinds only:
# a customization's paths are checked when it runs, and fail on the binding).
BUILTIN_INTERPRETERS = interpreter.Registry()


def check_choice(value: str, choices: tuple[str, ...], field: str) -> None:
    if value and value not in choices:
        raise Invalid(field, f"must be one of {', '.join(choices)}, not {limits.echo(value)}")


def _check_format(value: str, field: str, pattern: re.Pattern[str], most: int, rule: str) -> None:
    """``value`` is required, at most ``most`` characters and matches ``pattern``."""
    if not value:
        raise Invalid(field, "required")
    if len(value) > most or not pattern.match(value):
        raise Invalid(field, f"{limits.echo(value)} must be {rule} (at most {most} characters)")


def check_dns_label(value: str, field: str) -> None:
    _check_format(
        value, field, _DNS_LABEL, limits.MAX_LABEL_CHARS, "a lowercase DNS label (a-z, 0-9, '-')"
    )


def check_dns_1035_label(value: str, field: str) -> None:
    _check_format(
        value,
        field,
        _DNS_1035_LABEL,
        limits.MAX_LABEL_CHARS,
        "a lowercase RFC 1035 label (a-z, 0-9, '-', starting with a letter)",
    )


def check_name(value: str, field: str = "metadata.name") -> None:
    _check_format(
        value,
        field,
        selectors.DNS_SUBDOMAIN,
        limits.MAX_NAME_CHARS,
        "a lowercase DNS subdomain (a-z, 0-9, '-', '.')",
    )


def check_path_segment(value: str, field: str = "metadata.name") -> None:
    """Kubernetes' loosest name rule (RBAC objects): anything that is one URL path segment."""
    if not value:
        raise Invalid(field, "required")
    if (
        len(value) > limits.MAX_NAME_CHARS
        or value in (".", "..")
        or "/" in value
        or "%" in value
        or _CONTROL.search(value)
    ):
        raise Invalid(
            field,
            f"{limits.echo(value)} is not a valid name: at most {limits.MAX_NAME_CHARS} "
            "characters, not '.' or '..', without '/', '%' or control characters",
        )


def check_object_name(value: str, field: str = "metadata.name") -> None:
    """A name derived from any template's name (bindings): the loosest rule applies."""
    check_path_segment(value, field)


def check_template_name(value: str, api_version: str, kind: str, field: str) -> None:
    """A template's name, by the rule kube-apiserver applies to its kind."""
    group, _ = kinds.split_api_version(api_version)
    if (group, kind) in PATH_SEGMENT_NAMED:
        check_path_segment(value, field)
    elif (group, kind) in DNS_LABEL_NAMED:
        check_dns_label(value, field)
    elif (group, kind) in DNS_1035_NAMED:
        check_dns_1035_label(value, field)
    else:
        check_name(value, field)


def check_work_name(value: str, field: str = "name") -> None:
    """``<template namespace or _>.<binding name>``, as the binding controller names works."""
    scope, dot, binding = value.partition(".")
    if not dot or not binding:
        raise Invalid(
            field, f"{limits.echo(value)} is not a work name (<namespace or _>.<binding name>)"
        )
    if scope != kinds.CLUSTER_SCOPE:
        check_dns_label(scope, field)
    check_object_name(binding, field)


def check_kind(value: Any, field: str = "kind") -> str:
    if not value or not isinstance(value, str):
        raise Invalid(field, "required")
    if len(value) > limits.MAX_LABEL_CHARS or not _KIND.match(value):
        raise Invalid(
            field,
            f"{limits.echo(value)} must be a letter followed by letters and digits, at most "
            f"{limits.MAX_LABEL_CHARS} characters",
        )
    return value


def check_api_version(value: Any, field: str = "apiVersion") -> str:
    """``<group>/<version>`` or ``<version>``: a DNS subdomain and a DNS label."""
    if not value or not isinstance(value, str):
        raise Invalid(field, "required")
    group, slash, version = value.partition("/")
    if not slash:
        group, version = "", value
    elif not selectors.is_dns_subdomain(group):
        raise Invalid(
            field,
            f"{limits.echo(value)}: the group must be a lowercase DNS subdomain "
            f"(at most {limits.MAX_NAME_CHARS} characters)",
        )
    if len(version) > limits.MAX_LABEL_CHARS or not _DNS_LABEL.match(version):
        raise Invalid(
            field,
            f"{limits.echo(value)} must be <group>/<version> or <version>, the version a "
            "lowercase DNS label",
        )
    return value


def _check_labels(labels: Mapping[str, str], field: str) -> None:
    for key, value in labels.items():
        selectors.check_qualified_name(key, field)
        selectors.check_label_value(value, f"{field}[{limits.echo(key)}]")


def _check_annotations(annotations: Mapping[str, str], field: str) -> None:
    total = 0
    for key, value in annotations.items():
        selectors.check_qualified_name(key, field, what="annotation key")
        total += len(key.encode()) + len(value.encode())
    if total > limits.MAX_ANNOTATIONS_BYTES:
        raise Invalid(
            field,
            f"{total} bytes in all, over the limit of {limits.MAX_ANNOTATIONS_BYTES} bytes",
        )


def check_metadata(meta: meta_pb2.ObjectMeta, *, namespaced: bool) -> None:
    check_name(meta.name)
    if namespaced:
        check_dns_label(meta.namespace, "metadata.namespace")
    elif meta.namespace:
        raise Invalid("metadata.namespace", "must be empty: the kind is cluster-scoped")
    _check_labels(meta.labels, "metadata.labels")
    _check_annotations(meta.annotations, "metadata.annotations")


def _check_affinity(
    affinity: policy_pb2.ClusterAffinity | policy_pb2.ClusterAffinityTerm,
    field: str,
    *,
    overflow: bool = False,
) -> None:
    # ClusterAffinity carries a name only as an overflow tier (Karmada's
    # OverflowClusterAffinity); elsewhere a name would be silently meaningless.
    if isinstance(affinity, policy_pb2.ClusterAffinity) and affinity.affinity_name and not overflow:
        raise Invalid(f"{field}.affinityName", "is only for overflowAffinities")
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


def _check_overflow(
    placement: policy_pb2.Placement, term: policy_pb2.ClusterAffinityTerm, field: str
) -> None:
    """Karmada's rules for a group's overflowAffinities (v1.18)."""
    if not len(term.overflow_affinities):
        return
    strategy = placement.replica_scheduling
    if not (
        strategy.replica_scheduling_type in ("", "Divided")
        and placement.HasField("replica_scheduling")
        and (
            strategy.replica_division_preference == "Aggregated"
            or strategy.weight_preference.dynamic_weight
        )
    ):
        raise Invalid(
            f"{field}.overflowAffinities",
            "can only be used together with dynamic weight or aggregated scheduling",
        )
    if not (
        term.HasField("label_selector")
        or len(term.field_selector.match_expressions)
        or len(term.cluster_names)
        or len(term.exclude)
    ):
        raise Invalid(
            f"{field}.overflowAffinities",
            "can only be used together with the inline ClusterAffinity",
        )
    names = {term.affinity_name}
    for index, tier in enumerate(term.overflow_affinities):
        where = f"{field}.overflowAffinities[{index}]"
        if not tier.affinity_name:
            raise Invalid(f"{where}.affinityName", "required")
        if tier.affinity_name in names:
            raise Invalid(
                f"{where}.affinityName",
                f"{limits.echo(tier.affinity_name)}: an overflow affinity name must be unique "
                "and must not duplicate the primary group's affinityName",
            )
        names.add(tier.affinity_name)
        _check_affinity(tier, where, overflow=True)


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
            raise Invalid(
                f"{where}.affinityName", f"{limits.echo(term.affinity_name)} is used twice"
            )
        seen.add(term.affinity_name)
        _check_affinity(term, where)
        _check_overflow(placement, term, where)
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
    if placement.HasField("workload_affinity"):
        # Accepted and ignored would be worse than refused: a workload placed with no
        # regard for its group is silently wrong.
        raise Invalid(f"{field}.workloadAffinity", _NOT_SUPPORTED)


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
                f"{limits.echo(policy_namespace)}",
            )
        if selector.HasField("label_selector"):
            selectors.from_proto(selector.label_selector, field=f"{where}.labelSelector")


def _check_application_failover(
    application: policy_pb2.ApplicationFailoverBehavior, field: str
) -> None:
    conditions = application.decision_conditions
    if conditions.HasField("toleration_seconds") and conditions.toleration_seconds < 0:
        raise Invalid(f"{field}.decisionConditions.tolerationSeconds", "must not be negative")
    if application.HasField("grace_period_seconds"):
        if application.grace_period_seconds <= 0:
            raise Invalid(f"{field}.gracePeriodSeconds", "must be positive")
        if (application.purge_mode or "Gracefully") != "Gracefully":
            # As Karmada: only a graceful purge waits for anything.
            raise Invalid(f"{field}.gracePeriodSeconds", "is only for purgeMode Gracefully")
    _check_state_preservation(application.state_preservation, f"{field}.statePreservation")


def _check_state_preservation(preservation: policy_pb2.StatePreservation, field: str) -> None:
    for index, rule in enumerate(preservation.rules):
        where = f"{field}.rules[{index}]"
        selectors.check_qualified_name(rule.alias_label_name, f"{where}.aliasLabelName")
        if not rule.json_path:
            raise Invalid(f"{where}.jsonPath", "is required")
        try:
            jsonpath.compile(rule.json_path)
        except jsonpath.JSONPathError as error:
            raise Invalid(f"{where}.jsonPath", str(error)) from error


DEFAULT_SCHEDULER = "default-scheduler"
_NOT_SUPPORTED = "not supported yet (see docs/karmada-fields.md)"


def _check_schedule_priority(priority: policy_pb2.SchedulePriority, field: str) -> None:
    source = priority.priority_class_source
    if source in ("PodPriorityClass", "FederatedPriorityClass"):
        raise Invalid(
            f"{field}.priorityClassSource",
            f"{source}: {_NOT_SUPPORTED} (KubePriorityClass is: a PriorityClass template "
            "in the control plane)",
        )
    check_choice(source, ("KubePriorityClass",), f"{field}.priorityClassSource")
    # A PriorityClass is named like any cluster-scoped object.
    check_name(priority.priority_class_name, f"{field}.priorityClassName")


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
    if spec.scheduler_name not in ("", DEFAULT_SCHEDULER):
        raise Invalid(
            "spec.schedulerName",
            f"{limits.echo(spec.scheduler_name)}: Archipel has one scheduler, "
            f"{DEFAULT_SCHEDULER!r}; a binding for another would never be scheduled",
        )
    purge = ("Directly", "Gracefully", "Never")
    check_choice(spec.failover.application.purge_mode, purge, "spec.failover.application.purgeMode")
    _check_application_failover(spec.failover.application, "spec.failover.application")
    _check_state_preservation(
        spec.failover.cluster.state_preservation, "spec.failover.cluster.statePreservation"
    )
    check_choice(
        spec.failover.cluster.purge_mode,
        ("Directly", "Gracefully"),
        "spec.failover.cluster.purgeMode",
    )
    if spec.HasField("schedule_priority"):
        _check_schedule_priority(spec.schedule_priority, "spec.schedulePriority")
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


def check_workload_rebalancer(rebalancer: apps_pb2.WorkloadRebalancer) -> None:
    """Karmada's rules for a WorkloadRebalancer: at least one workload, each with its
    apiVersion, kind and name (a namespace, when given, is a DNS label), and a TTL that
    is not negative."""
    check_metadata(rebalancer.metadata, namespaced=False)
    spec = rebalancer.spec
    if not len(spec.workloads):
        raise Invalid("spec.workloads", "at least one workload is required")
    for index, workload in enumerate(spec.workloads):
        where = f"spec.workloads[{index}]"
        check_api_version(workload.api_version, f"{where}.apiVersion")
        check_kind(workload.kind, f"{where}.kind")
        # The loosest rule: the workload may be any template, RBAC objects included.
        check_object_name(workload.name, f"{where}.name")
        if workload.namespace:
            check_dns_label(workload.namespace, f"{where}.namespace")
    if spec.HasField("ttl_seconds_after_finished") and spec.ttl_seconds_after_finished < 0:
        raise Invalid(
            "spec.ttlSecondsAfterFinished",
            f"must not be negative, not {spec.ttl_seconds_after_finished}",
        )


# What a ClusterTaintPolicy may say (Karmada's rules for it).
TAINT_POLICY_EFFECTS = ("NoSchedule", "NoExecute")
MATCH_CONDITION_OPERATORS = ("In", "NotIn")


def check_cluster_taint_policy(policy: policy_pb2.ClusterTaintPolicy) -> None:
    """Karmada's rules for a ClusterTaintPolicy: a target cluster affinity as a
    placement's, at least one of addOnConditions and removeOnConditions, each entry
    with a condition type, operator In or NotIn and at least one status value, and at
    least one taint, each with a key and effect NoSchedule or NoExecute."""
    check_metadata(policy.metadata, namespaced=False)
    spec = policy.spec
    if spec.HasField("target_clusters"):
        _check_affinity(spec.target_clusters, "spec.targetClusters")
    if not len(spec.add_on_conditions) and not len(spec.remove_on_conditions):
        raise Invalid(
            "spec.addOnConditions", "at least one of addOnConditions and removeOnConditions"
        )
    for field, conditions in (
        ("spec.addOnConditions", spec.add_on_conditions),
        ("spec.removeOnConditions", spec.remove_on_conditions),
    ):
        for index, condition in enumerate(conditions):
            where = f"{field}[{index}]"
            if not condition.condition_type:
                raise Invalid(f"{where}.conditionType", "required")
            if condition.operator not in MATCH_CONDITION_OPERATORS:
                raise Invalid(
                    f"{where}.operator",
                    f"must be In or NotIn, not {limits.echo(condition.operator)}",
                )
            if not len(condition.status_values):
                raise Invalid(f"{where}.statusValues", "at least one status value")
            for position, value in enumerate(condition.status_values):
                if not value:
                    raise Invalid(f"{where}.statusValues[{position}]", "must not be empty")
    if not len(spec.taints):
        raise Invalid("spec.taints", "at least one taint")
    for index, taint in enumerate(spec.taints):
        where = f"spec.taints[{index}]"
        if not taint.key:
            raise Invalid(f"{where}.key", "required")
        if taint.effect not in TAINT_POLICY_EFFECTS:
            raise Invalid(
                f"{where}.effect",
                f"must be NoSchedule or NoExecute, not {limits.echo(taint.effect)}",
            )


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_segment(key: str) -> str:
    """A mapping's key as a step of a field path: ``.key`` for a plain one, else quoted
    and cut (``['app.kubernetes.io/name']``, ``['']``), so that the path still reads
    as one and a message still starts with it (as :mod:`archipel.manifests` writes it)."""
    return f".{key}" if _PLAIN_KEY.fullmatch(key) else f"[{limits.echo(key)}]"


def _json_path(path: tuple[str | int, ...], root: str) -> str:
    """The path of a value inside a JSON value; its steps under ``root`` when the first
    step is not a plain key (a manifest's own keys are its fields: ``spec.replicas``)."""
    text = "".join(f"[{part}]" if isinstance(part, int) else key_segment(part) for part in path)
    return text[1:] if text.startswith(".") else f"{root}{text}"


def _check_finite(value: Any, field: str) -> None:
    """JSON has no NaN or Infinity; kube-apiserver cannot even parse them."""
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while pending:
        item, path = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise Invalid(_json_path(path, field), f"{item} is not a JSON number")
        if isinstance(item, dict):
            pending.extend((child, (*path, key)) for key, child in item.items())
        elif isinstance(item, list):
            pending.extend((child, (*path, index)) for index, child in enumerate(item))


def check_depth(value: Any, field: str) -> None:
    deepest = limits.depth(value)
    if deepest > limits.MAX_MANIFEST_DEPTH:
        raise Invalid(
            field,
            f"nested more than {limits.MAX_MANIFEST_DEPTH} levels deep, the limit (docs/limits.md)",
        )


def _check_size(size: int, field: str) -> None:
    if size > limits.MAX_OBJECT_BYTES:
        raise Invalid(
            field,
            f"{size} bytes encoded, over the limit of {limits.MAX_OBJECT_BYTES} bytes "
            "(docs/limits.md)",
        )


def _check_replicas(manifest: Manifest) -> None:
    """The replica counts Archipel divides are int32s from 0, as kube-apiserver types
    them; the interpreter's message names the field."""
    if "spec" in manifest and not isinstance(manifest["spec"], dict):
        raise Invalid("spec", "must be an object")
    try:
        BUILTIN_INTERPRETERS.of(manifest).replicas(manifest)
    except interpreter.InterpreterError as error:
        raise Invalid(error.field, error.problem) from error


def _check_template_metadata(metadata: dict[str, Any], api_version: str, kind: str) -> None:
    name = metadata.get("name")
    if not isinstance(name, str):
        raise Invalid("metadata.name", "required")
    check_template_name(name, api_version, kind, "metadata.name")
    for field in ("labels", "annotations"):
        values = metadata.get(field, {})
        if values is None:
            continue
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()
        ):
            raise Invalid(f"metadata.{field}", "must map strings to strings")
    _check_labels(metadata.get("labels") or {}, "metadata.labels")
    _check_annotations(metadata.get("annotations") or {}, "metadata.annotations")
    finalizers = metadata.get("finalizers", [])
    if not isinstance(finalizers, list):
        raise Invalid("metadata.finalizers", "must be a list of strings")
    for index, finalizer in enumerate(finalizers):
        where = f"metadata.finalizers[{index}]"
        if not isinstance(finalizer, str):
            raise Invalid(where, "must be a string")
        selectors.check_qualified_name(finalizer, where, what="finalizer")


def check_template(
    manifest: Any, *, scope_of: Callable[[str, str], scopes.Scope] = scopes.builtin_scope
) -> Manifest:
    """A resource template; returns it with the namespace defaulted where needed.

    Checks at least what kube-apiserver checks of any object (apiVersion, kind and
    metadata), the fields Archipel itself interprets (replicas), and Archipel's own
    bounds: depth first, since every later step walks the manifest, then size.
    ``scope_of(apiVersion, kind)`` says whether the kind is namespaced: the control
    plane passes what its CRD templates say (:class:`scopes.KindScopes`); without it,
    only the built-in rule is known.
    """
    if not isinstance(manifest, dict):
        raise Invalid("manifest", "must be a Kubernetes object")
    check_depth(manifest, "manifest")
    _check_finite(manifest, "manifest")
    _check_size(len(json.dumps(manifest, separators=(",", ":")).encode()), "manifest")
    api_version = check_api_version(manifest.get("apiVersion"))
    kind = check_kind(manifest.get("kind"))
    metadata = manifest.get("metadata")
    if not isinstance(metadata, dict):
        raise Invalid("metadata", "required")
    namespace = metadata.get("namespace", "")
    scope = scope_of(api_version, kind)
    if not scope.namespaced:
        if namespace:
            why = f" (CustomResourceDefinition {scope.defined_by})" if scope.defined_by else ""
            raise Invalid("metadata.namespace", f"must be empty: {kind} is cluster-scoped{why}")
    else:
        if not namespace:
            metadata["namespace"] = namespace = "default"
        if not isinstance(namespace, str):
            raise Invalid("metadata.namespace", "must be a string")
        check_dns_label(namespace, "metadata.namespace")
    _check_template_metadata(metadata, api_version, kind)
    _check_replicas(manifest)
    # Policies' schedulePriority reads it: a class without a usable value would be a
    # class that is there and cannot be used.
    if (
        kind == workloads.PRIORITY_CLASS_KIND
        and api_version.startswith("scheduling.k8s.io/")
        and workloads.priority_value(manifest) is None
    ):
        raise Invalid(
            "value",
            f"required: an integer up to {2 * workloads.MAX_PRIORITY}, as Kubernetes "
            "allows for a PriorityClass",
        )
    return manifest


# The JSON-valued protobuf types: their nesting is a manifest's nesting.
_JSON_TYPES = frozenset(
    ("google.protobuf.Value", "google.protobuf.Struct", "google.protobuf.ListValue")
)


def _check_json_message(value: pb_message.Message, field: str) -> None:
    """Depth and finiteness of a Value, Struct or ListValue, without recursion."""
    pending: list[tuple[pb_message.Message, int, str]] = [(value, 1, field)]
    while pending:
        item, level, where = pending.pop()
        if level > limits.MAX_MANIFEST_DEPTH:
            raise Invalid(
                field,
                f"nested more than {limits.MAX_MANIFEST_DEPTH} levels deep, the limit "
                "(docs/limits.md)",
            )
        name = item.DESCRIPTOR.full_name
        if name == "google.protobuf.Struct":
            pending.extend(
                (child, level + 1, f"{where}{key_segment(key)}")
                for key, child in item.fields.items()  # type: ignore[attr-defined]
            )
        elif name == "google.protobuf.ListValue":
            pending.extend(
                (child, level + 1, f"{where}[{index}]")
                for index, child in enumerate(item.values)  # type: ignore[attr-defined]
            )
        else:
            which = item.WhichOneof("kind")
            if which == "struct_value":
                pending.extend(
                    (child, level + 1, f"{where}{key_segment(key)}")
                    for key, child in item.struct_value.fields.items()  # type: ignore[attr-defined]
                )
            elif which == "list_value":
                pending.extend(
                    (child, level + 1, f"{where}[{index}]")
                    for index, child in enumerate(item.list_value.values)  # type: ignore[attr-defined]
                )
            elif which == "number_value" and not math.isfinite(item.number_value):  # type: ignore[attr-defined]
                raise Invalid(where, f"{item.number_value} is not a JSON number")  # type: ignore[attr-defined]


def check_message(message: pb_message.Message, what: str) -> None:
    """Archipel's bounds on a protobuf object a caller writes: its encoded size, and the
    depth of every JSON value inside it (override values, a work's manifests)."""
    _check_size(message.ByteSize(), what)
    pending: list[tuple[pb_message.Message, str]] = [(message, "")]
    while pending:
        item, path = pending.pop()
        for descriptor, value in item.ListFields():
            if descriptor.message_type is None:
                continue
            where = f"{path}.{descriptor.json_name}" if path else descriptor.json_name
            if descriptor.message_type.GetOptions().map_entry:
                value_field = descriptor.message_type.fields_by_name["value"]
                if value_field.message_type is None:
                    continue
                children = [(v, f"{where}[{limits.echo(k)}]") for k, v in value.items()]
            elif descriptor.is_repeated:
                children = [(v, f"{where}[{i}]") for i, v in enumerate(value)]
            else:
                children = [(value, where)]
            for child, child_where in children:
                if child.DESCRIPTOR.full_name in _JSON_TYPES:
                    _check_json_message(child, child_where)
                else:
                    pending.append((child, child_where))


def check_work_spec(spec: work_pb2.PropagationWorkSpec) -> None:
    """What a work written through the API may carry, beyond the bounds every object has
    (its size and its manifests' depth, :func:`check_message`)."""
    count = len(spec.workload.manifests)
    if count > limits.MAX_WORK_MANIFESTS:
        raise Invalid(
            "spec.workload.manifests",
            f"{count} manifests, over the limit of {limits.MAX_WORK_MANIFESTS} per work "
            "(docs/limits.md)",
        )


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
