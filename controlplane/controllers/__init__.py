"""The controllers, one module per object they reconcile, as the design names them:
policy (templates against policies, writing bindings), scheduler (bindings' target
clusters), binding (one work per target cluster), execution (works to agent streams),
status (work status into bindings and templates) and cluster (member lifecycle).
"""
