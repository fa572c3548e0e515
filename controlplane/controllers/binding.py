"""The binding controller: one PropagationWork per target cluster of each binding.

Key: a binding key. Each work holds the final manifest for its cluster (the template
without the fields the control plane owns, with the cluster's replica count) and
lives in the cluster's execution namespace. Works for clusters the binding no longer
targets are deleted, which removes their objects from those members. A deleting
binding deletes all its works first (orphaning the objects when the binding asks to
preserve them) and lets go of its finalizer once they are gone.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from archipel import interpreter, limits, structs
from archipel.core import eviction, kinds, overrides
from archipel.core.conditions import find, set_condition
from archipel.core.kinds import Manifest
from archipel.core.names import (
    APPLIED_CLUSTER_OVERRIDES_ANNOTATION,
    APPLIED_OVERRIDES_ANNOTATION,
    BINDING_NAME_LABEL,
    BINDING_NAMESPACE_LABEL,
    CLUSTER_LABEL,
    TEMPLATE_GENERATION_ANNOTATION,
)
from archipel.core.scheduling import ClusterInfo
from archipel.core.workloads import job_completions, member_manifest
from archipel.v1alpha1 import cluster_pb2, override_pb2, work_pb2
from controlplane.context import (
    FINALIZER,
    WORK_FINALIZER,
    Context,
    binding_key_of_work,
    binding_key_of_work_key,
    binding_targets,
    kept_evictions,
    template_key_of_binding,
    work_name,
)
from controlplane.plan import Plan
from controlplane.predicates import (
    generation_changed,
    is_deleting,
    labels_changed,
    lifecycle_changed,
    spec_changed,
    template_changed,
)

NAME = "binding-controller"
BUILTIN_INTERPRETERS = interpreter.Registry()


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


@dataclasses.dataclass(frozen=True)
class BindingObserved:
    """What the binding controller decides from, for one binding."""

    binding: work_pb2.PropagationBinding
    template: Manifest | None
    works: dict[str, work_pb2.PropagationWork]
    """The binding's readable works, by cluster."""
    quarantined: dict[str, tuple[str, int, str]]
    """The binding's works that cannot be decoded: key -> (cluster, mod_revision, why)."""
    clusters: dict[str, cluster_pb2.MemberCluster]
    """The member clusters its targets and works name, those that exist."""
    overrides: Sequence[overrides.Policy] = ()
    """The override policies that select the template, in the order they apply."""
    interpreters: interpreter.Registry = BUILTIN_INTERPRETERS

    def cluster_gone(self, name: str) -> bool:
        cluster = self.clusters.get(name)
        return cluster is None or is_deleting(cluster)


