"""The status controllers: what agents report flows into works, bindings and templates.

Both only plan (:mod:`controlplane.plan`): each reconcile gathers what it reads into
a frozen observed snapshot, and a pure module-level function turns that snapshot into
the writes, which the runtime commits as one guarded transaction. The decisions are
therefore tables over plain data (tests/unit/test_plan_status.py), and a reconcile
lands whole or, when anything it read changed meanwhile, not at all.

* Work status (key: a work key; :func:`plan_work_status` over :class:`ObservedWork`):
  the newest report from the agent becomes the work's ``Applied`` condition and
  ``manifestStatuses``; a reported deletion of a deleting work releases its
  finalizer. Reports are coalesced per work in :class:`PendingReports`, so a chatty
  agent costs at most one write per work per pass; a report is forgotten only once
  the plan made from it is committed (``Plan.committed``), so a lost race keeps it for
  the retry, and a newer report that arrived meanwhile is never forgotten with it.
* Binding status (key: a binding key; :func:`plan_binding_status` over
  :class:`ObservedBinding`): one update of the binding carrying the per-cluster
  ``aggregatedStatus``, ``FullyApplied`` and, once aggregation failed, the
  ``StatusAggregated`` condition; plus at most one update of the template's
  ``status``, aggregated by the kind's interpreter (:mod:`archipel.interpreter`:
  Deployments sum their replica counters, as in Karmada; customizations say for
  custom kinds). Both writes are in one plan made from one snapshot, so the template
  never shows a status the binding does not.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from typing import Any

from archipel import interpreter, structs
from archipel.core import kinds
from archipel.core.conditions import find, set_condition
from archipel.core.kinds import Manifest
from archipel.v1alpha1 import agent_pb2, interpreter_pb2, meta_pb2, work_pb2
from controlplane.context import (
    WORK_FINALIZER,
    Context,
    binding_key_of_work,
    binding_targets,
    customization_targets,
    template_key_of_binding,
    work_key,
)
from controlplane.etcd import Guard
from controlplane.plan import Plan
from controlplane.predicates import is_deleting, status_changed

log = logging.getLogger(__name__)

BUILTIN_INTERPRETERS = interpreter.Registry()


# -- work status ---------------------------------------------------------------------


class PendingReports:
    """What agents said about works and is not written yet, per work key.

    Only the newest report counts (older ones would be overwritten anyway), and only
    the last uid the agent cleaned up. Entries are forgotten by the plan's committed
    callbacks, and only if they are still the ones the plan was made from.
    """

    def __init__(self) -> None:
        self._reports: dict[str, agent_pb2.WorkStatusReport] = {}
        self._deleted: dict[str, str] = {}  # work key -> uid the agent cleaned up

    def add_report(self, key: str, report: agent_pb2.WorkStatusReport) -> None:
        self._reports[key] = report

    def add_deleted(self, key: str, uid: str) -> None:
        self._deleted[key] = uid

    def report(self, key: str) -> agent_pb2.WorkStatusReport | None:
        return self._reports.get(key)

    def deleted_uid(self, key: str) -> str | None:
        return self._deleted.get(key)

    def forget_report(self, key: str, report: agent_pb2.WorkStatusReport) -> None:
        """Drop ``report`` unless a newer one replaced it (that one is still to write)."""
        if self._reports.get(key) is report:
            del self._reports[key]

    def forget_deleted(self, key: str, uid: str) -> None:
        """Drop the deletion record unless another uid's replaced it."""
        if self._deleted.get(key) == uid:
            del self._deleted[key]


@dataclasses.dataclass(frozen=True)
class ObservedWork:
    """What one work-status reconcile reads: the cached work and what is pending for it."""

    key: str
    work: work_pb2.PropagationWork | None
    report: agent_pb2.WorkStatusReport | None
    """The newest report not yet written (None: none pending)."""
    deleted_uid: str | None
    """The uid the agent reported it cleaned up ("" from agents that do not say;
    None: no deletion reported)."""


