"""How a workload template is read and how each member's manifest is built from it.

Shared by the control plane (policy and binding controllers) and the CLI's offline
``schedule --simulate`` and ``render``, so what they show is what the control plane
does.
"""

from __future__ import annotations

import copy
import logging
import math
from fractions import Fraction
from typing import Any

from archipel import interpreter, quantity
from archipel.core import division, kinds, scheduling
from archipel.core.kinds import Manifest
from archipel.interpreter.base import replica_count
from archipel.v1alpha1 import work_pb2

log = logging.getLogger(__name__)
BUILTIN_INTERPRETERS = interpreter.Registry()
# Besides what the control plane owns, references that only make sense in the
# control plane's own cluster.
_DROPPED_METADATA = (*kinds.SERVER_METADATA_FIELDS, "ownerReferences", "finalizers")


# Where a policy's schedulePriority (priorityClassSource KubePriorityClass) is looked
# up: PriorityClass templates stored in the control plane, as Karmada reads them from
# its own API server.
PRIORITY_CLASS_API_VERSION = "scheduling.k8s.io/v1"
PRIORITY_CLASS_KIND = "PriorityClass"
# Kubernetes' bound for a user PriorityClass's value (higher is kept for system classes).
MAX_PRIORITY = 1_000_000_000


def priority_class_key(name: str) -> str:
    return kinds.template_key(PRIORITY_CLASS_API_VERSION, PRIORITY_CLASS_KIND, "", name)


def priority_value(manifest: Manifest) -> int | None:
    """A PriorityClass template's ``value``, or None when it has no valid one."""
    value = manifest.get("value")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if -(2**31) <= value <= 2 * MAX_PRIORITY else None


def template_replicas(
    manifest: Manifest, interpreters: interpreter.Registry = BUILTIN_INTERPRETERS
) -> int:
    """Replicas as the scheduler counts them (0 for kinds without replicas)."""
    try:
        replicas = interpreters.of(manifest).replicas(manifest)
    except interpreter.InterpreterError as error:
        # The binding still propagates the object, undivided; the log says why.
        log.warning("replicas of %s: %s", _describe(manifest), error)
        return 0
    return replicas or 0


def _describe(manifest: Manifest) -> str:
    metadata = manifest.get("metadata", {})
    return f"{manifest.get('kind')} {metadata.get('namespace', '')}/{metadata.get('name')}"


def pod_spec(
    manifest: Manifest, interpreters: interpreter.Registry = BUILTIN_INTERPRETERS
) -> dict[str, Any] | None:
    """The spec of the workload's pod template, where its interpreter says it is."""
    try:
        template = interpreters.of(manifest).pod_template(manifest)
    except interpreter.InterpreterError as error:
        log.warning("pod template of %s: %s", _describe(manifest), error)
        return None
    pod = (template or {}).get("spec")
    return pod if isinstance(pod, dict) else None


def replica_requests(
    manifest: Manifest, interpreters: interpreter.Registry = BUILTIN_INTERPRETERS
) -> dict[str, str]:
    """What one replica requests: the sum over its containers, in canonical units."""
    pod = pod_spec(manifest, interpreters)
    if pod is None:
        return {}
    totals: dict[str, Fraction] = {}
    for container in pod.get("containers", []) or []:
        requests = ((container or {}).get("resources") or {}).get("requests") or {}
        for resource, amount in requests.items():
            try:
                totals[resource] = totals.get(resource, Fraction(0)) + quantity.parse(amount)
            except quantity.QuantityError:
                continue  # the member API server will refuse it; nothing to estimate
    return {r: _format(r, v) for r, v in totals.items()}


def _format(resource: str, value: Fraction) -> str:
    if resource == "cpu":
        return f"{math.ceil(value * 1000)}m"
    return str(math.ceil(value))


def member_manifest(
    template: Manifest,
    *,
    replicas: int | None,
    interpreters: interpreter.Registry = BUILTIN_INTERPRETERS,
) -> Manifest:
    """What one member receives: the template minus control-plane state, with the
    cluster's share of the replicas written where the kind's interpreter says
    (:class:`interpreter.InterpreterError` when a customization cannot)."""
    manifest: dict[str, Any] = copy.deepcopy(template)
    manifest.pop("status", None)
    metadata = manifest.get("metadata", {})
    for field in _DROPPED_METADATA:
        metadata.pop(field, None)
    kind_interpreter = interpreters.of(manifest)
    if replicas is not None and kind_interpreter.replicas(manifest) is not None:
        manifest = kind_interpreter.revise_replicas(manifest, replicas)
    return manifest


def job_completions(
    template: Manifest, binding: work_pb2.PropagationBinding
) -> dict[str, int] | None:
    """Each cluster's share of a divided Job's ``completions``, or None to leave it as is.

    As Karmada: when a Job's parallelism is divided, its completions are divided in the
    same proportion, so the clusters together run as many pods to completion as the
    template asks for, not that many each.
    """
    if template.get("kind") != "Job":
        return None
    try:
        completions = replica_count((template.get("spec") or {}).get("completions"), "")
    except interpreter.InterpreterError:
        return None  # not a count: the interpreter says so on the binding
    if scheduling.is_duplicated(binding.spec.placement) or not binding.spec.clusters:
        return None
    shares = {t.name: t.replicas for t in binding.spec.clusters}
    return division.webster(completions, shares, seed=division.tie_break_seed(binding.metadata.uid))
