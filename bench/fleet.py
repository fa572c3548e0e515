"""A simulated fleet: K agents in one process, speaking the real agent protocol.

Each simulated agent opens its own bidirectional stream with its own cluster
credential, says hello with the works it holds, acknowledges every work, reports it
applied, and sends heartbeats. There is no cluster behind it; what it measures is the
control plane. It records when each work (by name and generation) arrived, so a
scenario can compute latency from the moment it wrote a template.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import grpc

from archipel import agentstream
from archipel.fleet.controlplane import open_aio_channel
from archipel.v1alpha1 import (
    agent_pb2,
    agent_pb2_grpc,
    cluster_pb2,
    work_pb2,
)
from archipel.v1alpha2 import service_pb2, service_pb2_grpc

AGENTS_PER_CHANNEL = 100
TEMPLATE_GENERATION = "work.archipel.io/template-generation"


@dataclasses.dataclass
class SimulatedAgent:
    cluster: str
    token: str
    held: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    # (work name, generation) -> perf_counter at arrival
    arrivals: dict[tuple[str, int], float] = dataclasses.field(default_factory=dict)
    template_generations: dict[str, int] = dataclasses.field(default_factory=dict)
    deletes: int = 0
    received: int = 0
    synced_at: float | None = None
    connected: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    sync: agent_pb2.SyncComplete | None = None


class SimulatedFleet:
    def __init__(
        self,
        address: str,
        admin_token: str,
        *,
        heartbeat_interval: float = 10.0,
        addresses: Sequence[str] = (),
        ca_file: Path | None = None,
    ) -> None:
        """``addresses`` are the control plane's replicas when it has several: agent
        ``i`` streams from replica ``i mod N`` (``address`` by default); ``ca_file`` is
        the control plane's CA bundle (None: plaintext, for --insecure)."""
        self.address = address
        self.ca_file = ca_file
        self.addresses = list(addresses) or [address]
        self.admin_token = admin_token
        self.heartbeat_interval = heartbeat_interval
        self.agents: list[SimulatedAgent] = []
        self._channels: dict[tuple[int, int], grpc.aio.Channel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.arrival_event = asyncio.Event()
        self.connect_seconds = 0.0

    async def join(
        self, count: int, *, prefix: str = "sim", labels: dict[str, str] | None = None
    ) -> None:
        """Register ``count`` clusters and keep their credentials."""
        async with open_aio_channel(self.address, self.ca_file) as channel:
            admin = service_pb2_grpc.ClusterAdminServiceStub(channel)
            metadata = (("authorization", f"Bearer {self.admin_token}"),)
            semaphore = asyncio.Semaphore(32)

            async def one(index: int) -> SimulatedAgent:
                async with semaphore:
                    response = await admin.Join(
                        service_pb2.JoinRequest(
                            name=f"{prefix}{index:04d}", labels=labels or {}, rotate=True
                        ),
                        metadata=metadata,
                    )
                return SimulatedAgent(cluster=response.cluster.metadata.name, token=response.token)

            self.agents = list(await asyncio.gather(*(one(i) for i in range(count))))

    def _channel_for(self, index: int) -> grpc.aio.Channel:
        # A few agents share a connection, as a real fleet never would, but one process
        # cannot hold a thousand sockets' worth of HTTP/2 state cheaply either. Agents
        # are dealt over the replicas first, then grouped per replica.
        replica = index % len(self.addresses)
        key = (replica, index // len(self.addresses) // AGENTS_PER_CHANNEL)
        if key not in self._channels:
            self._channels[key] = open_aio_channel(
                self.addresses[replica],
                self.ca_file,
                options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
            )
        return self._channels[key]

    async def _run_agent(self, index: int, agent: SimulatedAgent) -> None:
        stub = agent_pb2_grpc.AgentServiceStub(self._channel_for(index))
        outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        hello = agent_pb2.Hello(cluster=agent.cluster, agent_version="simulated")
        for name, (uid, generation) in agent.held.items():
            hello.held_works.add(name=name, uid=uid, generation=generation)

        async def heartbeats() -> None:
            while True:
                outbox.put_nowait(
                    agent_pb2.AgentMessage(
                        heartbeat=agent_pb2.Heartbeat(
                            kubernetes_version="v1.35.4",
                            api_server_ready=True,
                            node_summary=cluster_pb2.NodeSummary(total_num=3, ready_num=3),
                        )
                    )
                )
                await asyncio.sleep(self.heartbeat_interval)

        call = stub.Connect(
            agentstream.outgoing(hello, outbox),
            metadata=(("authorization", f"Bearer {agent.token}"),),
        )
        beating = asyncio.create_task(heartbeats())
        try:
            async for message in call:
                which = message.WhichOneof("message")
                if which == "work":
                    self._receive(agent, outbox, [message.work])
                elif which == "batch":
                    self._receive(agent, outbox, message.batch.works)
                    for delete in message.batch.deletes:
                        self._delete(agent, outbox, delete)
                elif which == "delete":
                    self._delete(agent, outbox, message.delete)
                elif which == "welcome":
                    agent.connected.set()
                elif which == "synced":
                    agent.sync = message.synced
                    agent.synced_at = time.perf_counter()
        finally:
            beating.cancel()
            agent.connected.clear()

    def _receive(
        self,
        agent: SimulatedAgent,
        outbox: asyncio.Queue[agent_pb2.AgentMessage],
        works: Iterable[work_pb2.PropagationWork],
    ) -> None:
        """Acknowledge and report applied, as a real agent does once it has applied."""
        now = time.perf_counter()
        batch = agent_pb2.AgentBatch()
        for work in works:
            meta = work.metadata
            agent.received += 1
            # Keyed by the template generation the work was built from.
            template_generation = int(meta.annotations.get(TEMPLATE_GENERATION, "0"))
            agent.arrivals.setdefault((meta.name, template_generation), now)
            agent.template_generations[meta.name] = template_generation
            agent.held[meta.name] = (meta.uid, meta.generation)
            batch.acks.add(name=meta.name, uid=meta.uid, generation=meta.generation)
            batch.statuses.add(
                name=meta.name, uid=meta.uid, generation=meta.generation, applied=True
            )
        outbox.put_nowait(agent_pb2.AgentMessage(batch=batch))
        self.arrival_event.set()

    @staticmethod
    def _delete(
        agent: SimulatedAgent,
        outbox: asyncio.Queue[agent_pb2.AgentMessage],
        delete: agent_pb2.WorkDelete,
    ) -> None:
        agent.deletes += 1
        agent.held.pop(delete.name, None)
        outbox.put_nowait(
            agent_pb2.AgentMessage(deleted=agent_pb2.WorkDeleted(name=delete.name, uid=delete.uid))
        )

    def connect(self) -> None:
        """Open every agent's stream (in the background)."""
        for index, agent in enumerate(self.agents):
            agent.synced_at = None
            agent.sync = None
            self._tasks.append(asyncio.create_task(self._run_agent(index, agent)))

    async def wait_connected(self, *, seconds: float = 120) -> None:
        await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in self.agents)), seconds)

    async def disconnect(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    def total_arrivals(self) -> int:
        return sum(len(a.arrivals) for a in self.agents)

    async def wait_generations(self, final: dict[str, int], *, seconds: float) -> None:
        """Wait until every agent holds each named work at least at that generation."""
        deadline = time.monotonic() + seconds

        def done() -> bool:
            return all(
                agent.template_generations.get(name, 0) >= generation
                for agent in self.agents
                for name, generation in final.items()
            )

        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("not every agent caught up with the last updates")
            self.arrival_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrival_event.wait(), timeout=1.0)

    async def wait_arrivals(self, count: int, *, seconds: float) -> float:
        """Wait until ``count`` distinct work versions arrived; returns the last arrival."""
        deadline = time.monotonic() + seconds
        while self.total_arrivals() < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.total_arrivals()}/{count} works arrived")
            self.arrival_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrival_event.wait(), timeout=min(remaining, 1.0))
        return max(t for a in self.agents for t in a.arrivals.values())
