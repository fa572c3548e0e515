"""The controllers, one module per object they reconcile, as the design names them:
policy (templates against policies, writing bindings), scheduler (bindings' target
clusters), binding (one work per target cluster), execution (works to agent streams),
status (work status into bindings and templates), cluster (member lifecycle),
dependencies (a workload's dependencies follow it), namespace (every Namespace no policy
claims to every cluster) and workload-rebalancer.
"""
