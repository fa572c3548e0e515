"""Which policy propagates a resource template, with Karmada's precedence.

* A PropagationPolicy in the template's namespace beats any ClusterPropagationPolicy.
* Within one scope: higher ``priority`` wins; then the more specific match (a
  selector naming the object beats one matching its labels, which beats one that
  matches the kind alone); then the policy whose name sorts first.
* A template stays with the policy that claimed it while that policy still matches,
  unless a policy that outranks it has ``preemption: Always``.
* Templates in system namespaces (and those Namespace objects) are never propagated,
  whatever the policy says, as Karmada skips ``kube-*`` and its own namespaces.
* A Namespace no policy claims goes to every member cluster by itself
  (:func:`auto_propagates`), as Karmada's namespace sync controller sends it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable
from typing import Any

from archipel import limits
from archipel.core import selectors
from archipel.core.errors import Invalid
from archipel.core.kinds import Manifest
from archipel.core.names import (
    EXECUTION_NAMESPACE_PREFIX,
    SKIP_AUTO_PROPAGATION_LABELS,
    SYSTEM_NAMESPACE,
)
from archipel.v1alpha1 import policy_pb2

MATCH_ALL, MATCH_LABELS, MATCH_NAME = 1, 2, 3

Policy = policy_pb2.PropagationPolicy | policy_pb2.ClusterPropagationPolicy
# Namespaces no policy propagates: Kubernetes' own (kube-system, kube-public,
# kube-node-lease and any other kube-*), the agent's ledger and the execution spaces.
SYSTEM_NAMESPACE_PREFIXES = ("kube-", EXECUTION_NAMESPACE_PREFIX)
SYSTEM_NAMESPACES = frozenset({SYSTEM_NAMESPACE})


def is_system_namespace(name: str) -> bool:
    return name in SYSTEM_NAMESPACES or name.startswith(SYSTEM_NAMESPACE_PREFIXES)


def is_namespace(manifest: Manifest) -> bool:
    return manifest.get("kind") == "Namespace" and manifest.get("apiVersion") == "v1"


def is_system(manifest: Manifest) -> bool:
    """Whether ``manifest`` is in a system namespace or is a system Namespace itself."""
    metadata = manifest.get("metadata", {})
    if is_namespace(manifest):
        return is_system_namespace(metadata.get("name", ""))
    return is_system_namespace(metadata.get("namespace", "") or "")


# Every member cluster has a namespace of its own by this name, so it is never sent
# there by itself (Karmada's namespace sync controller leaves it out too).
DEFAULT_NAMESPACE = "default"


def auto_propagates(manifest: Manifest, skipped: Iterable[re.Pattern[str]] = ()) -> bool:
    """Whether ``manifest`` is a Namespace that goes to every member cluster with no
    policy (Karmada's namespace auto-propagation): neither a system namespace nor
    ``default``, not labelled to skip it (either label of
    :data:`~archipel.core.names.SKIP_AUTO_PROPAGATION_LABELS` set to ``true``, in any
    case, as Karmada reads its own), and its name fully matches none of ``skipped``
    (``--skipped-propagating-namespaces``)."""
    if not is_namespace(manifest):
        return False
    metadata = manifest.get("metadata", {})
    name = metadata.get("name", "")
    if is_system_namespace(name) or name == DEFAULT_NAMESPACE:
        return False
    labels = metadata.get("labels") or {}
    if any(str(labels.get(label, "")).lower() == "true" for label in SKIP_AUTO_PROPAGATION_LABELS):
        return False
    return not any(pattern.fullmatch(name) for pattern in skipped)


def skipped_namespace_patterns(texts: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """``--skipped-propagating-namespaces``: regular expressions a namespace's whole
    name must match (as Karmada anchors its own), compiled once; :class:`Invalid`
    naming the first one that does not compile."""
    patterns = []
    for text in texts:
        try:
            patterns.append(re.compile(text))
        except re.error as error:
            raise Invalid(
                "skipped-propagating-namespaces",
                f"{limits.echo(text)} is not a regular expression: {error}",
            ) from None
    return tuple(patterns)


@dataclasses.dataclass(frozen=True)
class Candidate:
    policy: Any  # PropagationPolicy | ClusterPropagationPolicy
    namespaced: bool
    specificity: int

    @property
    def kind(self) -> str:
        return "PropagationPolicy" if self.namespaced else "ClusterPropagationPolicy"

    @property
    def priority(self) -> int:
        spec = self.policy.spec
        return spec.priority if spec.HasField("priority") else 0

    @property
    def ref(self) -> tuple[str, str, str]:
        meta = self.policy.metadata
        return (self.kind, meta.namespace, meta.name)

    def rank(self) -> tuple[int, int, int]:
        """Bigger is stronger (names compare separately, smallest first)."""
        return (1 if self.namespaced else 0, self.priority, self.specificity)


def selector_specificity(selector: policy_pb2.ResourceSelector, manifest: Manifest) -> int:
    """How specifically ``selector`` matches the template; 0 when it does not."""
    metadata = manifest.get("metadata", {})
    if selector.api_version != manifest.get("apiVersion") or selector.kind != manifest.get("kind"):
        return 0
    if selector.namespace and selector.namespace != metadata.get("namespace", ""):
        return 0
    if selector.name:
        return MATCH_NAME if selector.name == metadata.get("name") else 0
    if selector.HasField("label_selector"):
        labels = metadata.get("labels", {})
        return MATCH_LABELS if selectors.from_proto(selector.label_selector).matches(labels) else 0
    return MATCH_ALL


def specificity(policy: Policy, manifest: Manifest) -> int:
    return max(
        (selector_specificity(s, manifest) for s in policy.spec.resource_selectors), default=0
    )


def candidates(
    manifest: Manifest,
    namespaced_policies: Iterable[policy_pb2.PropagationPolicy],
    cluster_policies: Iterable[policy_pb2.ClusterPropagationPolicy],
) -> list[Candidate]:
    found: list[Candidate] = []
    if is_system(manifest):
        return found
    namespace = manifest.get("metadata", {}).get("namespace", "")
    for policy in namespaced_policies:
        if policy.metadata.namespace != namespace or policy.metadata.HasField("deletion_timestamp"):
            continue
        score = specificity(policy, manifest)
        if score:
            found.append(Candidate(policy, True, score))
    for cluster_policy in cluster_policies:
        if cluster_policy.metadata.HasField("deletion_timestamp"):
            continue
        score = specificity(cluster_policy, manifest)
        if score:
            found.append(Candidate(cluster_policy, False, score))
    return found


def best(found: list[Candidate]) -> Candidate | None:
    if not found:
        return None
    strongest = max(c.rank() for c in found)
    return min((c for c in found if c.rank() == strongest), key=lambda c: c.policy.metadata.name)


def choose(
    manifest: Manifest,
    namespaced_policies: Iterable[policy_pb2.PropagationPolicy],
    cluster_policies: Iterable[policy_pb2.ClusterPropagationPolicy],
    *,
    claimed_by: tuple[str, str, str] | None = None,
) -> Candidate | None:
    """The policy that should propagate ``manifest`` now."""
    found = candidates(manifest, namespaced_policies, cluster_policies)
    winner = best(found)
    if winner is None or claimed_by is None or winner.ref == claimed_by:
        return winner
    current = next((c for c in found if c.ref == claimed_by), None)
    if current is None:
        return winner
    outranks = (1 if winner.namespaced else 0, winner.priority) > (
        1 if current.namespaced else 0,
        current.priority,
    )
    if outranks and winner.policy.spec.preemption == "Always":
        return winner
    return current


def missing_dependent_overrides(
    candidate: Candidate, overrides: Collection[str], cluster_overrides: Collection[str]
) -> list[str]:
    """The names in the policy's ``dependentOverrides`` that are not stored, in order.

    As in Karmada's detector: a PropagationPolicy's names are OverridePolicies of its
    own namespace, a ClusterPropagationPolicy's are ClusterOverridePolicies.
    ``overrides`` are the OverridePolicy names of the policy's namespace,
    ``cluster_overrides`` the ClusterOverridePolicy names.
    """
    present = overrides if candidate.namespaced else cluster_overrides
    missing: list[str] = []
    for name in candidate.policy.spec.dependent_overrides:
        if name not in present and name not in missing:
            missing.append(name)
    return missing


def waiting_for_overrides(candidate: Candidate, missing: Iterable[str]) -> str:
    """What a template waiting for its policy's dependent overrides says about it."""
    namespace = candidate.policy.metadata.namespace
    if candidate.namespaced:
        names = ", ".join(f"{namespace}/{name}" for name in missing)
        kind, policy = "OverridePolicy", f"{namespace}/{candidate.policy.metadata.name}"
    else:
        names = ", ".join(missing)
        kind, policy = "ClusterOverridePolicy", candidate.policy.metadata.name
    return f"waiting for {kind} {names} ({candidate.kind} {policy} dependentOverrides)"
