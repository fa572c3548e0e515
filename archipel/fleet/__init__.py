"""The local fleet: etcd, member clusters, the control plane and agents on this machine.

A product feature, not a test helper: ``make up`` and ``make demo`` run it
(:mod:`archipel.fleet.fleetctl`, :mod:`archipel.fleet.demo`), and the integration and
end-to-end tests, and the benchmarks, start their servers with it. Nothing here is a
fake: :mod:`archipel.fleet.members` starts real kube-apiservers (built by
``build/tools.sh``) on a real etcd, and the control plane and agents run as the same
processes an operator runs.

It sits beside the CLI: it may use the client, never the control plane's or the
agent's modules (it starts them as processes).
"""
