"""Placement as pure functions over a snapshot of clusters: filter, then divide.

Nothing here does I/O, so the scheduler controller, ``archipel describe`` and tests
all run the same code. The pipeline follows Karmada's: filter plugins reject
clusters (each with a reason), the first satisfiable clusterAffinities group wins,
and replicas are assigned. Duplicated gives every target the template's replicas;
Divided splits them (:mod:`archipel.core.division`): static weights, weights from
available replicas, or Aggregated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

from archipel import quantity
from archipel.core import division, names, selectors
from archipel.core.errors import Invalid
from archipel.v1alpha1 import cluster_pb2, meta_pb2, policy_pb2


@dataclasses.dataclass(frozen=True)
class TaintInfo:
    key: str
    value: str
    effect: str
    time_added: float | None = None
    """When the taint appeared (seconds since the epoch): tolerationSeconds count from it."""


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """What scheduling needs to know about one member cluster."""

    name: str
    labels: Mapping[str, str]
    provider: str = ""
    region: str = ""
    zones: tuple[str, ...] = ()
    taints: tuple[TaintInfo, ...] = ()
    deleting: bool = False
    # Free capacity (allocatable minus allocated) by resource, when the agent reported it.
    free: Mapping[str, Fraction] | None = None
    # (apiVersion, kind) pairs the cluster serves, when its agent reported them.
    api_resources: frozenset[tuple[str, str]] | None = None
    # Given instead of capacity (the what-if simulator's "availableReplicas").
    replicas_available: int | None = None
    # Ready nodes, when the agent reported them: none ready means no room at all.
    ready_nodes: int | None = None

    @classmethod
    def from_proto(cls, cluster: cluster_pb2.MemberCluster) -> ClusterInfo:
        zones = tuple(cluster.spec.zones) or ((cluster.spec.zone,) if cluster.spec.zone else ())
        summary = cluster.status.resource_summary
        free: dict[str, Fraction] | None = None
        if len(summary.allocatable):
            free = {}
            for resource, amount in summary.allocatable.items():
                try:
                    used = quantity.parse(summary.allocated.get(resource, "0"))
                    used += quantity.parse(summary.allocating.get(resource, "0"))
                    free[resource] = quantity.parse(amount) - used
                except quantity.QuantityError:
                    continue  # a quantity we cannot read does not constrain
        api_resources = None
        if len(cluster.status.api_enablements):
            api_resources = frozenset(
                (enablement.group_version, resource.kind)
                for enablement in cluster.status.api_enablements
                for resource in enablement.resources
            )
        return cls(
            name=cluster.metadata.name,
            labels=dict(cluster.metadata.labels),
            provider=cluster.spec.provider,
            region=cluster.spec.region,
            zones=zones,
            taints=tuple(
                TaintInfo(
                    t.key,
                    t.value,
                    t.effect,
                    float(t.time_added.seconds) if t.HasField("time_added") else None,
                )
                for t in cluster.spec.taints
            ),
            deleting=cluster.metadata.HasField("deletion_timestamp"),
            free=free,
            api_resources=api_resources,
            ready_nodes=cluster.status.node_summary.ready_num
            if cluster.status.HasField("node_summary")
            else None,
        )


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    replicas: int


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome: targets, or why there are none (reason is Karmada's condition reason)."""

    targets: tuple[Target, ...]
    reason: str  # Success, NoClusterFit, Unschedulable
    message: str
    rejected: Mapping[str, str] = dataclasses.field(default_factory=dict)
    affinity_name: str = ""

    @property
    def scheduled(self) -> bool:
        return self.reason == "Success"


def _field_values(cluster: ClusterInfo, key: str) -> tuple[str, ...]:
    if key == "provider":
        return (cluster.provider,)
    if key == "region":
        return (cluster.region,)
    return cluster.zones


