"""How the controllers that own bindings (policy, namespace) create and let go of them.

Both derive a template's binding from what they observed: they create it the same way
(repairing an undecodable value at its key), and let it go the same way: a binding that
workloads still require (``requiredBy``) is kept for them alone, any other is deleted,
orphaning its member objects when asked. Pure: each returns the one write as a
:class:`~controlplane.plan.Plan`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

from archipel.core import kinds
from archipel.core.kinds import Manifest
from archipel.v1alpha1 import work_pb2
from controlplane.context import FINALIZER
from controlplane.plan import Plan

log = logging.getLogger(__name__)


def create(
    template: Manifest, spec: work_pb2.PropagationBindingSpec, *, name: str, quarantined: int
) -> Plan:
    """The template's first binding, ``name``d as the context chose; written over the
    undecodable value at revision ``quarantined`` (0: none), since bindings are derived
    and a corrupted one is repaired by writing what it should be."""
    new = work_pb2.PropagationBinding(
        api_version=kinds.PROPAGATION_BINDING.api_version, kind="PropagationBinding"
    )
    new.metadata.name = name
    new.metadata.namespace = template["metadata"].get("namespace", "")
    new.metadata.finalizers.append(FINALIZER)
    new.spec.CopyFrom(spec)
    result = Plan()
    result.create(kinds.PROPAGATION_BINDING, new, replacing=quarantined)
    if quarantined:
        key = kinds.PROPAGATION_BINDING.key_of(new)
        result.committed.append(functools.partial(log.warning, "rewrote undecodable %s", key))
    return result


def keep_as_dependency(binding: work_pb2.PropagationBinding) -> Plan | None:
    """Drop what the policy (or auto-propagation) asked for; what requires the object
    keeps it in place."""
    if not binding.spec.policy.kind and not binding.spec.auto_propagated:
        return None  # already only a dependency
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    updated.spec.Clear()
    updated.spec.resource.CopyFrom(binding.spec.resource)
    updated.spec.required_by.extend(binding.spec.required_by)
    result = Plan()
    result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
    return result


def release(binding: work_pb2.PropagationBinding, *, orphan: bool) -> Plan:
    """Delete the binding; with ``orphan`` its objects stay in the members.

    The flag is written with the deletion mark, so whoever finishes the deletion (the
    binding controller, then the agents) knows to orphan rather than delete.
    """
    marked = None
    if orphan and not binding.spec.preserve_resources_on_deletion:
        marked = kinds.PROPAGATION_BINDING.copy(binding)
        marked.spec.preserve_resources_on_deletion = True
    result = Plan()
    result.delete(kinds.PROPAGATION_BINDING, binding, marked=marked)
    return result


def let_go(binding: work_pb2.PropagationBinding, *, orphan: bool) -> Plan | None:
    """Kept for the workloads that require it, or released."""
    if binding.spec.required_by:
        return keep_as_dependency(binding)
    return release(binding, orphan=orphan)


def auto_propagated_spec(
    manifest: Manifest,
    clusters: Iterable[str],
    current: work_pb2.PropagationBindingSpec | None = None,
) -> work_pb2.PropagationBindingSpec:
    """The spec of the binding of a Namespace no policy claims: ``clusters`` (every
    member, from the namespace controller), ``autoPropagated``, and the ``requiredBy``
    entries the dependencies controller keeps in ``current``. The policy controller
    writes it too, when a policy lets such a Namespace go, so the two agree on it."""
    metadata = manifest["metadata"]
    spec = work_pb2.PropagationBindingSpec(auto_propagated=True, conflict_resolution="Abort")
    spec.resource.api_version = manifest["apiVersion"]
    spec.resource.kind = manifest["kind"]
    spec.resource.name = metadata["name"]
    spec.resource.uid = metadata.get("uid", "")
    spec.resource.resource_version = metadata.get("resourceVersion", "")
    for name in clusters:
        spec.clusters.add(name=name)
    if current is not None:
        spec.required_by.extend(current.required_by)
    return spec
