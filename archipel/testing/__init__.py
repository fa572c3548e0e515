"""Real servers for tests, the local demo and benchmarks: etcd and member clusters.

Nothing here is a fake. :mod:`archipel.testing.members` starts real kube-apiservers
(built by ``build/tools.sh``) on a real etcd; the pytest fixtures in ``tests/`` and
``make members-up`` are thin layers over it.
"""