def plan(observed: BindingObserved) -> Plan | None:
    """The writes that make a binding's works what its template, schedule and overrides
    say: one work per target cluster, none elsewhere. A deleting binding deletes its
    works first and lets go of its finalizer once they are gone."""
    binding = observed.binding
    if is_deleting(binding):
        return _plan_deletion(observed)
    if FINALIZER not in binding.metadata.finalizers:
        finalized = kinds.PROPAGATION_BINDING.copy(binding)
        finalized.metadata.finalizers.append(FINALIZER)
        result = Plan()
        result.update(kinds.PROPAGATION_BINDING, finalized, current=binding)
        return result
    template = observed.template
    if template is None:
        return None  # the policy controller removes the binding
    result = Plan()
    existing = dict(observed.works)
    # Works that could not be decoded are rewritten, or purged when no longer wanted.
    replacing: dict[str, int] = {}
    rewritten: list[str] = []
    for cluster, mod_revision, reason in observed.quarantined.values():
        existing.pop(cluster, None)  # a cached last good copy is stale
        replacing[cluster] = mod_revision
        rewritten.append(f"{cluster}: the stored work could not be decoded ({reason})")
    generation = str(template["metadata"].get("generation", 0))
    # Most targets get the same manifest (same replicas, no overrides): build each
    # distinct one once, not once per cluster.
    workloads: dict[
        tuple[int | None, int | None, tuple[str, ...], tuple[tuple[str, str], ...]],
        work_pb2.WorkloadTemplate,
    ] = {}
    policies = observed.overrides
    override_failures: list[str] = []
    interpreter_failures: list[str] = []
    # Where the workload is scheduled, and where an evicted copy is kept for now.
    targets = binding_targets(binding) + kept_evictions(binding)
    completions = job_completions(template, binding) or {}
    for cluster, replicas in targets:
        if observed.cluster_gone(cluster):
            continue  # never create work for a cluster that is leaving
        member = observed.clusters[cluster]
        cluster_info = ClusterInfo.from_proto(member) if policies else None
        rules: tuple[str, ...] = ()
        if cluster_info is not None:
            rules = tuple(
                f"{p.metadata.namespace}/{p.metadata.name}/{where}"
                for p in policies
                for where, _ in overrides.rules_for(p, cluster_info)
            )
        share = completions.get(cluster)
        # statePreservation: a cluster the workload moved to carries the old copy's state.
        preserved = tuple(sorted(eviction.preserved_labels(binding, cluster).items()))
        workload = workloads.get((replicas, share, rules, preserved))
        if workload is None:
            try:
                manifest = member_manifest(
                    template, replicas=replicas, interpreters=observed.interpreters
                )
                if share is not None:
                    manifest["spec"]["completions"] = share
                if preserved:
                    manifest["metadata"].setdefault("labels", {}).update(dict(preserved))
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
            workloads[(replicas, share, rules, preserved)] = workload
        applied = (
            applied_overrides(policies, cluster_info) if rules and cluster_info is not None else {}
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
            result.create(kinds.PROPAGATION_WORK, new, replacing=replacing.get(cluster, 0))
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
            result.update(kinds.PROPAGATION_WORK, updated, current=work)
    conditions = _conditions(
        binding,
        override_failures,
        interpreter_failures,
        rewritten,
        overrides_in_play=bool(policies),
    )
    if conditions is not None:
        result.update(kinds.PROPAGATION_BINDING, conditions, current=binding)
    targeted = {name for name, _ in targets if not observed.cluster_gone(name)}
    for cluster, work in existing.items():
        if cluster not in targeted:
            _release(result, work, preserve=False, cluster_gone=observed.cluster_gone(cluster))
    for work_key, (cluster, mod_revision, _) in observed.quarantined.items():
        if cluster not in targeted:
            result.purge(work_key, mod_revision)
    return result


def _plan_deletion(observed: BindingObserved) -> Plan:
    binding = observed.binding
    result = Plan()
    for cluster, work in observed.works.items():
        _release(
            result,
            work,
            preserve=binding.spec.preserve_resources_on_deletion,
            cluster_gone=observed.cluster_gone(cluster),
        )
    for work_key, (_, mod_revision, _) in observed.quarantined.items():
        # Unreadable, so its finalizers cannot be honoured: it goes at once.
        result.purge(work_key, mod_revision)
    if not observed.works and not observed.quarantined and FINALIZER in binding.metadata.finalizers:
        released = kinds.PROPAGATION_BINDING.copy(binding)
        released.metadata.finalizers.remove(FINALIZER)
        result.update(kinds.PROPAGATION_BINDING, released, current=binding)
    return result


def _release(
    result: Plan, work: work_pb2.PropagationWork, *, preserve: bool, cluster_gone: bool
) -> None:
    """Delete a work (keeping its objects in the member when ``preserve``)."""
    finalizers = list(work.metadata.finalizers)
    if cluster_gone and WORK_FINALIZER in finalizers:
        # The cluster is leaving: no agent will confirm a cleanup.
        finalizers.remove(WORK_FINALIZER)
    elif is_deleting(work):
        return  # already on its way; the agent confirms
    marked = kinds.PROPAGATION_WORK.copy(work)
    marked.metadata.ClearField("finalizers")
    marked.metadata.finalizers.extend(finalizers)
    if preserve:
        # Written with the deletion, so the agent knows to orphan rather than delete.
        marked.spec.preserve_resources_on_deletion = True
    result.delete(kinds.PROPAGATION_WORK, work, marked=marked)


def _conditions(
    binding: work_pb2.PropagationBinding,
    override_failures: list[str],
    interpreter_failures: list[str],
    rewritten: list[str],
    *,
    overrides_in_play: bool,
) -> work_pb2.PropagationBinding | None:
    """The binding with ``OverridesApplied``, ``Interpreted`` and ``WorksReadable`` as
    they now stand, or None when they need no write. Each is written once it has had
    something to say, so most bindings carry none of them."""
    conditions = binding.status.conditions
    say_overrides = bool(
        overrides_in_play or override_failures or find(conditions, "OverridesApplied")
    )
    say_interpreted = bool(interpreter_failures or find(conditions, "Interpreted"))
    say_readable = bool(rewritten or find(conditions, "WorksReadable"))
    if not say_overrides and not say_interpreted and not say_readable:
        return None  # the common case, on the hot path: nothing to copy or write
    updated = kinds.PROPAGATION_BINDING.copy(binding)
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
                binding.metadata.generation,
            )
    return updated if changed else None


