"""Well-known names on the wire: labels, annotations, finalizers, taints, namespaces.

Every side reads and writes these (the control plane on works, the agent on member
objects, the CLI when it explains or filters), so they are spelled here once. Names
taken from Karmada keep Karmada's spelling, so tools built for Karmada read ours.
"""

from __future__ import annotations

# -- finalizers --------------------------------------------------------------------

CONTROLLER_FINALIZER = "archipel.io/controller"
"""Held by the control plane on clusters and bindings until their works are gone."""
AGENT_CLEANUP_FINALIZER = "archipel.io/agent-cleanup"
"""Held on each work until its agent confirms the member's objects are cleaned up."""

# -- on works ----------------------------------------------------------------------

BINDING_NAMESPACE_LABEL = "work.archipel.io/binding-namespace"
BINDING_NAME_LABEL = "work.archipel.io/binding-name"
CLUSTER_LABEL = "work.archipel.io/cluster"
TEMPLATE_GENERATION_ANNOTATION = "work.archipel.io/template-generation"
"""The template generation a work was built from (Karmada keeps the same)."""
APPLIED_OVERRIDES_ANNOTATION = "policy.karmada.io/applied-overrides"
APPLIED_CLUSTER_OVERRIDES_ANNOTATION = "policy.karmada.io/applied-cluster-overrides"
"""Which override policies shaped a work, in the order they applied (Karmada's keys)."""

# -- on templates ------------------------------------------------------------------

DELETION_PROTECTION_LABELS = (
    "resourcetemplate.archipel.io/deletion-protected",
    "resourcetemplate.karmada.io/deletion-protected",
)
"""Karmada's label is honoured too, so protected templates stay protected after a move."""

# -- on Namespace templates ---------------------------------------------------------

SKIP_AUTO_PROPAGATION_LABELS = (
    "namespace.archipel.io/skip-auto-propagation",
    "namespace.karmada.io/skip-auto-propagation",
)
"""A Namespace labelled ``"true"`` by either is not sent to every member cluster by
itself (Karmada's label is honoured, so namespaces labelled for Karmada stay put)."""

# -- on member objects (the agent's) -----------------------------------------------

MANAGED_LABEL = "archipel.io/managed"
WORK_ANNOTATION = "archipel.io/work"
LEDGER_LABEL = "archipel.io/ledger"

# -- cluster taints ----------------------------------------------------------------

NOT_READY_TAINT = "cluster.archipel.io/not-ready"
UNREACHABLE_TAINT = "cluster.archipel.io/unreachable"
UNSCHEDULABLE_TAINT = "cluster.archipel.io/unschedulable"
# Karmada's keys for the same taints: a toleration of Karmada's YAML that names one
# tolerates Archipel's.
KARMADA_TAINT_KEYS = {
    "cluster.karmada.io/not-ready": NOT_READY_TAINT,
    "cluster.karmada.io/unreachable": UNREACHABLE_TAINT,
    "cluster.karmada.io/unschedulable": UNSCHEDULABLE_TAINT,
}

# -- namespaces --------------------------------------------------------------------

SYSTEM_NAMESPACE = "archipel-system"
"""Where the agent keeps its ledger in each member."""
EXECUTION_NAMESPACE_PREFIX = "archipel-es-"
"""A cluster's works live in ``archipel-es-<cluster>``, as Karmada's karmada-es-."""
