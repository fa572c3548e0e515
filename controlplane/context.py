"""Settings, the dependencies every controller shares, and how objects are named.

Names follow Karmada: a template's binding is ``<name>-<kind>`` in the template's
namespace, and its work for a cluster lives in ``archipel-es-<cluster>`` under a name
derived from the binding. A binding's identity, though, is what it binds (its
``spec.resource``: group, kind, namespace and name), and bindings are found through an
index on it, never by computing a name: a core Service ``web`` and a Knative Service
``web`` both want ``web-service``; the second gets a suffix hashed from its whole
identity, and neither ever drives the other's binding. Bindings written by earlier
versions keep their names and are found the same way, so an upgrade renames nothing
and no member object is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archipel import interpreter, limits
from archipel.core import kinds, names
from archipel.core.kinds import CLUSTER_SCOPE, Manifest
from archipel.core.names import BINDING_NAME_LABEL, BINDING_NAMESPACE_LABEL, CLUSTER_LABEL
from archipel.core.scopes import KindScopes
from archipel.v1alpha1 import (
    apps_pb2,
    cluster_pb2,
    interpreter_pb2,
    override_pb2,
    policy_pb2,
    work_pb2,
)
from controlplane.etcd import Guard
from controlplane.informers import Informer
from controlplane.runtime import Controller, Owner, PlanReconcile, everything
from controlplane.shards import Shards
from controlplane.store import Store

log = logging.getLogger(__name__)

FINALIZER = names.CONTROLLER_FINALIZER
WORK_FINALIZER = names.AGENT_CLEANUP_FINALIZER


@dataclasses.dataclass
class Settings:
    """How one control plane runs."""

    etcd_endpoints: list[str]
    """etcd client URLs: all http:// (or bare addresses), or all https://."""
    etcd_cafile: Path | None = None
    """The CA bundle that verifies etcd's certificates; needed by https:// endpoints."""
    etcd_certfile: Path | None = None
    """The client certificate presented to etcd (with ``etcd_keyfile``), for an etcd
    that runs with --client-cert-auth."""
    etcd_keyfile: Path | None = None
    etcd_prefix: str = "/archipel/"
    """Every key lives below this prefix, so several control planes can share an etcd."""
    listen: str = "127.0.0.1:7443"
    """gRPC listen address."""
    metrics_listen: str = ""
    """host:port for the Prometheus endpoint; empty turns it off."""
    health_listen: str = ""
    """host:port of a plaintext gRPC server with only the health service, for probes
    that cannot speak TLS (the kubelet's); empty turns it off."""
    admin_token_file: Path | None = None
    """Holds the admin credential; created with a random token when missing."""
    encryption_provider_config: Path | None = None
    """An EncryptionConfiguration: what is encrypted in etcd, with which keys (see
    controlplane/encryption.py); None stores everything as plaintext."""
    tls_cert_file: Path | None = None
    """The serving certificate (with ``tls_key_file``); None: one issued at start by the
    control plane's CA (see controlplane/certificates.py)."""
    tls_key_file: Path | None = None
    audit_log_path: Path | None = None
    """Where the audit log is written (JSON lines); None keeps none."""
    audit_log_max_bytes: int = 100 * 1024 * 1024
    """The audit log rotates when it reaches this size."""
    audit_log_backups: int = 10
    """Rotated audit logs kept."""
    pki_dir: Path | None = None
    """Where the control plane's CA lives, created on first start (None: .local/pki);
    replicas share it."""
    tls_sans: tuple[str, ...] = ()
    """More names (DNS or IP) the issued serving certificate covers."""
    client_ca_file: Path | None = None
    """The CA that issues and checks agents' client certificates (with
    ``client_ca_key_file``); None: the control plane's own CA."""
    client_ca_key_file: Path | None = None
    insecure: bool = False
    """Plaintext on ``listen`` and no agent port: loopback addresses only."""
    agent_listen: str = ""
    """host:port of the mutual-TLS port agents with certificates connect to; empty:
    the listen host, its port + 1."""
    agent_cert_validity: float = 30 * 86400.0
    """Seconds an agent's certificate is valid; agents renew at 2/3 of it."""
    heartbeat_interval: float = 10.0
    """How often agents send heartbeats (told to them on connect)."""
    cluster_grace_period: float = 40.0
    """A cluster with no heartbeat for this long becomes Ready=Unknown."""
    cluster_failure_threshold: float = 30.0
    """An agent's report that its API server is not ready turns Ready False only once
    it has lasted this long (Karmada's --cluster-failure-threshold): a blip is no fault."""
    cluster_success_threshold: float = 30.0
    """A cluster that failed turns Ready True again only once it has been healthy this
    long (Karmada's --cluster-success-threshold), so a flapping cluster does not churn."""
    failover_grace_period: float = 60.0
    """A cluster not Ready (False or Unknown) for this long gets NoExecute taints, which
    move its workloads elsewhere unless a policy tolerates them."""
    unhealthy_cluster_threshold: float = 0.55
    """When more than this share of the clusters is not Ready, no cluster gets a new
    NoExecute taint: so many failing at once points at the control plane's own network."""
    eviction_interval: float = 10.0
    """At most one cluster gets NoExecute taints per this many seconds (rate limit)."""
    default_failover_taints: bool = True
    """The built-in failover rule, the equivalent of a default ClusterTaintPolicy: a
    cluster not Ready for ``failover_grace_period`` gets the not-ready or unreachable
    NoExecute taint. False (--no-default-failover-taints) leaves NoExecute taints to
    the ClusterTaintPolicies people write; the NoSchedule ones stay."""
    graceful_eviction_timeout: float = 600.0
    """How long an evicted cluster keeps its copy of a workload, at most, while the
    workload becomes healthy in its new clusters (a graceful eviction task's default
    gracePeriodSeconds; Karmada's --graceful-eviction-timeout)."""
    workers: int = 4
    """Parallel reconciles per controller."""
    mutation_rate: float = limits.DEFAULT_MUTATION_RATE
    """Mutating API calls one identity may make per second on average; 0: unlimited
    (:mod:`controlplane.ratelimit`)."""
    mutation_burst: int = limits.DEFAULT_MUTATION_BURST
    """Mutating calls one identity may make at once above the rate."""
    shutdown_grace: float = 5.0
    controllers: tuple[str, ...] = ("*",)
    """Which controllers run, as Karmada's --controllers: names, ``*`` for all, and
    ``-name`` to leave one out (see ``server.select_controllers``)."""
    replica_id: str = ""
    """This replica's name among the control plane's replicas (empty: the host's name
    and a random suffix); see controlplane/shards.py."""
    shards: int = 32
    """How many shards controller keys hash into; every replica must say the same."""
    shard_lease_seconds: int = 10
    """A replica that stops renewing its lease loses its shards after this long."""
    skipped_propagating_namespaces: tuple[re.Pattern[str], ...] = ()
    """Namespaces whose whole name matches one of these are not sent to every member
    by themselves (Karmada's --skipped-propagating-namespaces); the system namespaces
    never are, whatever this says."""


