"""Whether templates of a kind are namespaced: the rule, from built-ins and known CRDs.

A resource template can be of any kind, so the control plane cannot ask a member's
discovery whether a kind is namespaced (members may not even have it yet: the CRD may
travel with its resources). It decides from what it holds itself:

1. A ``CustomResourceDefinition`` template defines the scope of its
   ``spec.group``/``spec.names.kind``: ``spec.scope: Cluster`` makes it cluster-scoped,
   ``Namespaced`` namespaced. This wins over the next rule, since it is what the
   member's API server will do with the kind.
2. A kind in :data:`BUILTIN_CLUSTER_SCOPED` is cluster-scoped, whatever its group (as
   before CRDs were looked at; Kubernetes' own kinds keep their names across groups).
3. Anything else is namespaced, and its templates default to the namespace
   ``default``, as kubectl does.

So a custom resource applied before the control plane holds its CRD is namespaced,
exactly as it was before this rule knew CRDs. Once the CRD template is applied, its
kind has the CRD's scope; the control plane refuses a CRD template whose scope
contradicts templates of its kind already stored (see the control plane's apply), so a
kind's stored templates and its scope never disagree.

This module is pure: the control plane keeps a :class:`KindScopes` current from its
template cache, the CLI asks the API (``ResourceTemplateService.GetTemplateScope``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from archipel.core import kinds

CRD_GROUP = "apiextensions.k8s.io"
CRD_KIND = "CustomResourceDefinition"

# Kinds that are cluster-scoped in every Kubernetes cluster.
BUILTIN_CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "ClusterRole",
        "ClusterRoleBinding",
        CRD_KIND,
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "RuntimeClass",
        "CSIDriver",
        "CSINode",
        "APIService",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "VolumeSnapshotClass",
        "FlowSchema",
        "PriorityLevelConfiguration",
    }
)


@dataclasses.dataclass(frozen=True)
class Scope:
    """The answer for one kind: its group, whether it is namespaced, and why."""

    group: str
    kind: str
    namespaced: bool
    # The name of the CRD template that decides; "" when the built-in rule does.
    defined_by: str = ""


@dataclasses.dataclass(frozen=True)
class CrdScope:
    """What one CRD template says: the kind it defines and that kind's scope."""

    group: str
    kind: str
    namespaced: bool
    name: str


def is_crd(manifest: Mapping[str, Any]) -> bool:
    group, _ = kinds.split_api_version(str(manifest.get("apiVersion", "")))
    return group == CRD_GROUP and manifest.get("kind") == CRD_KIND


def crd_scope(manifest: Mapping[str, Any]) -> CrdScope | None:
    """The scope a CRD template defines; None when it is not a CRD or does not say
    (no group, no kind, or a scope other than Cluster or Namespaced: the member's API
    server refuses such a CRD, so it defines nothing here either)."""
    if not is_crd(manifest):
        return None
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        return None
    names = spec.get("names")
    group, scope = spec.get("group"), spec.get("scope")
    kind = names.get("kind") if isinstance(names, dict) else None
    if not isinstance(group, str) or not group or not isinstance(kind, str) or not kind:
        return None
    if scope not in ("Cluster", "Namespaced"):
        return None
    metadata = manifest.get("metadata")
    name = metadata.get("name", "") if isinstance(metadata, dict) else ""
    return CrdScope(group, kind, scope == "Namespaced", str(name))


def builtin_namespaced(kind: str) -> bool:
    """Whether a kind is namespaced when no CRD defines it: rules 2 and 3 of the
    module's docstring (the group does not matter to them)."""
    return kind not in BUILTIN_CLUSTER_SCOPED


def builtin_scope(api_version: str, kind: str) -> Scope:
    """The scope without any CRD."""
    group, _ = kinds.split_api_version(api_version)
    return Scope(group, kind, namespaced=builtin_namespaced(kind))


class KindScopes:
    """The scope of every kind, from the CRD templates it has been told about.

    Fed by template key (``observe``), so a CRD template that is replaced or deleted
    takes its old answer with it. When two CRD templates define the same group and kind
    (the member's API server would refuse the second one's names), the one whose key
    sorts first decides, so the answer never depends on the order of events.
    """

    def __init__(self) -> None:
        self._by_key: dict[str, CrdScope] = {}
        self._by_kind: dict[tuple[str, str], set[str]] = {}

    def observe(self, key: str, manifest: Mapping[str, Any] | None) -> None:
        """The template at ``key`` is now ``manifest`` (None: deleted)."""
        old = self._by_key.pop(key, None)
        if old is not None:
            keys = self._by_kind.get((old.group, old.kind), set())
            keys.discard(key)
            if not keys:
                self._by_kind.pop((old.group, old.kind), None)
        new = crd_scope(manifest) if manifest is not None else None
        if new is not None:
            self._by_key[key] = new
            self._by_kind.setdefault((new.group, new.kind), set()).add(key)

    def crd_for(self, group: str, kind: str) -> CrdScope | None:
        keys = self._by_kind.get((group, kind))
        return self._by_key[min(keys)] if keys else None

    def scope(self, api_version: str, kind: str) -> Scope:
        group, _ = kinds.split_api_version(api_version)
        crd = self.crd_for(group, kind)
        if crd is not None:
            return Scope(group, kind, crd.namespaced, defined_by=crd.name)
        return builtin_scope(api_version, kind)

    def namespaced(self, api_version: str, kind: str) -> bool:
        return self.scope(api_version, kind).namespaced


def contradicting(namespaced: bool, templates: Iterable[Mapping[str, Any]]) -> list[str]:
    """Where each template that a kind's scope ``namespaced`` would contradict is
    (``namespace/name``, or ``name`` when it has none), sorted; templates being deleted
    are on their way out and contradict nothing."""
    found = []
    for template in templates:
        metadata = template.get("metadata")
        if not isinstance(metadata, dict) or metadata.get("deletionTimestamp"):
            continue
        namespace, name = metadata.get("namespace") or "", metadata.get("name") or ""
        if bool(namespace) != namespaced:
            found.append(f"{namespace}/{name}" if namespace else str(name))
    return sorted(found)
