"""The scheduler controller: decides each binding's target clusters.

Key: a binding key. It runs :func:`archipel.core.scheduling.schedule` over a snapshot
of the member clusters and writes the result into ``spec.clusters`` and the
``Scheduled`` condition. Any change to a member cluster (joined, removed, relabelled,
tainted) requeues every binding, so placement follows the fleet.
"""

from __future__ import annotations

import dataclasses

from archipel.core import division, kinds, scheduling
from archipel.core.conditions import find, set_condition
from archipel.core.errors import Invalid
from archipel.v1alpha1 import cluster_pb2, work_pb2
from controlplane.context import Context
from controlplane.plan import Plan
from controlplane.predicates import is_deleting

NAME = "scheduler"


class SchedulerController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(NAME, self.reconcile)
        self._snapshot: dict[str, scheduling.ClusterInfo] = {}
        self._assumed = scheduling.AssumedCapacity()
        context.bindings.add_handler(self._on_binding)
        context.clusters.add_handler(self._on_cluster)

    def _on_binding(
        self,
        key: str,
        old: work_pb2.PropagationBinding | None,
        new: work_pb2.PropagationBinding | None,
    ) -> None:
        if new is not None and (old is None or old.metadata.generation != new.metadata.generation):
            self.controller.enqueue(key)

    def _on_cluster(
        self,
        key: str,
        old: cluster_pb2.MemberCluster | None,
        new: cluster_pb2.MemberCluster | None,
    ) -> None:
        # The snapshot scheduling reads is kept here, so a reconcile never rebuilds it.
        after = scheduling.ClusterInfo.from_proto(new) if new is not None else None
        before = self._snapshot.get(key)
        if after is None:
            self._snapshot.pop(key, None)
        else:
            self._snapshot[key] = after
        if before == after:
            return
        if before is None or after is None or before.free != after.free:
            # New figures from the agent already count what was handed out.
            self._assumed.reported(key.rsplit("/", 1)[-1])
        if (
            before is not None
            and after is not None
            and dataclasses.replace(before, free=None) == dataclasses.replace(after, free=None)
        ):
            # Only free capacity moved (it does with every heartbeat): reschedule just
            # the bindings that could not be placed, so that nothing placed churns.
            for binding in self.context.bindings.objects():
                condition = find(binding.status.conditions, "Scheduled")
                if condition is not None and condition.status == "False":
                    self.controller.enqueue(kinds.PROPAGATION_BINDING.key_of(binding))
            return
        for binding_key in self.context.bindings.list_keys():
            self.controller.enqueue(binding_key)

    async def reconcile(self, key: str) -> Plan | None:
        binding = self.context.bindings.get(key)
        if binding is None or is_deleting(binding) or not binding.spec.policy.kind:
            return None  # a binding with no policy only follows the workloads requiring it
        clusters = self._assumed.apply(list(self._snapshot.values()))
        spec = binding.spec
        fresh = spec.HasField("reschedule_triggered_at") and (
            not binding.status.HasField("last_scheduled_time")
            or spec.reschedule_triggered_at.ToDatetime()
            > binding.status.last_scheduled_time.ToDatetime()
        )
        try:
            requests = scheduling.parse_requests(spec.replica_requirements.resource_request)
        except Invalid as error:
            requests, invalid = {}, str(error)
        else:
            invalid = ""
        decision = scheduling.schedule(
            spec.placement,
            replicas=spec.replicas,
            clusters=clusters,
            current={t.name: t.replicas for t in spec.clusters},
            requests=requests,
            seed=division.tie_break_seed(binding.metadata.uid),
            fresh=fresh,
            resource=(spec.resource.api_version, spec.resource.kind),
        )
        if invalid:
            decision = scheduling.Decision((), "SchedulerError", invalid)
        updated = kinds.PROPAGATION_BINDING.copy(binding)
        del updated.spec.clusters[:]
        for target in decision.targets:
            updated.spec.clusters.add(name=target.name, replicas=target.replicas)
        spec_changed = updated.spec != binding.spec
        generation = binding.metadata.generation + (1 if spec_changed else 0)
        set_condition(
            updated.status.conditions,
            "Scheduled",
            "True" if decision.scheduled else "False",
            decision.reason,
            decision.message,
            generation,
        )
        updated.status.scheduler_observed_generation = generation
        if spec_changed:
            updated.status.last_scheduled_time.GetCurrentTime()
        if updated != binding:
            await self.context.store.update(kinds.PROPAGATION_BINDING, updated, current=binding)
            if spec_changed:
                self._assumed.assume(
                    {t.name: t.replicas for t in binding.spec.clusters},
                    {t.name: t.replicas for t in updated.spec.clusters},
                    requests,
                )
        return None
