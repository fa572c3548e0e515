"""The status controllers: what agents report flows into works, bindings and templates.

* Work status (key: a work key): the newest report from the agent becomes the work's
  ``Applied`` condition and ``manifestStatuses``; a reported deletion releases the
  work's finalizer. Reports are coalesced per work, so a chatty agent costs at most
  one write per work per pass.
* Binding status (key: a binding key): per-cluster ``aggregatedStatus`` and the
  ``FullyApplied`` condition on the binding, then the template's ``status``,
  aggregated the way Karmada does (Deployments sum their replica counters).
"""

from __future__ import annotations

import logging
from typing import Any

from archipel import structs
from archipel.v1alpha1 import agent_pb2, work_pb2
from controlplane import kinds
from controlplane.conditions import find, set_condition
from controlplane.context import (
    WORK_FINALIZER,
    Context,
    binding_key_of_work,
    is_deleting,
    template_key_of_binding,
    work_key,
)
from controlplane.kinds import Manifest
from controlplane.runtime import Controller, Result

log = logging.getLogger(__name__)

_REPLICA_COUNTERS = (
    "replicas",
    "readyReplicas",
    "updatedReplicas",
    "availableReplicas",
    "unavailableReplicas",
)


class WorkStatusController:
    NAME = "work-status-controller"

    def __init__(self, context: Context) -> None:
        self.context = context
        # Many cheap workers: their writes share etcd transactions (see Etcd.commit_grouped).
        self.controller = Controller(
            self.NAME, self.reconcile, workers=context.settings.workers * 8
        )
        self._reports: dict[str, agent_pb2.WorkStatusReport] = {}
        self._deleted: dict[str, str] = {}  # work key -> uid the agent cleaned up

    def report(self, cluster: str, report: agent_pb2.WorkStatusReport) -> None:
        key = kinds.PROPAGATION_WORK.key(kinds.execution_namespace(cluster), report.name)
        self._reports[key] = report
        self.controller.enqueue(key)

    def deleted(self, cluster: str, deleted: agent_pb2.WorkDeleted) -> None:
        key = kinds.PROPAGATION_WORK.key(kinds.execution_namespace(cluster), deleted.name)
        self._deleted[key] = deleted.uid
        self.controller.enqueue(key)

    async def reconcile(self, key: str) -> Result | None:
        store = self.context.store
        work = self.context.works.get(key)
        if work is None:
            self._reports.pop(key, None)
            self._deleted.pop(key, None)
            return None
        deleted_uid = self._deleted.get(key)
        if deleted_uid is not None and is_deleting(work):
            if deleted_uid in ("", work.metadata.uid):
                await store.remove_finalizer(
                    kinds.PROPAGATION_WORK, kinds.PROPAGATION_WORK.copy(work), WORK_FINALIZER
                )
            self._deleted.pop(key, None)
            return None
        report = self._reports.get(key)
        if report is None or report.uid != work.metadata.uid:
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
            await store.update(kinds.PROPAGATION_WORK, updated, current=work)
        if self._reports.get(key) is report:
            del self._reports[key]
        return None


def aggregate_template_status(
    kind: str, items: list[work_pb2.AggregatedStatusItem], template_generation: int
) -> dict[str, Any] | None:
    """The template's status from its members' reflected statuses."""
    statuses = [structs.from_struct(i.status) for i in items if i.HasField("status")]
    if not statuses:
        return None
    if kind in ("Deployment", "StatefulSet", "ReplicaSet"):
        total: dict[str, Any] = dict.fromkeys(_REPLICA_COUNTERS, 0)
        aligned = len(statuses) == len(items)
        for status in statuses:
            for counter in _REPLICA_COUNTERS:
                value = status.get(counter, 0)
                total[counter] += value if isinstance(value, int) else 0
            # Karmada reports observedGeneration only when every member has caught up
            # with the generation it was given.
            if status.get("observedGeneration", 0) != status.get("generation", -1):
                aligned = False
        if aligned:
            total["observedGeneration"] = template_generation
        return {k: v for k, v in total.items() if v or k in ("replicas", "observedGeneration")}
    if len(statuses) == 1:
        return statuses[0]
    return None


class BindingStatusController:
    NAME = "binding-status-controller"

    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = Controller(self.NAME, self.reconcile, workers=context.settings.workers)
        context.works.add_handler(self._on_work)
        context.bindings.add_handler(self._on_binding)

    def _on_work(
        self, key: str, old: work_pb2.PropagationWork | None, new: work_pb2.PropagationWork | None
    ) -> None:
        if old is None or new is None or old.status != new.status:
            work = new or old
            assert work is not None
            self.controller.enqueue(binding_key_of_work(work))

    def _on_binding(
        self,
        key: str,
        old: work_pb2.PropagationBinding | None,
        new: work_pb2.PropagationBinding | None,
    ) -> None:
        if new is not None and (old is None or old.spec.clusters != new.spec.clusters):
            self.controller.enqueue(key)

    async def reconcile(self, key: str) -> Result | None:
        context = self.context
        binding = context.bindings.get(key)
        if binding is None or is_deleting(binding):
            return None
        items = []
        applied_everywhere = bool(binding.spec.clusters)
        waiting = []
        for target in binding.spec.clusters:
            work = context.works.get(work_key(binding, target.name))
            item = work_pb2.AggregatedStatusItem(cluster_name=target.name, health="Unknown")
            applied = None if work is None else find(work.status.conditions, "Applied")
            if work is not None and applied is not None:
                current = applied.observed_generation == work.metadata.generation
                item.applied = applied.status == "True" and current
                item.applied_message = applied.message
                for manifest in work.status.manifest_statuses[:1]:
                    if manifest.HasField("status"):
                        item.status.CopyFrom(manifest.status)
                    item.health = manifest.health or "Unknown"
            if not item.applied:
                applied_everywhere = False
                waiting.append(target.name)
            items.append(item)
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
        if updated.status != binding.status:
            await context.store.update(kinds.PROPAGATION_BINDING, updated, current=binding)
        await self._update_template(binding, items)
        return None

    async def _update_template(
        self, binding: work_pb2.PropagationBinding, items: list[work_pb2.AggregatedStatusItem]
    ) -> None:
        template = self.context.templates.get(template_key_of_binding(binding))
        if template is None:
            return
        generation = int(template.get("metadata", {}).get("generation", 0))
        status = aggregate_template_status(binding.spec.resource.kind, items, generation)
        if status is None or template.get("status") == status:
            return
        updated: Manifest = kinds.RESOURCE_TEMPLATE.copy(template)
        updated["status"] = status
        await self.context.store.update(kinds.RESOURCE_TEMPLATE, updated, current=template)