@dataclasses.dataclass(frozen=True)
class Affinity:
    """A cluster affinity read once from its message, so checking many clusters is cheap."""

    names: frozenset[str]
    exclude: frozenset[str]
    selector: selectors.Selector | None
    fields: tuple[tuple[str, bool, frozenset[str]], ...]  # (key, In?, values)

    @classmethod
    def of(cls, affinity: policy_pb2.ClusterAffinity | policy_pb2.ClusterAffinityTerm) -> Affinity:
        selector = None
        if affinity.HasField("label_selector"):
            selector = selectors.from_proto(affinity.label_selector)
        return cls(
            names=frozenset(affinity.cluster_names),
            exclude=frozenset(affinity.exclude),
            selector=selector,
            fields=tuple(
                (e.key, e.operator == "In", frozenset(e.values))
                for e in affinity.field_selector.match_expressions
            ),
        )

    def rejects(self, cluster: ClusterInfo) -> str | None:
        """Why this affinity rules the cluster out, or None when it fits."""
        if cluster.name in self.exclude:
            return "excluded by name"
        if self.names and cluster.name not in self.names:
            return "not in clusterNames"
        if self.selector is not None and not self.selector.matches(cluster.labels):
            return "labels do not match labelSelector"
        for key, wanted_in, values in self.fields:
            hit = any(v in values for v in _field_values(cluster, key) if v)
            if wanted_in != hit:
                return f"{key} does not match fieldSelector"
        return None


def affinity_rejects(
    affinity: policy_pb2.ClusterAffinity | policy_pb2.ClusterAffinityTerm, cluster: ClusterInfo
) -> str | None:
    """Why ``affinity`` rules the cluster out, or None when it fits."""
    return Affinity.of(affinity).rejects(cluster)


def _matches(toleration: meta_pb2.Toleration, taint: TaintInfo) -> bool:
    if toleration.effect and toleration.effect != taint.effect:
        return False
    # Karmada's YAML tolerates Karmada's taint keys; they mean Archipel's.
    key = names.KARMADA_TAINT_KEYS.get(toleration.key, toleration.key)
    if toleration.operator == "Exists":
        return not key or key == taint.key
    return key == taint.key and toleration.value == taint.value


def tolerated_until(taint: TaintInfo, tolerations: Sequence[meta_pb2.Toleration]) -> float | None:
    """Until when (seconds since the epoch) ``tolerations`` tolerate ``taint``: ``inf``
    for good, None not at all.

    As Kubernetes' tolerationSeconds: only for a NoExecute taint, and counted from when
    the taint appeared; of several matching tolerations, the most lenient wins.
    """
    until: float | None = None
    for toleration in tolerations:
        if not _matches(toleration, taint):
            continue
        if (
            taint.effect != "NoExecute"
            or not toleration.HasField("toleration_seconds")
            or taint.time_added is None
        ):
            return math.inf
        # Zero or less: evict at once, as Kubernetes does.
        ends = taint.time_added + max(0, toleration.toleration_seconds)
        until = ends if until is None else max(until, ends)
    return until


def taint_rejects(
    placement: policy_pb2.Placement,
    cluster: ClusterInfo,
    *,
    already_scheduled: bool,
    now: float | None = None,
) -> str | None:
    """Why the cluster's taints rule it out, or None. ``now`` (seconds since the epoch)
    is when a toleration with tolerationSeconds is judged; None: it tolerates."""
    for taint in cluster.taints:
        if taint.effect == "PreferNoSchedule":
            continue
        # A NoSchedule taint keeps new workloads off but does not evict old ones.
        if taint.effect == "NoSchedule" and already_scheduled:
            continue
        until = tolerated_until(taint, placement.cluster_tolerations)
        if until is None:
            return f"taint {taint.key}={taint.value}:{taint.effect} is not tolerated"
        if now is not None and now >= until:
            return (
                f"taint {taint.key}={taint.value}:{taint.effect} was tolerated for "
                f"{until - (taint.time_added or until):.0f}s, which have passed"
            )
    return None


def evicts(placement: policy_pb2.Placement, cluster: ClusterInfo, now: float) -> str | None:
    """Why a cluster that holds the workload must give it up now (a NoExecute taint the
    placement does not tolerate, or no longer does), or None."""
    for taint in cluster.taints:
        if taint.effect != "NoExecute":
            continue
        until = tolerated_until(taint, placement.cluster_tolerations)
        if until is None or now >= until:
            return f"taint {taint.key}:NoExecute is not tolerated"
    return None