@dataclasses.dataclass
class Context:
    settings: Settings
    store: Store
    clusters: Informer[cluster_pb2.MemberCluster]
    policies: Informer[policy_pb2.PropagationPolicy]
    cluster_policies: Informer[policy_pb2.ClusterPropagationPolicy]
    overrides: Informer[override_pb2.OverridePolicy]
    cluster_overrides: Informer[override_pb2.ClusterOverridePolicy]
    customizations: Informer[interpreter_pb2.ResourceInterpreterCustomization]
    templates: Informer[Manifest]
    bindings: Informer[work_pb2.PropagationBinding]
    works: Informer[work_pb2.PropagationWork]
    rebalancers: Informer[apps_pb2.WorkloadRebalancer]
    taint_policies: Informer[policy_pb2.ClusterTaintPolicy]
    # Rebuilt whenever a customization changes; controllers read it, never write it.
    interpreters: interpreter.Registry = dataclasses.field(default_factory=interpreter.Registry)
    # Which template kinds are namespaced, from the CRD templates in the cache; the
    # API validates templates and answers GetScope with it.
    scopes: KindScopes = dataclasses.field(default_factory=KindScopes)
    # Which keys this replica runs (None: one control plane alone runs them all).
    shards: Shards | None = None

    @classmethod
    def build(cls, settings: Settings, store: Store, *, shards: Shards | None = None) -> Context:
        context = cls(
            settings=settings,
            store=store,
            clusters=Informer(store, kinds.MEMBER_CLUSTER),
            policies=Informer(store, kinds.PROPAGATION_POLICY),
            cluster_policies=Informer(store, kinds.CLUSTER_PROPAGATION_POLICY),
            overrides=Informer(store, kinds.OVERRIDE_POLICY),
            cluster_overrides=Informer(store, kinds.CLUSTER_OVERRIDE_POLICY),
            customizations=Informer(store, kinds.RESOURCE_INTERPRETER_CUSTOMIZATION),
            templates=Informer(store, kinds.RESOURCE_TEMPLATE),
            bindings=Informer(store, kinds.PROPAGATION_BINDING),
            works=Informer(store, kinds.PROPAGATION_WORK),
            rebalancers=Informer(store, kinds.WORKLOAD_REBALANCER),
            taint_policies=Informer(store, kinds.CLUSTER_TAINT_POLICY),
            shards=shards,
        )
        context.works.add_index("binding", lambda w: [binding_key_of_work(w)])
        context.works.add_index("cluster", lambda w: [w.metadata.labels.get(CLUSTER_LABEL, "")])
        context.bindings.add_index("policy", lambda b: [policy_key(b.spec.policy)])
        context.bindings.add_index(
            TEMPLATE_INDEX,
            lambda b: [template_key_of_binding(b)] if b.spec.resource.kind else [],
        )
        context.customizations.add_handler(
            lambda key, old, new: context.interpreters.update(context.customizations.objects())
        )
        context.templates.add_handler(lambda key, old, new: context.scopes.observe(key, new))
        return context

    def binding_of(self, template_key: str) -> work_pb2.PropagationBinding | None:
        """The binding of the template at ``template_key``, by what it binds."""
        found = self.bindings.by_index(TEMPLATE_INDEX, template_key)
        # Two bindings of one template only exist between a lost race and its cleanup.
        return min(found, key=lambda b: b.metadata.name) if found else None

    def binding_keys_of(self, template_key: str) -> set[str]:
        return self.bindings.index_keys(TEMPLATE_INDEX, template_key)

    def new_binding_name(self, manifest: Manifest) -> str:
        """The name for a template's first binding: Karmada's ``<name>-<kind>``, or,
        when a binding of another template already has that name, the same with a
        suffix hashed from the template's identity (group included)."""
        metadata = manifest["metadata"]
        name = binding_name(manifest)
        key = kinds.PROPAGATION_BINDING.key(metadata.get("namespace", ""), name)
        if self.bindings.get(key) is None:
            return name  # free, or undecodable: the create writes over it (Create.replacing)
        identity = kinds.RESOURCE_TEMPLATE.key_of(manifest)
        return f"{name}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"

    def controller(
        self,
        name: str,
        reconcile: PlanReconcile,
        *,
        workers: int | None = None,
        priority: Callable[[str], int] | None = None,
        owner: Owner | None = None,
        follows: frozenset[str] = frozenset({"shards"}),
    ) -> Controller:
        """A controller whose plans are committed to this store, and whose next pass
        over a key waits for these caches to see what its last plan wrote.

        ``owner`` says which keys this replica runs; by default those of the shards it
        holds (every key, without replicas); ``follows`` names the changes of what
        this replica holds that can change the rule's answers (see Controller)."""
        if owner is None:
            owner = self.shards.owns_key if self.shards is not None else everything
        return Controller(
            name,
            reconcile,
            store=self.store,
            caches=self.informers(),
            workers=workers or self.settings.workers,
            priority=priority,
            owner=owner,
            follows=follows,
        )

    def owns_cluster(self, cluster: str) -> list[Guard] | None:
        """The rule for what a cluster's agent reports: see Shards.owns_cluster."""
        return self.shards.owns_cluster(cluster) if self.shards is not None else []

    def owns_reports(self, cluster: str) -> list[Guard] | None:
        """Whether this replica writes what ``cluster``'s agent reported (see
        Shards.owns_reports); always, without replicas."""
        return self.shards.owns_reports(cluster) if self.shards is not None else []

    def informers(self) -> list[Informer[Any]]:
        return [
            self.clusters,
            self.policies,
            self.cluster_policies,
            self.overrides,
            self.cluster_overrides,
            self.customizations,
            self.templates,
            self.bindings,
            self.works,
            self.rebalancers,
            self.taint_policies,
        ]


