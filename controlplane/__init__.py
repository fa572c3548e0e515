"""Archipel's control plane: a gRPC server on etcd that turns templates and policies
into per-cluster works and streams them to the member clusters' agents."""