def plan_work_status(observed: ObservedWork, pending: PendingReports) -> Plan | None:
    """The work's writes for what its agent reported; forgetting what was handled is
    left to ``plan.committed``, so nothing is lost when the commit fails."""
    key, work = observed.key, observed.work
    report, deleted_uid = observed.report, observed.deleted_uid
    plan = Plan()
    if work is None:
        # Gone: nothing left to record for it.
        if report is not None:
            plan.committed.append(functools.partial(pending.forget_report, key, report))
        if deleted_uid is not None:
            plan.committed.append(functools.partial(pending.forget_deleted, key, deleted_uid))
        return plan if plan.committed else None
    if deleted_uid is not None and is_deleting(work):
        # An agent that does not name the uid ("") can only mean the current work; a
        # record for another uid is about an earlier incarnation, and is dropped.
        if deleted_uid in ("", work.metadata.uid) and WORK_FINALIZER in work.metadata.finalizers:
            released = kinds.PROPAGATION_WORK.copy(work)
            kinds.PROPAGATION_WORK.meta(released).set_finalizers(
                [f for f in work.metadata.finalizers if f != WORK_FINALIZER]
            )
            plan.update(kinds.PROPAGATION_WORK, released, current=work)
        plan.committed.append(functools.partial(pending.forget_deleted, key, deleted_uid))
        return plan
    if report is None or report.uid != work.metadata.uid:
        # Nothing new, or a report about another incarnation of the work (kept: a
        # newer report replaces it).
        return None
    updated = kinds.PROPAGATION_WORK.copy(work)
    set_condition(
        updated.status.conditions,
        "Applied",
        "True" if report.applied else "False",
        "AppliedSuccessful" if report.applied else "AppliedFailed",
        report.message,
        report.generation,
    )
    del updated.status.manifest_statuses[:]
    updated.status.manifest_statuses.extend(report.manifest_statuses)
    if updated.status != work.status:
        plan.update(kinds.PROPAGATION_WORK, updated, current=work)
    plan.committed.append(functools.partial(pending.forget_report, key, report))
    return plan


class WorkStatusController:
    NAME = "work-status-controller"

    def __init__(self, context: Context) -> None:
        self.context = context
        # Many cheap workers: their writes share etcd transactions (see Etcd.commit_grouped).
        # Reports arrive on the replica holding the agent's stream, in memory: that
        # replica writes them, guarded by its hold on the stream (or, once the agent
        # left, by no replica holding it).
        self.controller = context.controller(
            self.NAME,
            self.reconcile,
            workers=context.settings.workers * 8,
            owner=self._owner,
            follows=frozenset({"streams"}),
        )
        self.pending = PendingReports()

    def _owner(self, key: str) -> list[Guard] | None:
        namespace = key.split("/")[1]
        cluster = kinds.cluster_of_execution_namespace(namespace)
        return self.context.owns_reports(cluster) if cluster is not None else None

    def report(self, cluster: str, report: agent_pb2.WorkStatusReport) -> None:
        key = kinds.PROPAGATION_WORK.key(kinds.execution_namespace(cluster), report.name)
        self.pending.add_report(key, report)
        self.controller.enqueue(key)

    def deleted(self, cluster: str, deleted: agent_pb2.WorkDeleted) -> None:
        key = kinds.PROPAGATION_WORK.key(kinds.execution_namespace(cluster), deleted.name)
        self.pending.add_deleted(key, deleted.uid)
        self.controller.enqueue(key)

    def observe(self, key: str) -> ObservedWork:
        return ObservedWork(
            key=key,
            work=self.context.works.get(key),
            report=self.pending.report(key),
            deleted_uid=self.pending.deleted_uid(key),
        )

    async def reconcile(self, key: str) -> Plan | None:
        return plan_work_status(self.observe(key), self.pending)


# -- binding status ------------------------------------------------------------------


def aggregate_template_status(
    resource: meta_pb2.ObjectReference,
    items: list[work_pb2.AggregatedStatusItem],
    template_generation: int,
    interpreters: interpreter.Registry = BUILTIN_INTERPRETERS,
) -> dict[str, Any] | None:
    """The template's status from its members' reflected statuses, as its kind says.

    :class:`interpreter.InterpreterError` when a customization cannot aggregate.
    """
    members = [
        interpreter.MemberStatus(
            i.cluster_name, structs.from_struct(i.status) if i.HasField("status") else None
        )
        for i in items
    ]
    kind_interpreter = interpreters.get(resource.api_version, resource.kind)
    return kind_interpreter.aggregate_status(members, template_generation)


@dataclasses.dataclass(frozen=True)
class ObservedBinding:
    """What one binding-status reconcile reads, all from the caches at one moment."""

    binding: work_pb2.PropagationBinding
    works: Mapping[str, work_pb2.PropagationWork]
    """The binding's works by target cluster (a cluster without one is absent)."""
    template: Manifest | None
    interpreters: interpreter.Registry = BUILTIN_INTERPRETERS


def aggregated_items(
    binding: work_pb2.PropagationBinding, works: Mapping[str, work_pb2.PropagationWork]
) -> tuple[list[work_pb2.AggregatedStatusItem], list[str]]:
    """Each target cluster's status item, and the clusters not applied yet.

    A cluster counts as applied only when its work says so for the work's current
    generation: an ``Applied`` from before the last change says nothing of it.
    """
    items = []
    waiting = []
    for cluster, _ in binding_targets(binding):
        work = works.get(cluster)
        item = work_pb2.AggregatedStatusItem(cluster_name=cluster, health="Unknown")
        applied = None if work is None else find(work.status.conditions, "Applied")
        if work is not None and applied is not None:
            current = applied.observed_generation == work.metadata.generation
            item.applied = applied.status == "True" and current
            item.applied_message = applied.message
            for manifest in work.status.manifest_statuses[:1]:
                if manifest.HasField("status"):
                    item.status.CopyFrom(manifest.status)
                item.health = manifest.health or "Unknown"
                item.health_message = manifest.health_message
        if not item.applied:
            waiting.append(cluster)
        items.append(item)
    return items, waiting


