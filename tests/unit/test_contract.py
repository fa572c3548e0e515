"""Every RPC that proto/ declares is implemented by the control plane (the contract
that other languages' stubs are generated from)."""

from __future__ import annotations

from archipel.core import kinds
from archipel.v1alpha1 import agent_pb2
from archipel.v1alpha1 import service_pb2 as v1alpha1_pb2
from archipel.v1alpha2 import registration_pb2
from archipel.v1alpha2 import service_pb2 as v1alpha2_pb2
from controlplane import api
from controlplane.context import Settings
from controlplane.server import SERVICE_NAMES, ControlPlane


def test_every_rpc_in_the_contract_has_an_implementation() -> None:
    # Building the control plane connects to nothing.
    plane = ControlPlane(Settings(etcd_endpoints=["http://127.0.0.1:1"]))
    servicers = plane.api_servicers()
    declared = {
        service.full_name: service
        for file in (
            v1alpha1_pb2.DESCRIPTOR,
            v1alpha2_pb2.DESCRIPTOR,
            registration_pb2.DESCRIPTOR,
            agent_pb2.DESCRIPTOR,
        )
        for service in file.services_by_name.values()
    }
    assert set(servicers) == set(declared)
    missing = [
        f"{name}.{method.name}"
        for name, service in declared.items()
        for method in service.methods
        if not callable(getattr(servicers[name], method.name, None))
    ]
    assert missing == []
    assert set(SERVICE_NAMES) == {service.full_name for service in declared.values()}


def test_every_kind_is_served_by_the_current_version_and_only_where_declared() -> None:
    """The registry is the one list of kinds; each version serves the kinds its contract
    declares a service for. The current one declares them all; v1alpha1 is frozen, so a
    kind added since (WorkloadRebalancer) has no v1alpha1 service and gets no servicer."""
    store = ControlPlane(Settings(etcd_endpoints=["http://127.0.0.1:1"])).store
    current = api.API_VERSIONS[0]
    assert set(api.kind_services(store, current)) == {
        kind.service for kind in kinds.API_KINDS.values()
    }
    frozen = api.kind_services(store, api.V1ALPHA1)
    assert set(frozen) == {
        kind.service
        for kind in kinds.API_KINDS.values()
        if kind.service in v1alpha1_pb2.DESCRIPTOR.services_by_name
    }
    assert kinds.WORKLOAD_REBALANCER.service not in frozen
    assert not api.V1ALPHA1.serves(kinds.WORKLOAD_REBALANCER)
    assert current.serves(kinds.WORKLOAD_REBALANCER)
    assert kinds.CLUSTER_TAINT_POLICY.service not in frozen
    assert current.serves(kinds.CLUSTER_TAINT_POLICY)