def next_eviction(
    placement: policy_pb2.Placement, clusters: Sequence[ClusterInfo], now: float
) -> float | None:
    """The earliest future moment a tolerationSeconds runs out on one of ``clusters``:
    when the scheduler must look again, though nothing else changes."""
    soonest: float | None = None
    for cluster in clusters:
        for taint in cluster.taints:
            if taint.effect != "NoExecute":
                continue
            until = tolerated_until(taint, placement.cluster_tolerations)
            if until is not None and now < until < math.inf:
                soonest = until if soonest is None else min(soonest, until)
    return soonest


Filter = Callable[[policy_pb2.Placement, ClusterInfo, bool, float | None], str | None]


def _deleting(
    _: policy_pb2.Placement, cluster: ClusterInfo, __: bool, ___: float | None
) -> str | None:
    return "cluster is being deleted" if cluster.deleting else None


def _taints(
    placement: policy_pb2.Placement, cluster: ClusterInfo, scheduled: bool, now: float | None
) -> str | None:
    return taint_rejects(placement, cluster, already_scheduled=scheduled, now=now)


FILTERS: tuple[Filter, ...] = (_deleting, _taints)


def api_rejects(cluster: ClusterInfo, resource: tuple[str, str] | None) -> str | None:
    """APIEnablement: the cluster must serve the template's apiVersion and kind."""
    if resource is None or cluster.api_resources is None:
        return None  # nothing reported yet: do not guess
    if resource not in cluster.api_resources:
        return f"does not serve {resource[1]} in {resource[0]}"
    return None


def _feasible(
    placement: policy_pb2.Placement,
    affinity: policy_pb2.ClusterAffinity | policy_pb2.ClusterAffinityTerm | None,
    clusters: Sequence[ClusterInfo],
    current: frozenset[str],
    resource: tuple[str, str] | None = None,
    now: float | None = None,
    excluded: Mapping[str, str] | None = None,
) -> tuple[list[ClusterInfo], dict[str, str]]:
    fits, rejected = [], {}
    compiled = Affinity.of(affinity) if affinity is not None else None
    for cluster in clusters:
        reason = compiled.rejects(cluster) if compiled is not None else None
        if reason is None and excluded:
            reason = excluded.get(cluster.name)
        for check in FILTERS:
            if reason is not None:
                break
            reason = check(placement, cluster, cluster.name in current, now)
        if reason is None:
            reason = api_rejects(cluster, resource)
        if reason is None:
            fits.append(cluster)
        else:
            rejected[cluster.name] = reason
    return fits, rejected


def available_replicas(cluster: ClusterInfo, requests: Mapping[str, Fraction]) -> int:
    """How many more replicas fit: free capacity divided by one replica's requests,
    bounded by free pod slots (Karmada's general estimator). Unknown capacity: none."""
    if cluster.replicas_available is not None:
        return cluster.replicas_available
    if cluster.free is None or cluster.ready_nodes == 0:
        return 0
    fits = math.floor(cluster.free["pods"]) if "pods" in cluster.free else 2**31 - 1
    for resource, request in requests.items():
        if request <= 0 or resource not in cluster.free:
            continue
        fits = min(fits, math.floor(cluster.free[resource] / request))
    return max(0, fits)


