"""``make members-up|members-down|members-ls``: a member fleet that outlives the command.

``up`` starts a detached supervisor process that owns the fleet (so the kernel's
parent-death signal keeps every child tied to it), waits until the fleet is ready and
returns. The supervisor writes ``state.json`` beside the members; ``ls`` and ``down``
read it. ``down`` sends the supervisor SIGTERM, and it stops everything it started.

With ``--control-plane``, the control plane stores its objects in the fleet's etcd, or,
with ``--etcd-members N``, in an etcd cluster of its own of N members on loopback
(``ls`` lists them), as production would run it: three or five members. With
``--replicas N``, N control-plane processes share that etcd and one admin token file
(each logs to ``controlplane-<i>.log``); agent ``i`` starts on replica ``i mod N`` and
is told every address to fail over, and the CLI config names every replica.

Every etcd it starts serves TLS and asks its clients for a certificate of its CA
(``--client-cert-auth``): the members' kube-apiservers and the control plane are
given theirs (``--etcd-cafile``, ``--etcd-certfile``, ``--etcd-keyfile``), and ``ls``
says where the files are, for etcdctl.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from archipel.fleet import members, tools
from archipel.fleet.controlplane import AgentProcess, ControlPlaneReplicas
from archipel.fleet.etcd import EtcdCluster, free_port
from archipel.fleet.processes import alive

STATE_FILE = "state.json"


class FleetCtlError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def _state_path(root: Path) -> Path:
    return root / STATE_FILE


def _read_state(root: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_path(root).read_text())
    except FileNotFoundError:
        return None
    return state


def _supervisor_log(root: Path) -> Path:
    return root.parent / f"{root.name}-supervisor.log"


def up(
    root: Path,
    *,
    count: int,
    profile: members.Profile,
    timeout: float,
    control_plane: bool = False,
    etcd_members: int = 0,
    replicas: int = 1,
    reuse: bool = False,
) -> None:
    state = _read_state(root)
    if state is not None and alive(state.get("supervisorPid")):
        plane = state.get("controlPlane")
        same = (plane is not None) == control_plane and (
            plane is None
            or (
                len(plane.get("etcd", {})) == etcd_members
                and len(plane.get("replicas", [plane])) == replicas
            )
        )
        if reuse and same:
            print("already running")
            ls(root)
            return
        raise FleetCtlError(f"members are already running under {root}; run 'make members-down'")
    root.parent.mkdir(parents=True, exist_ok=True)
    log_path = _supervisor_log(root)
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "archipel.fleet.fleetctl",
                "serve",
                "--root",
                str(root),
                "--count",
                str(count),
                "--profile",
                profile,
                *(["--control-plane"] if control_plane else []),
                *(["--etcd-members", str(etcd_members)] if etcd_members else []),
                *(["--replicas", str(replicas)] if replicas != 1 else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise FleetCtlError(f"members failed to start (log {log_path}):\n{tail}")
        state = _read_state(root)
        if state is not None and state.get("supervisorPid") == supervisor.pid:
            print(f"{count} {profile} member(s) ready in {state['startedInSeconds']:.1f}s")
            ls(root)
            return
        time.sleep(0.2)
    supervisor.terminate()
    raise FleetCtlError(f"members not ready after {timeout:.0f}s (log {log_path})")


def serve(
    root: Path,
    *,
    count: int,
    profile: members.Profile,
    control_plane: bool,
    etcd_members: int = 0,
    replicas: int = 1,
) -> None:
    """Run the fleet (and optionally a control plane of ``replicas`` processes with an
    agent per member, on an etcd cluster of its own when ``etcd_members`` says how many
    members) until SIGTERM or SIGINT."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.set())
    fleet = members.Fleet(root, members.default_specs(count, profile=profile), etcd_tls=True)
    fleet.start()
    plane: ControlPlaneReplicas | None = None
    etcd: EtcdCluster | None = None
    agents: list[AgentProcess] = []
    try:
        state = fleet.describe() | {"startedInSeconds": fleet.started_in, "profile": profile}
        if control_plane:
            local = root.parent
            endpoints = [fleet.etcd.endpoint] if fleet.etcd else []
            etcd_tls = fleet.etcd.client_tls if fleet.etcd else None
            if etcd_members:
                etcd = EtcdCluster(
                    binary=tools.ensure("etcd").etcd,
                    directory=root / "_controlplane-etcd",
                    size=etcd_members,
                    tls=True,
                )
                etcd.start()
                endpoints = etcd.endpoints
                etcd_tls = etcd.client_tls
            plane = ControlPlaneReplicas(
                replicas,
                etcd_endpoint=",".join(endpoints),
                etcd_tls=etcd_tls,
                directory=local,
                # 7443, 7444, ... when free, so people can remember them.
                ports=[_preferred_port(7443 + index) for index in range(replicas)],
                # The agents' mutual-TLS ports: 7453, 7454, ...
                agent_ports=[_preferred_port(7453 + index) for index in range(replicas)],
            )
            plane.start()
            for index, member in enumerate(fleet):
                # The documented flow: a bootstrap token bound to the member, then the
                # agent registers and keeps its certificate in a Secret of the member;
                # its stream is mutual TLS.
                agent = plane.agent(
                    index, member=member, bootstrap_token_file=plane.bootstrap(member)
                )
                agent.start()
                agents.append(agent)
            plane.write_cli_config(local / "archipel.yaml")
            # "address" and "pid" stay the first replica's, as they were with one.
            state["controlPlane"] = {
                "address": plane[0].address,
                "pid": plane[0].process.pid,
                "etcdEndpoints": endpoints,
                "etcdTls": (
                    {"ca": str(etcd_tls.ca), "cert": str(etcd_tls.cert), "key": str(etcd_tls.key)}
                    if etcd_tls is not None
                    else None
                ),
                "replicas": [
                    {
                        "address": replica.address,
                        "pid": replica.process.pid,
                        "metricsPort": replica.metrics_port,
                        "log": str(replica.process.log_path),
                    }
                    for replica in plane.replicas
                ],
            }
            if etcd is not None:
                state["controlPlane"]["etcd"] = {
                    m.name: {"endpoint": m.endpoint, "pid": m.process.pid} for m in etcd
                }
            state["agents"] = {a.member.name: a.process.pid for a in agents}
        tmp = _state_path(root).with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(_state_path(root))
        print(f"fleet ready in {fleet.started_in:.1f}s", flush=True)
        while not stopping.wait(1.0):
            pass
    finally:
        _state_path(root).unlink(missing_ok=True)
        for agent in agents:
            agent.stop()
        if plane is not None:
            plane.stop()
        if etcd is not None:
            etcd.stop()
        fleet.stop()
        print("fleet stopped", flush=True)


