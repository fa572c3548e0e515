"""The status controllers: what agents report flows into works, bindings and templates.

* Work status (key: a work key): the newest report from the agent becomes the work's
  ``Applied`` condition and ``manifestStatuses``; a reported deletion releases the
  work's finalizer. Reports are coalesced per work, so a chatty agent costs at most
  one write per work per pass.
* Binding status (key: a binding key): per-cluster ``aggregatedStatus`` and the
  ``FullyApplied`` condition on the binding, then the template's ``status``,
  aggregated by the kind's interpreter (:mod:`archipel.interpreter`: Deployments sum
  their replica counters, as in Karmada; customizations say for custom kinds).
"""

from __future__ import annotations

import logging
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
from controlplane.plan import Plan
from controlplane.predicates import is_deleting

log = logging.getLogger(__name__)

BUILTIN_INTERPRETERS = interpreter.Registry()


class WorkStatusController:
    NAME = "work-status-controller"

    def __init__(self, context: Context) -> None:
        self.context = context
        # Many cheap workers: their writes share etcd transactions (see Etcd.commit_grouped).
        self.controller = context.controller(
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

    async def reconcile(self, key: str) -> Plan | None:
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
        if new is not None and (
            old is None
            or old.spec.clusters != new.spec.clusters
            or old.spec.required_by != new.spec.required_by
        ):
            self.controller.enqueue(key)

    async def reconcile(self, key: str) -> Plan | None:
        context = self.context
        binding = context.bindings.get(key)
        if binding is None or is_deleting(binding):
            return None
        items = []
        targets = binding_targets(binding)
        applied_everywhere = bool(targets)
        waiting = []
        for cluster, _ in targets:
            work = context.works.get(work_key(binding, cluster))
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
                applied_everywhere = False
                waiting.append(cluster)
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

    async def _record_aggregation(self, binding: work_pb2.PropagationBinding, error: str) -> None:
        """The StatusAggregated condition: only ever written when aggregation failed once."""
        current = self.context.bindings.get(kinds.PROPAGATION_BINDING.key_of(binding)) or binding
        if not error and find(current.status.conditions, "StatusAggregated") is None:
            return
        updated = kinds.PROPAGATION_BINDING.copy(current)
        changed = set_condition(
            updated.status.conditions,
            "StatusAggregated",
            "False" if error else "True",
            "InterpreterError" if error else "Aggregated",
            error or "the template's status is aggregated from its clusters",
            current.metadata.generation,
        )
        if changed:
            await self.context.store.update(kinds.PROPAGATION_BINDING, updated, current=current)

    async def _update_template(
        self, binding: work_pb2.PropagationBinding, items: list[work_pb2.AggregatedStatusItem]
    ) -> None:
        template = self.context.templates.get(template_key_of_binding(binding))
        if template is None:
            return
        generation = int(template.get("metadata", {}).get("generation", 0))
        try:
            status = aggregate_template_status(
                binding.spec.resource, items, generation, self.context.interpreters
            )
        except interpreter.InterpreterError as error:
            # Only this template's status stands still; the binding says why.
            await self._record_aggregation(binding, str(error))
            return
        await self._record_aggregation(binding, "")
        if status is None or template.get("status") == status:
            return
        updated: Manifest = kinds.RESOURCE_TEMPLATE.copy(template)
        updated["status"] = status
        await self.context.store.update(kinds.RESOURCE_TEMPLATE, updated, current=template)