class AssumedCapacity:
    """Capacity the scheduler has just handed out but no heartbeat has reported yet.

    Without it, bindings scheduled in the same few seconds would all see the same free
    capacity and could together oversubscribe a cluster (karmada#1385). A cluster's
    assumptions are dropped when its agent reports new figures, which include them.
    """

    def __init__(self) -> None:
        self._used: dict[str, dict[str, Fraction]] = {}

    def assume(
        self,
        before: Mapping[str, int],
        after: Mapping[str, int],
        requests: Mapping[str, Fraction],
    ) -> None:
        """Record a decision's change, cluster by cluster (scale-downs free capacity)."""
        if not requests:
            return
        for name in set(before) | set(after):
            delta = after.get(name, 0) - before.get(name, 0)
            if not delta:
                continue
            used = self._used.setdefault(name, {})
            for resource, request in requests.items():
                used[resource] = used.get(resource, Fraction(0)) + request * delta
            used["pods"] = used.get("pods", Fraction(0)) + delta

    def reported(self, cluster: str) -> None:
        self._used.pop(cluster, None)

    def apply(self, clusters: Sequence[ClusterInfo]) -> list[ClusterInfo]:
        """The clusters as scheduling should see them: free capacity minus assumptions."""
        result = []
        for cluster in clusters:
            used = self._used.get(cluster.name)
            if used and cluster.free is not None:
                free = {r: v - used.get(r, Fraction(0)) for r, v in cluster.free.items()}
                cluster = dataclasses.replace(cluster, free=free)
            result.append(cluster)
        return result


def parse_requests(requests: Mapping[str, str]) -> dict[str, Fraction]:
    try:
        return {
            r: quantity.parse(v, field=f"replicaRequirements.resourceRequest[{r}]")
            for r, v in requests.items()
        }
    except quantity.QuantityError as error:
        raise Invalid(error.field, error.problem) from error


def static_weights(
    strategy: policy_pb2.ReplicaSchedulingStrategy, clusters: Sequence[ClusterInfo]
) -> dict[str, int]:
    """Each cluster's weight: the largest staticWeightList entry that selects it."""
    entries = strategy.weight_preference.static_weight_list
    if not len(entries):
        return {c.name: 1 for c in clusters}
    compiled = [(Affinity.of(e.target_cluster), e.weight) for e in entries]
    weights = {}
    for cluster in clusters:
        matching = [weight for affinity, weight in compiled if affinity.rejects(cluster) is None]
        weights[cluster.name] = max(matching, default=0)
    return weights


def divide(
    placement: policy_pb2.Placement,
    *,
    replicas: int,
    clusters: Sequence[ClusterInfo],
    previous: Mapping[str, int],
    requests: Mapping[str, Fraction],
    seed: int,
    fresh: bool,
) -> dict[str, int]:
    """Divided replica scheduling over the clusters that passed the filters."""
    strategy = placement.replica_scheduling
    earlier = division.Previous({n: r for n, r in previous.items() if r})
    if strategy.replica_division_preference == "Aggregated":
        room = {c.name: available_replicas(c, requests) for c in clusters}
        return division.aggregated(replicas, room, previous=earlier, seed=seed)
    if strategy.weight_preference.dynamic_weight == "AvailableReplicas":
        room = {c.name: available_replicas(c, requests) for c in clusters}
        return division.dynamic(replicas, room, previous=earlier, fresh=fresh, seed=seed)
    return division.static(replicas, static_weights(strategy, clusters), seed=seed)


def _group_of(cluster: ClusterInfo, constraint: policy_pb2.SpreadConstraint) -> str:
    if constraint.spread_by_label:
        return cluster.labels.get(constraint.spread_by_label, "")
    if constraint.spread_by_field == "region":
        return cluster.region
    if constraint.spread_by_field == "zone":
        return cluster.zones[0] if cluster.zones else ""
    if constraint.spread_by_field == "provider":
        return cluster.provider
    return cluster.name


