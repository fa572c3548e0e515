"""The control plane fences agent streams by their leader's lease epoch, on a real
control plane and etcd, with agents spoken by hand (tests/integration/agents.py).

The agents of a member elect a leader through a Lease in the member (agent/election.py)
and the hello names it: ``leader_identity``, and ``leader_epoch``, the Lease's
transitions when it was acquired. The control plane keeps the stream of the newest
epoch: an older one is refused with FAILED_PRECONDITION, saying who holds which epoch;
a newer one replaces the current stream, which ends with the same code and says who
took over; the same leader reconnecting replaces its stream as before; an agent that
does not elect (epoch 0) is admitted as before.
"""

from __future__ import annotations

import urllib.request

import grpc
import pytest

from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.v1alpha1 import agent_pb2
from tests.integration.agents import Api, RawAgent, config_map, eventually

pytestmark = pytest.mark.servers
CLUSTER = "fenced"
NAMESPACE = "fencing"


def hello(identity: str, epoch: int) -> agent_pb2.Hello:
    return agent_pb2.Hello(
        cluster=CLUSTER, agent_version="test", leader_identity=identity, leader_epoch=epoch
    )


async def refused(agent: RawAgent, opening: agent_pb2.Hello) -> grpc.aio.AioRpcError:
    """The error the stream opened with ``opening`` ends with (it must end)."""
    try:
        await agent.run(opening)
    except grpc.aio.AioRpcError as error:
        return error
    finally:
        await agent.close()
    raise AssertionError("the stream was admitted")


def fenced_total(plane: ControlPlaneProcess) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{plane.metrics_port}/metrics").read()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith("archipel_agent_streams_fenced_total ")
    )


async def test_the_stream_goes_to_the_newest_lease_epoch(api: Api) -> None:
    token = await api.join(CLUSTER)
    await api.propagate_config_maps(CLUSTER, namespace=NAMESPACE)
    await api.apply(config_map("first", namespace=NAMESPACE))
    first = f"{NAMESPACE}.first-configmap"
    await eventually("the first work", lambda: api.work(CLUSTER, first))

    leader = RawAgent(api.plane, CLUSTER, token)
    leader_stream = leader.start(hello("agent-a", 5))
    try:
        await leader.resumed()
        assert first in leader.works

        # A deposed leader (epoch 4) is refused, naming the leader and both epochs...
        error = await refused(RawAgent(api.plane, CLUSTER, token), hello("agent-b", 4))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == (
            "agent agent-a holds lease epoch 5; this agent's (agent-b) epoch 4 is older: "
            "it is no longer the leader"
        )
        # ... and the leader's stream goes on: a new work reaches it.
        await api.apply(config_map("second", namespace=NAMESPACE))
        second = f"{NAMESPACE}.second-configmap"
        await leader.wait("the second work at the leader", lambda: second in leader.works)

        # A newer epoch takes the stream: the old one ends saying who took over.
        successor = RawAgent(api.plane, CLUSTER, token)
        earlier = successor.start(hello("agent-c", 6))
        try:
            resumed = await successor.resumed()
            assert {first, second} <= set(resumed.sent)
            await leader.wait("the deposed leader's stream to end", leader_stream.done)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                leader_stream.result()
            assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert ended.value.details() == "agent agent-c took over at lease epoch 6"

            # The deposed leader reconnecting is refused: the fence outlives its stream.
            error = await refused(RawAgent(api.plane, CLUSTER, token), hello("agent-a", 5))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "agent agent-c holds lease epoch 6" in (error.details() or "")
            # So is another agent claiming the leader's own epoch.
            error = await refused(RawAgent(api.plane, CLUSTER, token), hello("agent-d", 6))
            assert "claims the same epoch" in (error.details() or "")

            # The leader reconnecting (same identity and epoch) replaces its stream,
            # as any reconnect did before: the old one just ends.
            again = RawAgent(api.plane, CLUSTER, token)
            again.start(hello("agent-c", 6))
            try:
                await again.resumed()
                await successor.wait("the leader's earlier stream to end", earlier.done)
                earlier.result()  # no error: replaced, not fenced
            finally:
                await again.close()
        finally:
            await successor.close()

        # An agent that does not elect (epoch 0) is admitted as before.
        lone = RawAgent(api.plane, CLUSTER, token)
        lone.start(agent_pb2.Hello(cluster=CLUSTER, agent_version="test"))
        try:
            await lone.resumed()
        finally:
            await lone.close()
        assert fenced_total(api.plane) == 3
    finally:
        await leader.close()
