"""Two agents for one member elect a leader through a Lease in the member, on a real
member's API server, with the real control plane and agent processes.

One agent leads (holds the stream, applies), the other stands by. The leader is killed
with SIGKILL: the standby takes the Lease once it expires, at the next epoch, reads the
ledger the leader left and checks every object against it instead of applying again,
and applies what arrived while no agent acted. Then the new leader is frozen (SIGSTOP)
while a third agent takes over; woken, it finds its term over and writes nothing.

The takeover times are measured and printed (run with ``-s`` to see them); they are
only held to a generous bound, three lease durations.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from archipel.core.names import LEDGER_LABEL, SYSTEM_NAMESPACE
from archipel.fleet.controlplane import AgentProcess, ControlPlaneProcess
from archipel.fleet.members import Fleet, Member
from tests.e2e.conftest import configmap, own_control_plane, wait_for

pytestmark = pytest.mark.members(count=1, profile="api", isolated=True)

LEASE_DURATION = 4
# Short timings, in client-go's proportions (15/10/2): a takeover within seconds.
TIMINGS = (
    f"--leader-elect-lease-duration={LEASE_DURATION}",
    "--leader-elect-renew-deadline=3",
    "--leader-elect-retry-period=1",
)
NAMESPACE = "elected"
TEMPLATES = [f"settings-{index}" for index in range(5)]
CHECKED = re.compile(r"work (\S+): checked after a restart, (\d+) of (\d+) objects applied again")


@pytest.fixture
def plane(members: Fleet, tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    yield from own_control_plane(members, tmp_path / "cp", "election")


class Election:
    def __init__(self, plane: ControlPlaneProcess, member: Member, token: Path) -> None:
        self.plane = plane
        self.member = member
        self.token = token
        self.agents: dict[str, AgentProcess] = {}
        self.core = k8s.CoreV1Api(member.api_client())
        self.leases = k8s.CoordinationV1Api(member.api_client())

    def start(self, identity: str) -> AgentProcess:
        agent = AgentProcess(
            control_plane=self.plane,
            member=self.member,
            token_file=self.token,
            heartbeat_interval=1,
            name=identity,
            extra_args=("--leader-elect", f"--identity={identity}", *TIMINGS),
        )
        agent.start()
        self.agents[identity] = agent
        return agent

    def log(self, identity: str) -> str:
        return self.agents[identity].log_path.read_text(errors="replace")

    def holder(self) -> tuple[str, int] | None:
        try:
            lease = self.leases.read_namespaced_lease(
                f"archipel-agent-{self.member.name}", SYSTEM_NAMESPACE
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return str(lease.spec.holder_identity or ""), int(lease.spec.lease_transitions or 0)

    def held_by(self, identity: str, *, timeout: float = 60.0) -> int:
        """The epoch, once ``identity`` holds the Lease."""

        def epoch() -> int | None:
            held = self.holder()
            return held[1] if held is not None and held[0] == identity else None

        return wait_for(f"{identity} to hold the lease\n{self.tails()}", epoch, timeout=timeout)

    def config_map(self, name: str) -> Any:
        try:
            return self.core.read_namespaced_config_map(name, NAMESPACE)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def versions(self) -> dict[str, str]:
        return {name: self.config_map(name).metadata.resource_version for name in TEMPLATES}

    def ledger_works(self) -> set[str]:
        maps = self.core.list_namespaced_config_map(
            SYSTEM_NAMESPACE, label_selector=f"{LEDGER_LABEL}=true"
        ).items
        return {str((item.data or {}).get("work", "")) for item in maps}

    def tails(self) -> str:
        return "\n".join(
            f"--- {name}\n{agent.process.log_tail(15)}" for name, agent in self.agents.items()
        )

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()


def measure(what: str, check: Any, *, timeout: float) -> float:
    """Seconds until ``check()`` holds, polled every 50 ms (the figures' resolution)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_standby_takes_over_from_a_killed_leader_without_applying_twice(
    members: Fleet, plane: ControlPlaneProcess
) -> None:
    member = next(iter(members))
    token = plane.join(member)
    election = Election(plane, member, token)
    api = plane.client()
    try:
        election.start("agent-a")
        epoch_a = election.held_by("agent-a")
        election.start("agent-b")
        wait_for(
            "agent-b standing by",
            lambda: "standing by: lease" in election.log("agent-b"),
        )

        api.apply_document(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
        for name in TEMPLATES:
            api.apply_document(configmap(NAMESPACE, name, {"key": name}))
        api.apply_document(
            {
                "apiVersion": "policy.karmada.io/v1alpha1",
                "kind": "PropagationPolicy",
                "metadata": {"name": "settings", "namespace": NAMESPACE},
                "spec": {
                    "resourceSelectors": [{"apiVersion": "v1", "kind": "ConfigMap"}],
                    "placement": {"clusterAffinity": {"clusterNames": [member.name]}},
                },
            }
        )
        works = {f"{NAMESPACE}.{name}-configmap" for name in TEMPLATES}
        # Applied by the leader and recorded in its ledger: all the standby needs.
        wait_for(
            f"the works in the ledger\n{election.tails()}",
            lambda: works <= election.ledger_works(),
        )
        before = election.versions()
        assert "leading: lease" not in election.log("agent-b")

        # The leader dies; a template arrives while no agent acts.
        election.agents["agent-a"].kill()
        killed = time.monotonic()
        api.apply_document(configmap(NAMESPACE, "after", {"key": "after"}))
        lease_s = measure(
            "agent-b to take the lease",
            lambda: (held := election.holder()) is not None and held[0] == "agent-b",
            timeout=3 * LEASE_DURATION,
        )
        applied_s = (time.monotonic() - killed) + measure(
            "the new template in the member",
            lambda: election.config_map("after") is not None,
            timeout=60,
        )
        print(
            f"\ntakeover after SIGKILL (lease {LEASE_DURATION}s, renew 3s, retry 1s): "
            f"lease held by the standby {lease_s:.2f}s after the kill, "
            f"the template sent meanwhile applied {applied_s:.2f}s after it"
        )
        epoch_b = election.held_by("agent-b")
        assert epoch_b == epoch_a + 1
        wait_for(
            "the control plane to name agent-b's epoch",
            lambda: f"leader 'agent-b' at lease epoch {epoch_b}" in plane.process.log_tail(200),
        )

        # Nothing applied twice: the new leader checked every work the ledger held and
        # applied none of their objects again; they are as the old leader left them.
        def checked() -> dict[str, tuple[int, int]]:
            found = {
                match[1]: (int(match[2]), int(match[3]))
                for match in CHECKED.finditer(election.log("agent-b"))
            }
            return found if works <= set(found) else {}

        report = wait_for(f"agent-b to check the works\n{election.tails()}", checked)
        assert {work: report[work] for work in works} == dict.fromkeys(works, (0, 1))
        assert election.versions() == before

        # Frozen, the leader cannot renew; a third agent takes over. Woken, the old
        # leader finds its term over: it stands by and writes nothing.
        election.start("agent-c")
        wait_for("agent-c standing by", lambda: "standing by: lease" in election.log("agent-c"))
        election.agents["agent-b"].pause()
        paused = time.monotonic()
        epoch_c = election.held_by("agent-c", timeout=3 * LEASE_DURATION)
        print(f"takeover from a frozen leader: {time.monotonic() - paused:.2f}s after SIGSTOP")
        assert epoch_c == epoch_b + 1
        api.apply_document(configmap(NAMESPACE, "after", {"key": "changed"}))
        wait_for(
            "agent-c to apply the change",
            lambda: (
                (found := election.config_map("after")) is not None
                and found.data == {"key": "changed"}
            ),
        )
        after = {
            **election.versions(),
            "after": election.config_map("after").metadata.resource_version,
        }
        election.agents["agent-b"].resume()
        wait_for(
            f"agent-b to stand by again\n{election.tails()}",
            lambda: (
                f"lease {SYSTEM_NAMESPACE}/archipel-agent-{member.name} held by agent-c"
                in election.log("agent-b")
            ),
        )
        assert "stepping down" in election.log("agent-b") or "stopped acting" in election.log(
            "agent-b"
        )
        now = {
            **election.versions(),
            "after": election.config_map("after").metadata.resource_version,
        }
        assert now == after
        assert election.holder() == ("agent-c", epoch_c)
    finally:
        api.close()
        election.stop()