def spread(
    placement: policy_pb2.Placement,
    clusters: Sequence[ClusterInfo],
    *,
    current: frozenset[str],
    requests: Mapping[str, Fraction],
) -> list[ClusterInfo]:
    """Apply spreadConstraints: pick groups (regions, zones, providers or label values)
    and then clusters, within minGroups and maxGroups.

    Clusters are ranked by the score plugins: locality first (clusters that already
    hold the workload), then capacity (available replicas), then name. Raises
    :class:`division.Unschedulable` when a minimum cannot be met.
    """
    constraints = list(placement.spread_constraints)
    if not constraints:
        return list(clusters)

    def score(cluster: ClusterInfo) -> tuple[int, int, str]:
        locality = 1 if cluster.name in current else 0
        return (-locality, -available_replicas(cluster, requests), cluster.name)

    ranked = sorted(clusters, key=score)
    for constraint in constraints:
        if constraint.spread_by_field == "cluster":
            continue
        what = constraint.spread_by_label or constraint.spread_by_field
        groups: dict[str, list[ClusterInfo]] = {}
        for cluster in ranked:
            group = _group_of(cluster, constraint)
            if group:
                groups.setdefault(group, []).append(cluster)
        if len(groups) < constraint.min_groups:
            raise division.Unschedulable(
                f"spreadConstraints: {what} needs at least {constraint.min_groups} groups, "
                f"{len(groups)} available ({', '.join(sorted(groups)) or 'none'})"
            )
        # Groups whose best cluster ranks highest come first.
        order = sorted(groups, key=lambda g: (score(groups[g][0]), g))
        if constraint.max_groups:
            order = order[: constraint.max_groups]
        chosen = {c.name for g in order for c in groups[g]}
        ranked = [c for c in ranked if c.name in chosen]
    for constraint in constraints:
        if constraint.spread_by_field != "cluster":
            continue
        if len(ranked) < constraint.min_groups:
            raise division.Unschedulable(
                f"spreadConstraints: cluster needs at least {constraint.min_groups} clusters, "
                f"{len(ranked)} available"
            )
        if constraint.max_groups and len(ranked) > constraint.max_groups:
            # Keep one cluster per chosen group first, so no group picked above is lost.
            keep: list[ClusterInfo] = []
            for other in constraints:
                if other.spread_by_field == "cluster":
                    continue
                seen: set[str] = set()
                for cluster in ranked:
                    group = _group_of(cluster, other)
                    if group not in seen and cluster not in keep:
                        seen.add(group)
                        keep.append(cluster)
            for cluster in ranked:
                if cluster not in keep:
                    keep.append(cluster)
            ranked = sorted(keep[: constraint.max_groups], key=score)
    return ranked


def is_duplicated(placement: policy_pb2.Placement) -> bool:
    """Karmada's rule: no replicaScheduling means Duplicated; given, it defaults to Divided."""
    if not placement.HasField("replica_scheduling"):
        return True
    return placement.replica_scheduling.replica_scheduling_type == "Duplicated"


