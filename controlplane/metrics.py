"""Prometheus metrics of the control plane, read by operators and the benchmarks."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

QUEUE_DEPTH = Gauge("archipel_queue_depth", "Keys waiting in a controller's queue", ["controller"])
RECONCILE_SECONDS = Histogram(
    "archipel_reconcile_duration_seconds",
    "Time spent in one reconcile",
    ["controller"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RECONCILE_ERRORS = Counter(
    "archipel_reconcile_errors_total", "Reconciles that failed and were requeued", ["controller"]
)
RECONCILE_CONFLICTS = Counter(
    "archipel_reconcile_conflicts_total",
    "Reconciles that lost an optimistic-concurrency race and were requeued",
    ["controller"],
)
WORKS_DELIVERED = Counter("archipel_works_delivered_total", "Works sent to agents")
WORKS_ACKNOWLEDGED = Counter("archipel_works_acknowledged_total", "Works agents acknowledged")
WORK_DELETES_DELIVERED = Counter("archipel_work_deletes_delivered_total", "Deletes sent to agents")
AGENTS_CONNECTED = Gauge("archipel_agents_connected", "Agent streams currently open")
SHARDS_HELD = Gauge("archipel_shards_held", "Controller shards this replica holds")
AGENT_STREAMS_FENCED = Counter(
    "archipel_agent_streams_fenced_total",
    "Agent streams refused because their leader's lease epoch is older than the newest seen",
)
ETCD_LATENCY = Histogram(
    "archipel_etcd_request_duration_seconds",
    "etcd request latency",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
CORRUPT_OBJECTS = Counter(
    "archipel_corrupt_objects_total",
    "Stored objects that could not be decoded and were skipped",
    ["resource"],
)
QUARANTINED_OBJECTS = Gauge(
    "archipel_quarantined_objects",
    "Undecodable objects an informer currently holds in quarantine",
    ["kind"],
)
SESSION_CRASHES = Counter(
    "archipel_agent_session_crashes_total",
    "Agent streams ended because the control plane failed reading them (a bug: see the log)",
)
CLUSTER_EVICTIONS = Counter(
    "archipel_cluster_evictions_total",
    "NoExecute taints the cluster controller added to failing clusters (failovers started)",
    # NotReady (the API server failed), Unreachable (the agent went silent), or
    # ClusterTaintPolicy (a policy's NoExecute taint)
    ["reason"],
)
EVICTION_HALTED = Gauge(
    "archipel_eviction_halted",
    "1 while more than the unhealthy-cluster threshold of the clusters is not Ready, so no "
    "cluster gets a new NoExecute taint; else 0",
)
BUILD_INFO = Info("archipel_build", "The control plane's version")
WORKLOAD_EVICTIONS = Counter(
    "archipel_workload_evictions_total",
    "Workloads moved off a cluster by the scheduler, by reason (TaintUntolerated: the "
    "cluster failed; ApplicationFailure: the workload stayed Unhealthy there)",
    ["reason"],
)
FAILOVER_RECOVERY_SECONDS = Histogram(
    "archipel_failover_recovery_seconds",
    "Seconds from a fault (a cluster tainted not ready or unreachable, or an application "
    "Unhealthy past its toleration) until the workload is Healthy everywhere it moved to",
    ["reason"],
    buckets=(5, 10, 30, 60, 90, 120, 180, 300, 600, 1200),
)
RATE_LIMITED = Counter(
    "archipel_rate_limited_calls_total",
    "Mutating calls refused with RESOURCE_EXHAUSTED because their identity was over "
    "--mutation-rate (by method name)",
    ["method"],
)