def _preferred_port(port: int) -> int:
    """``port`` when it is free, so people can remember it; any free port otherwise."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def down(root: Path, *, timeout: float = 60.0) -> None:
    state = _read_state(root)
    if state is None or not alive(state.get("supervisorPid")):
        _state_path(root).unlink(missing_ok=True)
        print("no members running")
        return
    pid: int = state["supervisorPid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        # The members die with it: their parent-death signal is SIGKILL.
        os.kill(pid, signal.SIGKILL)
    print(f"stopped {len(state['members'])} member(s)")


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def ls(root: Path) -> None:
    state = _read_state(root)
    if state is None or not alive(state.get("supervisorPid")):
        print("no members running")
        return
    rows = [("NAME", "PROFILE", "STATE", "SERVER", "REGION", "ZONE", "RSS", "KUBECONFIG")]
    for name, member in state["members"].items():
        pids = [p for p in member["pids"].values() if p]
        api_pid = member["pids"].get("kube-apiserver")
        running = [p for p in pids if alive(p)]
        if not alive(api_pid):
            status = "stopped"
        elif len(running) < len(pids):
            status = "degraded"
        else:
            status = "running"
        spec = member["spec"]
        rows.append(
            (
                name,
                spec["profile"],
                status,
                member["server"],
                spec["region"],
                spec["zone"],
                f"{_rss_mib(running):.0f}Mi",
                os.path.relpath(member["kubeconfig"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    plane = state.get("controlPlane") or {}
    replicas = plane.get("replicas") or []
    if replicas:
        print(f"\ncontrol plane ({len(replicas)} replica{'s' if len(replicas) > 1 else ''}):")
        for index, replica in enumerate(replicas):
            status = "running" if alive(replica["pid"]) else "stopped"
            print(
                f"  replica-{index}  {status}  {replica['address']}  "
                f"metrics :{replica['metricsPort']}  pid {replica['pid']}  "
                f"{os.path.relpath(replica['log'])}"
            )
    etcd = plane.get("etcd") or {}
    if etcd:
        print(f"\ncontrol plane etcd ({len(etcd)} members):")
        for name, member in etcd.items():
            status = "running" if alive(member["pid"]) else "stopped"
            print(f"  {name}  {status}  {member['endpoint']}  pid {member['pid']}")
    files = plane.get("etcdTls")
    if files:
        # What etcdctl needs to look at the control plane's etcd (TLS, client certificate).
        print(
            f"\netcdctl --endpoints={','.join(plane['etcdEndpoints'])} "
            f"--cacert={os.path.relpath(files['ca'])} --cert={os.path.relpath(files['cert'])} "
            f"--key={os.path.relpath(files['key'])} get --prefix /archipel/ --keys-only"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archipel-members", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "ls", "serve"])
    parser.add_argument("--root", type=Path, default=Path(".local/members"))
    parser.add_argument("--count", "-n", type=int, default=3)
    parser.add_argument("--profile", choices=members.PROFILES, default="api")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--control-plane",
        action="store_true",
        help="also run a control plane and an agent per member",
    )
    parser.add_argument(
        "--etcd-members",
        type=int,
        default=0,
        help="with --control-plane: an etcd cluster of this many members of its own for the "
        "control plane (3 or 5 to survive the loss of 1 or 2); 0 shares the fleet's etcd",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="with --control-plane: this many control-plane processes on the same etcd, "
        "sharing one admin token; agents are spread over them",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="succeed if the same setup already runs"
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.count < 1:
            raise FleetCtlError("--count: must be at least 1")
        if args.replicas < 1:
            raise FleetCtlError("--replicas: must be at least 1")
        if args.etcd_members < 0:
            raise FleetCtlError("--etcd-members: must be 0 (the fleet's etcd) or more")
        if args.command == "up":
            up(
                root,
                count=args.count,
                profile=args.profile,
                timeout=args.timeout,
                control_plane=args.control_plane,
                etcd_members=args.etcd_members,
                replicas=args.replicas,
                reuse=args.reuse,
            )
        elif args.command == "serve":
            serve(
                root,
                count=args.count,
                profile=args.profile,
                control_plane=args.control_plane,
                etcd_members=args.etcd_members,
                replicas=args.replicas,
            )
        elif args.command == "down":
            down(root)
        else:
            ls(root)
    except (FleetCtlError, members.MemberError, members.ProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