TEMPLATE_INDEX = "template"


def binding_name(manifest: Manifest) -> str:
    """Karmada's name for a template's binding; see :meth:`Context.new_binding_name`."""
    return f"{manifest['metadata']['name']}-{manifest['kind'].lower()}"


def template_key_of_binding(binding: work_pb2.PropagationBinding) -> str:
    resource = binding.spec.resource
    return kinds.template_key(
        resource.api_version, resource.kind, resource.namespace, resource.name
    )


def work_name(binding: work_pb2.PropagationBinding) -> str:
    namespace = binding.metadata.namespace or CLUSTER_SCOPE
    return f"{namespace}.{binding.metadata.name}"


def work_key(binding: work_pb2.PropagationBinding, cluster: str) -> str:
    return kinds.PROPAGATION_WORK.key(kinds.execution_namespace(cluster), work_name(binding))


def binding_key_of_work_key(work_key: str) -> str:
    """The binding key a work's key names (``<namespace or _>.<binding>``), for works
    that cannot be decoded and so have no labels to read."""
    namespace, _, binding = work_key.rsplit("/", 1)[-1].partition(".")
    return kinds.PROPAGATION_BINDING.key("" if namespace == CLUSTER_SCOPE else namespace, binding)


def binding_key_of_work(work: work_pb2.PropagationWork) -> str:
    labels = work.metadata.labels
    return kinds.PROPAGATION_BINDING.key(
        labels.get(BINDING_NAMESPACE_LABEL, ""), labels.get(BINDING_NAME_LABEL, "")
    )