class BindingController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(NAME, self.reconcile)
        context.bindings.add_handler(self._on_binding)
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
        if generation_changed(old, new) or lifecycle_changed(old, new):
            self.controller.enqueue(key)

    def _on_work(
        self, key: str, old: work_pb2.PropagationWork | None, new: work_pb2.PropagationWork | None
    ) -> None:
        # Only a work's disappearance or an edit by someone else matters here.
        if new is None or (old is not None and spec_changed(old, new)):
            work = new or old
            assert work is not None
            self.controller.enqueue(binding_key_of_work(work))

    def _on_template(self, key: str, old: Manifest | None, new: Manifest | None) -> None:
        # A template change reaches its works through the binding; its status does not.
        if template_changed(old, new):
            for binding_key in self.context.binding_keys_of(key):
                self.controller.enqueue(binding_key)

    def _on_override(self, key: str, old: object, new: object) -> None:
        # An override policy can change the works of any binding in its scope.
        namespace = key.split("/")[1]
        prefix = kinds.PROPAGATION_BINDING.prefix("" if namespace == "_" else namespace)
        for binding_key in self.context.bindings.list_keys(prefix):
            self.controller.enqueue(binding_key)

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
            and (labels_changed(old, new) or spec_changed(old, new))
        )
        if gone or relabelled:
            name = (new or old).metadata.name  # type: ignore[union-attr]
            for work in self.context.works.by_index("cluster", name):
                self.controller.enqueue(binding_key_of_work(work))

    async def observe(self, key: str) -> BindingObserved | None:
        """The binding's view from the caches, once they hold the template it was
        made from."""
        context = self.context
        binding = context.bindings.get(key)
        if binding is None:
            return None
        template_key = template_key_of_binding(binding)
        template = context.templates.get(template_key)
        wanted_version = binding.spec.resource.resource_version
        if (
            template is not None
            and wanted_version
            and int(template["metadata"].get("resourceVersion", "0")) < int(wanted_version)
        ):
            # The binding was made from a newer template than the cache holds.
            await context.templates.wait_for_revision(int(wanted_version))
            template = context.templates.get(template_key)
        works = {
            w.metadata.labels.get(CLUSTER_LABEL, ""): w
            for w in context.works.by_index("binding", key)
        }
        quarantined = {
            work_key: (
                kinds.cluster_of_execution_namespace(work_key.split("/")[1]) or "",
                mod_revision,
                reason,
            )
            for work_key, (mod_revision, reason) in context.works.quarantined.items()
            if binding_key_of_work_key(work_key) == key
        }
        names = {name for name, _ in binding_targets(binding) + kept_evictions(binding)}
        names |= set(works)
        names |= {cluster for cluster, _, _ in quarantined.values()}
        clusters = {}
        for name in names:
            cluster = context.clusters.get(kinds.MEMBER_CLUSTER.key("", name))
            if cluster is not None:
                clusters[name] = cluster
        policies: Sequence[overrides.Policy] = ()
        if template is not None and not is_deleting(binding):
            policies = overrides.ordered(
                template,
                context.overrides.objects(kinds.OVERRIDE_POLICY.prefix(binding.metadata.namespace))
                if binding.metadata.namespace
                else (),
                context.cluster_overrides.objects(),
            )
        return BindingObserved(
            binding=binding,
            template=template,
            works=works,
            quarantined=quarantined,
            clusters=clusters,
            overrides=policies,
            interpreters=context.interpreters,
        )

    async def reconcile(self, key: str) -> Plan | None:
        observed = await self.observe(key)
        return plan(observed) if observed is not None else None


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