def schedule(
    placement: policy_pb2.Placement,
    *,
    replicas: int,
    clusters: Sequence[ClusterInfo],
    current: Mapping[str, int] | Sequence[str] = (),
    requests: Mapping[str, Fraction] | None = None,
    seed: int = 0,
    fresh: bool = False,
    resource: tuple[str, str] | None = None,
    now: float | None = None,
    excluded: Mapping[str, str] | None = None,
    keep_current: bool = False,
    observing_affinity: str = "",
) -> Decision:
    """Choose target clusters and their replicas for one binding.

    ``current`` is the previous result (cluster to replicas), which steady division
    keeps as far as it can; ``fresh`` ignores it, as a manual reschedule does.
    ``keep_current``: nothing but the clusters changed since ``current`` was decided, so
    a Divided result whose clusters all still fit stays as it is: a cluster that comes
    back after a failover does not pull replicas back by itself (Karmada's rule; a
    rebalance or reschedule does). ``excluded`` rules clusters out, with the reason (an
    eviction pending for this workload there). ``now`` (seconds since the epoch) judges
    tolerationSeconds. ``observing_affinity`` names the clusterAffinities group the
    workload was last placed in: the search starts there and goes on to later groups
    (then, as a last resort, the earlier ones), so a workload that fell back stays in
    its group when an earlier one fits again (Karmada's
    ``schedulerObservingAffinityName``); ``fresh`` starts again from the first group.
    """
    previous = dict(current) if isinstance(current, Mapping) else dict.fromkeys(current, 0)
    ordered = sorted(clusters, key=lambda c: c.name)
    scheduled_on = frozenset(previous)
    rejected: dict[str, str] = {}
    fits: list[ClusterInfo] = []
    affinity_name = ""
    # Overflow tiers of the chosen clusterAffinities group: clusters to add, in order,
    # when the group's own clusters cannot hold the replicas.
    overflow: list[list[ClusterInfo]] = []
    if len(placement.cluster_affinities):
        terms = list(placement.cluster_affinities)
        group_names = [term.affinity_name for term in terms]
        start = 0
        if observing_affinity in group_names and not fresh:
            start = group_names.index(observing_affinity)
        # Karmada goes on to later groups only; when none of them fits, the earlier
        # groups are tried too rather than withdrawing a workload that has somewhere
        # to run.
        for term in terms[start:] + terms[:start]:
            fits, rejected = _feasible(
                placement, term, ordered, scheduled_on, resource, now, excluded
            )
            if fits:
                affinity_name = term.affinity_name
                taken = {c.name for c in fits}
                for tier in term.overflow_affinities:
                    extra, _ = _feasible(
                        placement, tier, ordered, scheduled_on, resource, now, excluded
                    )
                    overflow.append([c for c in extra if c.name not in taken])
                    taken |= {c.name for c in extra}
                break
    else:
        affinity = placement.cluster_affinity if placement.HasField("cluster_affinity") else None
        fits, rejected = _feasible(
            placement, affinity, ordered, scheduled_on, resource, now, excluded
        )
    if not fits:
        detail = "; ".join(f"{name}: {why}" for name, why in sorted(rejected.items()))
        return Decision(
            (),
            "NoClusterFit",
            f"0/{len(ordered)} clusters are available: {detail}".rstrip(": "),
            rejected,
        )
    static_weights_given = len(placement.replica_scheduling.weight_preference.static_weight_list)
    if not static_weights_given:  # Karmada ignores spreading when static weights decide
        try:
            fits = spread(placement, fits, current=scheduled_on, requests=requests or {})
        except division.Unschedulable as error:
            return Decision((), "Unschedulable", str(error), rejected, affinity_name)
        fits = sorted(fits, key=lambda c: c.name)
    held = {n: r for n, r in previous.items() if r}
    fitting = {c.name for c in fits} | {c.name for tier in overflow for c in tier}
    if is_duplicated(placement) or replicas == 0:
        # Objects without replicas go everywhere that fits, as Karmada does.
        targets = tuple(Target(c.name, replicas) for c in fits)
    elif (
        keep_current
        and not fresh
        and held
        and sum(held.values()) == replicas
        and set(held) <= fitting
    ):
        targets = tuple(Target(name, count) for name, count in sorted(held.items()))
    else:
        # A group's own clusters come first; overflow tiers take only the shortage, in
        # order. A smaller request fits in fewer tiers, so scaling down contracts in
        # reverse and the overflow clusters are released.
        divided = {}
        remaining = replicas
        groups = [fits, *overflow]
        for index, group in enumerate(groups):
            names = {c.name for c in group}
            earlier = {n: r for n, r in previous.items() if r and n in names}
            try:
                divided.update(
                    divide(
                        placement,
                        replicas=remaining,
                        clusters=group,
                        previous=earlier,
                        requests=requests or {},
                        seed=seed,
                        fresh=fresh,
                    )
                )
                remaining = 0
                break
            except division.Unschedulable as error:
                if index == len(groups) - 1:
                    return Decision((), "Unschedulable", str(error), rejected, affinity_name)
                room = sum(
                    available_replicas(c, requests or {}) + earlier.get(c.name, 0) for c in group
                )
                if room:
                    divided.update(
                        divide(
                            placement,
                            replicas=room,
                            clusters=group,
                            previous=earlier,
                            requests=requests or {},
                            seed=seed,
                            fresh=fresh,
                        )
                    )
                remaining -= room
        targets = tuple(Target(name, count) for name, count in sorted(divided.items()))
    summary = ", ".join(
        f"{t.name}" if is_duplicated(placement) else f"{t.name}={t.replicas}" for t in targets
    )
    message = f"scheduled to {summary}"
    if rejected:
        # Kept in the condition so `archipel describe` can say why a cluster is not used.
        message += "; filtered out: " + "; ".join(f"{n}: {w}" for n, w in sorted(rejected.items()))
    return Decision(targets, "Success", message, rejected, affinity_name)