def binding_targets(binding: work_pb2.PropagationBinding) -> list[tuple[str, int | None]]:
    """Where a binding's works go, with each cluster's replicas.

    Its schedule, then the clusters of the workloads that require it (their replicas
    are no concern of a dependency: None).
    """
    targets: list[tuple[str, int | None]] = [(t.name, t.replicas) for t in binding.spec.clusters]
    seen = {name for name, _ in targets}
    for snapshot in binding.spec.required_by:
        for cluster in snapshot.clusters:
            if cluster.name not in seen:
                seen.add(cluster.name)
                targets.append((cluster.name, None))
    return targets


def kept_evictions(binding: work_pb2.PropagationBinding) -> list[tuple[str, int | None]]:
    """The clusters a workload was evicted from whose copy its graceful eviction tasks
    keep for now, with the replicas it had there. Not targets: their status is not
    aggregated (a failed cluster's last report would count replicas that may be gone)."""
    scheduled = {t.name for t in binding.spec.clusters}
    return [
        (task.from_cluster, task.replicas if task.HasField("replicas") else None)
        for task in binding.spec.graceful_eviction_tasks
        if task.purge_mode != "Directly" and task.from_cluster not in scheduled
    ]


def customization_targets(
    *customizations: interpreter_pb2.ResourceInterpreterCustomization | None,
) -> set[tuple[str, str]]:
    """The (apiVersion, kind) pairs that a customization change re-interprets."""
    return {
        (c.spec.target.api_version, c.spec.target.kind) for c in customizations if c is not None
    }


def policy_key(ref: work_pb2.PolicyReference) -> str:
    return f"{ref.kind}/{ref.namespace}/{ref.name}"
