"""The binding controller: one PropagationWork per target cluster of each binding.

Key: a binding key. Each work holds the final manifest for its cluster (the template
without the fields the control plane owns, with the cluster's replica count) and
lives in the cluster's execution namespace. Works for clusters the binding no longer
targets are deleted, which removes their objects from those members. A deleting
binding deletes all its works first (orphaning the objects when the binding asks to
preserve them) and lets go of its finalizer once they are gone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from typing import Any

from archipel import interpreter, limits, structs
from archipel.core import kinds, overrides
from archipel.core.conditions import find, set_condition
from archipel.core.kinds import Manifest
from archipel.core.scheduling import ClusterInfo
from archipel.core.workloads import job_completions, member_manifest
from archipel.v1alpha1 import cluster_pb2, override_pb2, work_pb2
from controlplane.context import (
    BINDING_NAME_LABEL,
    BINDING_NAMESPACE_LABEL,
    CLUSTER_LABEL,
    FINALIZER,
    TEMPLATE_GENERATION_ANNOTATION,
    WORK_FINALIZER,
    Context,
    binding_key_of_work,
    binding_key_of_work_key,
    binding_targets,
    delete_object,
    template_key_of_binding,
    work_name,
)
from controlplane.plan import Plan
from controlplane.predicates import is_deleting, template_changed

NAME = "binding-controller"
BUILTIN_INTERPRETERS = interpreter.Registry()
# Which override policies shaped a work, in the order they applied (Karmada's keys).
APPLIED_OVERRIDES_ANNOTATION = "policy.karmada.io/applied-overrides"
APPLIED_CLUSTER_OVERRIDES_ANNOTATION = "policy.karmada.io/applied-cluster-overrides"


def applied_overrides(policies: Sequence[overrides.Policy], cluster: ClusterInfo) -> dict[str, str]:
    """The applied-overrides annotations of a work for ``cluster`` (JSON lists, in order)."""
    namespaced: list[dict[str, str]] = []
    cluster_wide: list[dict[str, str]] = []
    for policy in policies:
        if not overrides.rules_for(policy, cluster):
            continue
        if isinstance(policy, override_pb2.ClusterOverridePolicy):
            cluster_wide.append({"policyName": policy.metadata.name})
        else:
            namespaced.append(
                {"policyName": policy.metadata.name, "policyNamespace": policy.metadata.namespace}
            )
    found = {
        APPLIED_CLUSTER_OVERRIDES_ANNOTATION: cluster_wide,
        APPLIED_OVERRIDES_ANNOTATION: namespaced,
    }
    return {key: json.dumps(value, separators=(",", ":")) for key, value in found.items() if value}


_APPLIED_KEYS = (APPLIED_OVERRIDES_ANNOTATION, APPLIED_CLUSTER_OVERRIDES_ANNOTATION)


def _recorded_overrides(annotations: Any) -> dict[str, str]:
    return {key: annotations[key] for key in _APPLIED_KEYS if key in annotations}


def _annotate(annotations: Any, wanted: dict[str, str]) -> None:
    """Make the applied-overrides annotations say ``wanted``."""
    for key in _APPLIED_KEYS:
        if key in wanted:
            annotations[key] = wanted[key]
        elif key in annotations:
            del annotations[key]


class BindingController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(NAME, self.reconcile)
        context.bindings.add_handler(self._on_binding)
        # The etcd revision of each binding's last work writes: until the work cache has
        # seen it, a reconcile would act on a stale view and write twice.
        self._written_at: dict[str, int] = {}
        context.works.add_handler(self._on_work)
        context.works.add_quarantine_handler(
            lambda key, reason: self.controller.enqueue(binding_key_of_work_key(key))
        )
        context.templates.add_handler(self._on_template)
        context.clusters.add_handler(self._on_cluster)
        context.overrides.add_handler(self._on_override)
        context.cluster_overrides.add_handler(self._on_override)

    def _on_binding(
        self,
        key: str,
        old: work_pb2.PropagationBinding | None,
        new: work_pb2.PropagationBinding | None,
    ) -> None:
        # Status updates (scheduling conditions, aggregated status) change no work.
        if (
            old is None
            or new is None
            or old.metadata.generation != new.metadata.generation
            or old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
            or list(old.metadata.finalizers) != list(new.metadata.finalizers)
        ):
            self.controller.enqueue(key)

    def _on_work(
        self, key: str, old: work_pb2.PropagationWork | None, new: work_pb2.PropagationWork | None
    ) -> None:
        # Only a work's disappearance or an edit by someone else matters here.
        if new is None or (old is not None and old.spec != new.spec):
            work = new or old
            assert work is not None
            self.controller.enqueue(binding_key_of_work(work))

    def _on_template(self, key: str, old: Manifest | None, new: Manifest | None) -> None:
        # A template change reaches its works through the binding; its status does not.
        if template_changed(old, new):
            for binding_key in self.context.binding_keys_of(key):
                self.controller.enqueue(binding_key)

    def _cluster_info(self, name: str) -> ClusterInfo | None:
        cluster = self.context.clusters.get(kinds.MEMBER_CLUSTER.key("", name))
        return ClusterInfo.from_proto(cluster) if cluster is not None else None

    async def _record_conditions(
        self,
        binding: work_pb2.PropagationBinding,
        override_failures: list[str],
        interpreter_failures: list[str],
        rewritten: list[str],
        *,
        overrides_in_play: bool,
    ) -> None:
        """``OverridesApplied``, ``Interpreted`` and ``WorksReadable``: each written once it
        has had something to say, so most bindings carry none of them."""
        current = self.context.bindings.get(kinds.PROPAGATION_BINDING.key_of(binding)) or binding
        conditions = current.status.conditions
        say_overrides = bool(
            overrides_in_play or override_failures or find(conditions, "OverridesApplied")
        )
        say_interpreted = bool(interpreter_failures or find(conditions, "Interpreted"))
        say_readable = bool(rewritten or find(conditions, "WorksReadable"))
        if not say_overrides and not say_interpreted and not say_readable:
            return  # the common case, on the hot path: nothing to copy or write
        updated = kinds.PROPAGATION_BINDING.copy(current)
        changed = False
        last_good = " (the last good work stays in place)"
        # (type, whether to write it, failures, reason on failure, what failure means,
        # message when all is well)
        verdicts = (
            (
                "OverridesApplied",
                say_overrides,
                override_failures,
                "OverrideFailed",
                last_good,
                "every override applied",
            ),
            (
                "Interpreted",
                say_interpreted,
                interpreter_failures,
                "InterpreterError",
                last_good,
                "the kind's interpreter read the template",
            ),
            (
                "WorksReadable",
                say_readable,
                rewritten,
                "Quarantined",
                " (rewritten from the template)",
                "every work decodes",
            ),
        )
        for type_, say, failures, failed_reason, meaning, fine in verdicts:
            if say:
                changed |= set_condition(
                    updated.status.conditions,
                    type_,
                    "False" if failures else "True",
                    failed_reason if failures else type_,
                    "; ".join(failures) + meaning if failures else fine,
                    current.metadata.generation,
                )
        if changed:
            await self.context.store.update(kinds.PROPAGATION_BINDING, updated, current=current)

    def _on_override(self, key: str, old: object, new: object) -> None:
        # An override policy can change the works of any binding in its scope.
        namespace = key.split("/")[1]
        prefix = kinds.PROPAGATION_BINDING.prefix("" if namespace == "_" else namespace)
        for binding_key in self.context.bindings.list_keys(prefix):
            self.controller.enqueue(binding_key)

    def _cluster_gone(self, name: str) -> bool:
        cluster = self.context.clusters.get(kinds.MEMBER_CLUSTER.key("", name))
        return cluster is None or is_deleting(cluster)

    def _on_cluster(
        self,
        key: str,
        old: cluster_pb2.MemberCluster | None,
        new: cluster_pb2.MemberCluster | None,
    ) -> None:
        gone = new is None or is_deleting(new)
        # Overrides target clusters by name, labels and topology: those matter too.
        relabelled = (
            old is not None
            and new is not None
            and (old.metadata.labels != new.metadata.labels or old.spec != new.spec)
        )
        if gone or relabelled:
            name = (new or old).metadata.name  # type: ignore[union-attr]
            for work in self.context.works.by_index("cluster", name):
                self.controller.enqueue(binding_key_of_work(work))

    async def _delete_works(self, works: list[work_pb2.PropagationWork], *, preserve: bool) -> None:
        store = self.context.store
        for work in works:
            cluster = work.metadata.labels.get(CLUSTER_LABEL, "")
            if self._cluster_gone(cluster) and WORK_FINALIZER in work.metadata.finalizers:
                # The cluster is leaving: no agent will confirm a cleanup.
                released = kinds.PROPAGATION_WORK.copy(work)
                released.metadata.finalizers.remove(WORK_FINALIZER)
                work = await store.update(kinds.PROPAGATION_WORK, released, current=work)
                if is_deleting(work):
                    continue
            if not is_deleting(work):
                await delete_object(
                    store, kinds.PROPAGATION_WORK, work, preserve_resources=preserve
                )

    async def reconcile(self, key: str) -> Plan | None:
        context = self.context
        store = context.store
        binding = context.bindings.get(key)
        if binding is None:
            self._written_at.pop(key, None)
            return None
        # Our last writes must be in the cache, or this pass would write them again.
        await context.works.wait_for_revision(self._written_at.get(key, 0))
        works = context.works.by_index("binding", key)
        if is_deleting(binding):
            await self._delete_works(works, preserve=binding.spec.preserve_resources_on_deletion)
            if not works:
                await store.remove_finalizer(
                    kinds.PROPAGATION_BINDING, kinds.PROPAGATION_BINDING.copy(binding), FINALIZER
                )
            return None
        if FINALIZER not in binding.metadata.finalizers:
            finalized = kinds.PROPAGATION_BINDING.copy(binding)
            finalized.metadata.finalizers.append(FINALIZER)
            await store.update(kinds.PROPAGATION_BINDING, finalized, current=binding)
            return None
        template = context.templates.get(template_key_of_binding(binding))
        if template is None:
            return None  # the policy controller removes the binding
        wanted_version = binding.spec.resource.resource_version
        if wanted_version and int(template["metadata"].get("resourceVersion", "0")) < int(
            wanted_version
        ):
            # The binding was made from a newer template than the cache holds.
            await context.templates.wait_for_revision(int(wanted_version))
            template = context.templates.get(template_key_of_binding(binding))
            if template is None:
                return None
        existing = {w.metadata.labels.get(CLUSTER_LABEL, ""): w for w in works}
        # Works that could not be decoded are rewritten, or deleted when no longer wanted.
        quarantined = {
            work_key: reason
            for work_key, (_, reason) in context.works.quarantined.items()
            if binding_key_of_work_key(work_key) == key
        }
        rewritten: list[str] = []
        for work_key, reason in quarantined.items():
            cluster = kinds.cluster_of_execution_namespace(work_key.split("/")[1]) or ""
            existing.pop(cluster, None)  # a cached last good copy is stale
            rewritten.append(f"{cluster}: the stored work could not be decoded ({reason})")
        generation = str(template["metadata"].get("generation", 0))
        writes: list[Awaitable[work_pb2.PropagationWork]] = []
        # Most targets get the same manifest (same replicas, no overrides): build each
        # distinct one once, not once per cluster.
        workloads: dict[
            tuple[int | None, int | None, tuple[str, ...]], work_pb2.WorkloadTemplate
        ] = {}
        policies = overrides.ordered(
            template,
            context.overrides.objects(kinds.OVERRIDE_POLICY.prefix(binding.metadata.namespace))
            if binding.metadata.namespace
            else (),
            context.cluster_overrides.objects(),
        )
        override_failures: list[str] = []
        interpreter_failures: list[str] = []
        targets = binding_targets(binding)
        completions = job_completions(template, binding) or {}
        for cluster, replicas in targets:
            if self._cluster_gone(cluster):
                continue  # never create work for a cluster that is leaving
            cluster_info = self._cluster_info(cluster) if policies else None
            rules: tuple[str, ...] = ()
            if cluster_info is not None:
                rules = tuple(
                    f"{p.metadata.namespace}/{p.metadata.name}/{where}"
                    for p in policies
                    for where, _ in overrides.rules_for(p, cluster_info)
                )
            share = completions.get(cluster)
            workload = workloads.get((replicas, share, rules))
            if workload is None:
                try:
                    manifest = member_manifest(
                        template, replicas=replicas, interpreters=context.interpreters
                    )
                    if share is not None:
                        manifest["spec"]["completions"] = share
                    if rules and cluster_info is not None:
                        manifest, _ = overrides.apply(manifest, policies, cluster_info)
                except overrides.OverrideError as error:
                    # Keep this cluster's last good work; say why on the binding.
                    override_failures.append(f"{cluster}: {error}")
                    continue
                except interpreter.InterpreterError as error:
                    interpreter_failures.append(f"{cluster}: {error}")
                    continue
                too_much = _beyond_limits(manifest)
                if too_much:
                    # A work nobody could decode would stop its cluster's stream.
                    failures = override_failures if rules else interpreter_failures
                    failures.append(f"{cluster}: {too_much}")
                    continue
                workload = work_pb2.WorkloadTemplate(manifests=[structs.to_struct(manifest)])
                workloads[(replicas, share, rules)] = workload
            applied = (
                applied_overrides(policies, cluster_info)
                if rules and cluster_info is not None
                else {}
            )
            spec = work_pb2.PropagationWorkSpec(
                conflict_resolution=binding.spec.conflict_resolution,
                preserve_resources_on_deletion=binding.spec.preserve_resources_on_deletion,
                suspend_dispatching=_suspended(binding, cluster),
            )
            spec.workload.CopyFrom(workload)
            work = existing.get(cluster)
            if work is None:
                new = work_pb2.PropagationWork(
                    api_version=kinds.PROPAGATION_WORK.api_version, kind="PropagationWork"
                )
                new.metadata.name = work_name(binding)
                new.metadata.namespace = kinds.execution_namespace(cluster)
                new.metadata.labels[BINDING_NAMESPACE_LABEL] = binding.metadata.namespace
                new.metadata.labels[BINDING_NAME_LABEL] = binding.metadata.name
                new.metadata.labels[CLUSTER_LABEL] = cluster
                new.metadata.finalizers.append(WORK_FINALIZER)
                new.metadata.annotations[TEMPLATE_GENERATION_ANNOTATION] = generation
                _annotate(new.metadata.annotations, applied)
                new.spec.CopyFrom(spec)
                writes.append(context.create_derived(context.works, new))
            elif is_deleting(work):
                # Recreated once the old one is gone: its deletion enqueues us (_on_work).
                continue
            elif (
                work.spec != spec
                or work.metadata.annotations.get(TEMPLATE_GENERATION_ANNOTATION) != generation
                or _recorded_overrides(work.metadata.annotations) != applied
            ):
                updated = kinds.PROPAGATION_WORK.copy(work)
                updated.spec.CopyFrom(spec)
                updated.metadata.annotations[TEMPLATE_GENERATION_ANNOTATION] = generation
                _annotate(updated.metadata.annotations, applied)
                writes.append(store.update(kinds.PROPAGATION_WORK, updated, current=work))
        # All of a binding's works go to etcd together: the store groups concurrent
        # writes into shared transactions.
        written = await asyncio.gather(*writes)
        if written:
            self._written_at[key] = max(int(w.metadata.resource_version) for w in written)
        await self._record_conditions(
            binding,
            override_failures,
            interpreter_failures,
            rewritten,
            overrides_in_play=bool(policies),
        )
        targeted = {name for name, _ in targets if not self._cluster_gone(name)}
        stale = [w for cluster, w in existing.items() if cluster not in targeted]
        await self._delete_works(stale, preserve=False)
        for work_key in quarantined:
            cluster = kinds.cluster_of_execution_namespace(work_key.split("/")[1]) or ""
            if cluster not in targeted:
                await store.delete(kinds.PROPAGATION_WORK, work_key)
        return None


def _beyond_limits(manifest: Manifest) -> str:
    """Why a work of ``manifest`` would break a limit, or "" (overrides can deepen or grow
    a template that admission let through, and so can templates stored before it)."""
    if limits.depth(manifest) > limits.MAX_MANIFEST_DEPTH:
        return f"the manifest is nested deeper than {limits.MAX_MANIFEST_DEPTH} levels"
    size = len(kinds.RESOURCE_TEMPLATE.encode(manifest))
    if size > limits.MAX_OBJECT_BYTES:
        return f"the manifest is {size} bytes, more than {limits.MAX_OBJECT_BYTES}"
    return ""


def _suspended(binding: work_pb2.PropagationBinding, cluster: str) -> bool:
    suspension = binding.spec.suspension
    if suspension.HasField("dispatching") and suspension.dispatching:
        return True
    return cluster in suspension.dispatching_on_clusters.cluster_names