def plan_binding_status(observed: ObservedBinding) -> Plan | None:
    """At most one update of the binding's status and one of the template's status.

    Every condition of the binding is set on one copy, so the binding is written once
    per pass, and the template's status is decided from the same items the binding
    records. ``StatusAggregated`` is written only once aggregation has failed: a
    binding whose template always aggregated never carries it.
    """
    binding = observed.binding
    if is_deleting(binding):
        return None
    items, waiting = aggregated_items(binding, observed.works)
    applied_everywhere = bool(items) and not waiting
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    del updated.status.aggregated_status[:]
    updated.status.aggregated_status.extend(items)
    set_condition(
        updated.status.conditions,
        "FullyApplied",
        "True" if applied_everywhere else "False",
        "FullyAppliedSuccess" if applied_everywhere else "FullyAppliedFailed",
        "applied on every target cluster"
        if applied_everywhere
        else f"not applied yet on: {', '.join(waiting) or 'no target cluster'}",
        binding.metadata.generation,
    )
    template_update: Manifest | None = None
    template = observed.template
    if template is not None:
        generation = int(template.get("metadata", {}).get("generation", 0))
        error = ""
        status: dict[str, Any] | None = None
        try:
            status = aggregate_template_status(
                binding.spec.resource, items, generation, observed.interpreters
            )
        except interpreter.InterpreterError as failure:
            # Only this template's status stands still; the binding says why.
            error = str(failure)
        if error or find(binding.status.conditions, "StatusAggregated") is not None:
            set_condition(
                updated.status.conditions,
                "StatusAggregated",
                "False" if error else "True",
                "InterpreterError" if error else "Aggregated",
                error or "the template's status is aggregated from its clusters",
                binding.metadata.generation,
            )
        if status is not None and template.get("status") != status:
            template_update = kinds.RESOURCE_TEMPLATE.copy(template)
            template_update["status"] = status
    plan = Plan()
    if updated.status != binding.status:
        plan.update(kinds.PROPAGATION_BINDING, updated, current=binding)
    if template is not None and template_update is not None:
        plan.update(kinds.RESOURCE_TEMPLATE, template_update, current=template)
    return plan if plan.writes else None


class BindingStatusController:
    NAME = "binding-status-controller"

    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(self.NAME, self.reconcile)
        context.works.add_handler(self._on_work)
        context.bindings.add_handler(self._on_binding)
        context.customizations.add_handler(self._on_customization)

    def _on_customization(
        self,
        key: str,
        old: interpreter_pb2.ResourceInterpreterCustomization | None,
        new: interpreter_pb2.ResourceInterpreterCustomization | None,
    ) -> None:
        # The target kind's templates may now aggregate differently.
        kinds_changed = customization_targets(old, new)
        for binding in self.context.bindings.objects():
            resource = binding.spec.resource
            if (resource.api_version, resource.kind) in kinds_changed:
                self.controller.enqueue(kinds.PROPAGATION_BINDING.key_of(binding))

    def _on_work(
        self, key: str, old: work_pb2.PropagationWork | None, new: work_pb2.PropagationWork | None
    ) -> None:
        if status_changed(old, new):
            work = new or old
            assert work is not None
            self.controller.enqueue(binding_key_of_work(work))

    def _on_binding(
        self,
        key: str,
        old: work_pb2.PropagationBinding | None,
        new: work_pb2.PropagationBinding | None,
    ) -> None:
        # Only where the works go changes what is aggregated; this controller's own
        # status writes must not bring the binding back.
        if new is not None and (
            old is None
            or old.spec.clusters != new.spec.clusters
            or old.spec.required_by != new.spec.required_by
        ):
            self.controller.enqueue(key)

    def observe(self, key: str) -> ObservedBinding | None:
        context = self.context
        binding = context.bindings.get(key)
        if binding is None:
            return None
        works = {}
        for cluster, _ in binding_targets(binding):
            work = context.works.get(work_key(binding, cluster))
            if work is not None:
                works[cluster] = work
        return ObservedBinding(
            binding=binding,
            works=works,
            template=context.templates.get(template_key_of_binding(binding)),
            interpreters=context.interpreters,
        )

    async def reconcile(self, key: str) -> Plan | None:
        observed = self.observe(key)
        return None if observed is None else plan_binding_status(observed)
