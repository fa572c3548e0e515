"""Chaos: a seeded random history of changes, faults injected at random, and a check
that every member ends up holding exactly what the final templates and policies say.

The fleet is real: member clusters (kube-apiservers), the control plane's own etcd
cluster (three members), the control plane and two agents per member (electing their
leader through a Lease in the member), each a process this script kills (``kill -9``),
freezes (SIGSTOP, then SIGCONT) and restarts, as a supervisor would.

* **The load** (:class:`History`): ConfigMaps and Deployments in namespace ``chaos``,
  created, changed, rescaled, moved from one policy to another and deleted, and the
  placements of three PropagationPolicies changed (member subsets, Duplicated or
  Divided by equal static weights). Every step is drawn from one ``random.Random(seed)``
  and the model it keeps, so a seed replays the same history. A step that fails (the
  control plane is down) is retried until it is acknowledged, so the model is what was
  stored. Policies are never deleted: Karmada's rule leaves a deleted policy's objects
  in place, which would make "what should be where" a matter of timing.
* **The faults** (:func:`faults`): every few seconds one of: kill -9 of the control
  plane, of an etcd member, of an agent, or of a member's API server (each restarted
  after a moment);
  or SIGSTOP of the control plane or an agent (continued after a moment). With
  ``--replicas N`` the control plane is N processes on the etcd cluster, a fault on it
  hits one replica drawn at random (:func:`pick_replica`), and the agents are spread
  over the replicas, each told every address to fail over.
* **The check** (:func:`compare`): after the last fault, each member's ConfigMaps and
  Deployments in ``chaos`` against :func:`expected` of what the control plane stores
  (:func:`stored_model`; where that is not what the history wrote, because a write whose
  answer was lost was carried out late, the report lists it apart): same objects, same content, the
  Duplicated replicas, and for Divided the members and the total. It is repeated until
  it comes out clean (the seconds that took are the convergence time) or a deadline
  passes; what is still wrong then is reported as lost, extra, misplaced or wrong.

``make chaos DURATION=300`` runs it; the report is printed and written to
``.local/bench/chaos.json``. ``tests/e2e/test_chaos.py`` runs a short one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import tenacity

from archipel import structs
from archipel.client import Client, ClientError
from archipel.core import kinds
from archipel.fleet import tools
from archipel.fleet.controlplane import AgentProcess, ControlPlaneReplicas
from archipel.fleet.etcd import EtcdCluster
from archipel.fleet.members import Fleet, Member, default_specs

NAMESPACE = "chaos"
# Short lease timings, so a standby takes over within seconds of the leader's death.
LEASE_TIMINGS = (
    "--leader-elect-lease-duration=4",
    "--leader-elect-renew-deadline=3",
    "--leader-elect-retry-period=1",
)
POLICIES = ("p0", "p1", "p2")
POLICY_LABEL = "chaos.archipel.io/policy"
KINDS = ("ConfigMap", "Deployment")

# -- the model: what the templates and policies say ------------------------------------


@dataclasses.dataclass(frozen=True)
class Placement:
    clusters: tuple[str, ...]
    divided: bool


@dataclasses.dataclass(frozen=True)
class Template:
    kind: str
    name: str
    policy: str
    version: int
    replicas: int = 0
    """Deployments only: always at least the number of members, so a Divided one has
    a replica in every member it is placed on."""


@dataclasses.dataclass
class Model:
    placements: dict[str, Placement]
    templates: dict[str, Template] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Step:
    """One change: the template or policy it writes (None: the template is deleted)."""

    what: str
    template: Template | None = None
    name: str = ""
    policy: str = ""
    placement: Placement | None = None


class History:
    """The seeded random steps, each drawn from the model as it stands."""

    def __init__(self, seed: int, members: tuple[str, ...], *, most_templates: int = 24):
        self.random = random.Random(seed)
        self.members = members
        self.most_templates = most_templates
        self.model = Model(placements={p: self._placement() for p in POLICIES})
        self._serial = 0

    def _placement(self) -> Placement:
        count = self.random.randint(1, len(self.members))
        clusters = tuple(sorted(self.random.sample(self.members, count)))
        return Placement(clusters, divided=self.random.random() < 0.5)

    def _replicas(self) -> int:
        return self.random.randint(len(self.members), len(self.members) + 4)

    def next(self) -> Step:
        model, pick = self.model, self.random
        names = sorted(model.templates)
        choice = pick.random()
        if not names or (choice < 0.35 and len(names) < self.most_templates):
            self._serial += 1
            kind = pick.choice(KINDS)
            prefix = "cm" if kind == "ConfigMap" else "dp"
            template = Template(
                kind,
                f"chaos-{prefix}-{self._serial:04d}",
                pick.choice(POLICIES),
                1,
                self._replicas() if kind == "Deployment" else 0,
            )
            return Step("create", template=template, name=template.name)
        name = pick.choice(names)
        current = model.templates[name]
        if choice < 0.6:
            changed = dataclasses.replace(current, version=current.version + 1)
            if current.kind == "Deployment" and pick.random() < 0.5:
                changed = dataclasses.replace(changed, replicas=self._replicas())
            return Step("update", template=changed, name=name)
        if choice < 0.72:
            others = [p for p in POLICIES if p != current.policy]
            moved = dataclasses.replace(current, policy=pick.choice(others))
            return Step("move", template=moved, name=name)
        if choice < 0.85:
            return Step("delete", name=name)
        policy = pick.choice(POLICIES)
        return Step("place", policy=policy, placement=self._placement())

    def commit(self, step: Step) -> None:
        """The step was acknowledged: the model follows it."""
        if step.placement is not None:
            self.model.placements[step.policy] = step.placement
        elif step.template is not None:
            self.model.templates[step.name] = step.template
        else:
            self.model.templates.pop(step.name, None)


def template_document(template: Template) -> dict[str, Any]:
    metadata = {
        "name": template.name,
        "namespace": NAMESPACE,
        "labels": {POLICY_LABEL: template.policy},
    }
    if template.kind == "ConfigMap":
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": {"version": str(template.version)},
        }
    labels = {"app": template.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": template.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": _image(template.version)}]},
            },
        },
    }


def policy_document(name: str, placement: Placement) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceSelectors": [
            {
                "apiVersion": api_version,
                "kind": kind,
                "labelSelector": {"matchLabels": {POLICY_LABEL: name}},
            }
            for api_version, kind in (("v1", "ConfigMap"), ("apps/v1", "Deployment"))
        ],
        "placement": {"clusterAffinity": {"clusterNames": list(placement.clusters)}},
    }
    if placement.divided:
        spec["placement"]["replicaScheduling"] = {
            "replicaSchedulingType": "Divided",
            "replicaDivisionPreference": "Weighted",
            "weightPreference": {
                "staticWeightList": [
                    {"targetCluster": {"clusterNames": [c]}, "weight": 1}
                    for c in placement.clusters
                ]
            },
        }
    return {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "PropagationPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def _image(version: int) -> str:
    return f"registry.local/app:v{version}"


# -- what should be where, and what is -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seen:
    """A ConfigMap or Deployment in a member: its content as the check compares it."""

    version: str
    replicas: int = 0


Observed = Mapping[str, Mapping[tuple[str, str], Seen]]
"""Member name -> (kind, name) -> what it holds."""


def expected(model: Model) -> dict[str, dict[tuple[str, str], Seen]]:
    """What each member must hold. A Divided Deployment's share per member is left to
    the scheduler (replicas 0 here); :func:`compare` checks the members and the total."""
    wanted: dict[str, dict[tuple[str, str], Seen]] = {}
    for template in model.templates.values():
        placement = model.placements[template.policy]
        for member in placement.clusters:
            replicas = 0 if placement.divided else template.replicas
            version = (
                str(template.version) if template.kind == "ConfigMap" else _image(template.version)
            )
            wanted.setdefault(member, {})[(template.kind, template.name)] = Seen(version, replicas)
    return wanted


@dataclasses.dataclass
class Differences:
    lost: list[str] = dataclasses.field(default_factory=list)
    """Should be in a member and is not."""
    extra: list[str] = dataclasses.field(default_factory=list)
    """In a member, and its template is deleted."""
    misplaced: list[str] = dataclasses.field(default_factory=list)
    """In a member its policy does not place it on."""
    wrong: list[str] = dataclasses.field(default_factory=list)
    """In the right member with the wrong content, or a Divided total that is off."""

    @property
    def clean(self) -> bool:
        return not (self.lost or self.extra or self.misplaced or self.wrong)

    def first(self) -> str:
        """One difference, as an example."""
        return next(iter(self.lost + self.extra + self.misplaced + self.wrong), "")

    def counts(self) -> dict[str, int]:
        return {f: len(getattr(self, f)) for f in ("lost", "extra", "misplaced", "wrong")}


def compare(model: Model, observed: Observed) -> Differences:
    wanted = expected(model)
    found = Differences()
    totals: dict[str, int] = {}
    for member in sorted(set(wanted) | set(observed)):
        should = wanted.get(member, {})
        holds = observed.get(member, {})
        for key in sorted(set(should) | set(holds)):
            where = f"{member}: {key[0]} {key[1]}"
            if key not in holds:
                found.lost.append(where)
            elif key not in should:
                (found.misplaced if key[1] in model.templates else found.extra).append(where)
            elif holds[key].version != should[key].version:
                found.wrong.append(f"{where}: {holds[key].version}, not {should[key].version}")
            elif should[key].replicas and holds[key].replicas != should[key].replicas:
                found.wrong.append(
                    f"{where}: {holds[key].replicas} replicas, not {should[key].replicas}"
                )
            if key in holds and key[0] == "Deployment":
                totals[key[1]] = totals.get(key[1], 0) + holds[key].replicas
    for template in model.templates.values():
        placement = model.placements[template.policy]
        if template.kind == "Deployment" and placement.divided:
            total = totals.get(template.name, 0)
            if total != template.replicas:
                found.wrong.append(
                    f"Deployment {template.name}: {total} replicas in all, not {template.replicas}"
                )
    return found


class Unobservable(RuntimeError):
    """A member's API server did not answer a listing."""


def observe(members: Mapping[str, Member]) -> dict[str, dict[tuple[str, str], Seen]]:
    """What each member holds in ``chaos``, read from its API server."""
    result: dict[str, dict[tuple[str, str], Seen]] = {}
    for name, member in members.items():
        holds: dict[tuple[str, str], Seen] = {}
        for kind, path in (
            ("ConfigMap", f"/api/v1/namespaces/{NAMESPACE}/configmaps"),
            ("Deployment", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"),
        ):
            try:
                status, body = member.request("GET", path)
            except OSError as error:
                raise Unobservable(f"{name}: {error}") from error
            if status != 200:
                raise Unobservable(f"{name}: GET {path}: {status}")
            for item in body.get("items", []):
                object_name = item["metadata"]["name"]
                if not object_name.startswith("chaos-"):
                    continue  # kube-root-ca.crt
                if kind == "ConfigMap":
                    holds[(kind, object_name)] = Seen(item.get("data", {}).get("version", ""))
                else:
                    spec = item["spec"]
                    image = spec["template"]["spec"]["containers"][0]["image"]
                    holds[(kind, object_name)] = Seen(image, spec.get("replicas", 0))
        result[name] = holds
    return result


# -- the fleet and its faults ------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    duration: float = 60.0
    seed: int = 1
    fault_interval: float = 5.0
    converge_timeout: float = 240.0
    members: int = 3
    agents_per_member: int = 2
    replicas: int = 1
    """Control-plane processes on the one etcd cluster."""


@dataclasses.dataclass
class Plane:
    """What the faults act on."""

    etcd: EtcdCluster
    control_plane: ControlPlaneReplicas
    agents: dict[str, AgentProcess]
    members: dict[str, Member]


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    target: str
    break_: Callable[[], None]
    mend: Callable[[], None]
    aim: Callable[[], str] | None = None
    """Called just before ``break_`` when the target is drawn each time (one replica of
    several); returns the target's name for the report."""


def pick_replica(chooser: random.Random, count: int) -> int:
    """The replica a control-plane fault hits. With one replica nothing is drawn, so a
    seed replays the same faults as before there were replicas."""
    return chooser.randrange(count) if count > 1 else 0


def replica_name(index: int, count: int) -> str:
    """A replica as the report names it: ``controlplane`` when it is the only one."""
    return "controlplane" if count == 1 else f"controlplane-{index}"


class _ReplicaTarget:
    """The replica a control-plane fault acts on: drawn when the fault breaks, so
    its mend acts on the same one."""

    def __init__(self, replicas: ControlPlaneReplicas, chooser: random.Random) -> None:
        self.replicas = replicas
        self.chooser = chooser
        self.index = 0

    def aim(self) -> str:
        self.index = pick_replica(self.chooser, len(self.replicas))
        return replica_name(self.index, len(self.replicas))

    def kill(self) -> None:
        self.replicas[self.index].process.kill()

    def start(self) -> None:
        self.replicas[self.index].start()

    def pause(self) -> None:
        self.replicas[self.index].process.pause()

    def resume(self) -> None:
        self.replicas[self.index].process.resume()


def faults(plane: Plane, chooser: random.Random | None = None) -> list[Fault]:
    """Every fault the fleet can take, one per target; the control plane's two pick
    one of its replicas with ``chooser`` each time."""
    killed = _ReplicaTarget(plane.control_plane, chooser or random.Random(0))
    stopped = _ReplicaTarget(plane.control_plane, chooser or random.Random(0))
    found = [
        Fault("kill", "controlplane", killed.kill, killed.start, killed.aim),
        Fault("stop", "controlplane", stopped.pause, stopped.resume, stopped.aim),
    ]
    for index, etcd_member in enumerate(plane.etcd):
        found.append(Fault("kill", f"etcd-{index}", etcd_member.process.kill, etcd_member.start))
    for name, agent in plane.agents.items():
        found.append(Fault("kill", name, agent.kill, agent.start))
        found.append(Fault("stop", name, agent.process.pause, agent.process.resume))
    for name, member in plane.members.items():
        found.append(
            Fault("kill", f"{name}/apiserver", member.apiserver.kill, member.start_apiserver)
        )
    return found


def stored_model(client: Client) -> Model:
    """The model as the control plane stores it at the end: what the members must
    match. It can differ from the history's when a write the load gave up on (its
    answer lost while the control plane was frozen) was carried out after a later one:
    such a write is the client's to fence with a resourceVersion, not propagation's."""
    placements = {}
    for policy in client.list_objects(kinds.PROPAGATION_POLICY, NAMESPACE):
        spec = policy.spec
        placements[policy.metadata.name] = Placement(
            tuple(sorted(spec.placement.cluster_affinity.cluster_names)),
            divided=spec.placement.replica_scheduling.replica_scheduling_type == "Divided",
        )
    templates = {}
    for found in client.list_templates(namespace=NAMESPACE):
        manifest = structs.from_struct(found.manifest)
        metadata = manifest["metadata"]
        name, policy = metadata["name"], metadata.get("labels", {}).get(POLICY_LABEL, "")
        if not name.startswith("chaos-") or policy not in placements:
            continue
        if manifest["kind"] == "ConfigMap":
            version = int(manifest.get("data", {}).get("version", "0"))
            templates[name] = Template("ConfigMap", name, policy, version)
        else:
            image = manifest["spec"]["template"]["spec"]["containers"][0]["image"]
            version = int(image.rsplit(":v", 1)[-1])
            replicas = int(manifest["spec"].get("replicas", 0))
            templates[name] = Template("Deployment", name, policy, version, replicas)
    return Model(placements=placements, templates=templates)


def model_differences(written: Model, stored: Model) -> list[str]:
    """Where the control plane's final state is not what the load's history says."""
    found = [
        f"policy {name}"
        for name in sorted(set(written.placements) | set(stored.placements))
        if written.placements.get(name) != stored.placements.get(name)
    ]
    found += [
        f"template {name}"
        for name in sorted(set(written.templates) | set(stored.templates))
        if written.templates.get(name) != stored.templates.get(name)
    ]
    return found


def supervise(plane: Plane) -> list[str]:
    """Restart whatever is not running, as Kubernetes restarts a crashed pod: a control
    plane that lost its etcd for too long exits (loudly, by design), and must come
    back. Returns what was restarted."""
    restarted = []
    for index, etcd_member in enumerate(plane.etcd):
        if not etcd_member.process.running:
            etcd_member.start()
            restarted.append(f"etcd-{index}")
    for index, replica in enumerate(plane.control_plane.replicas):
        if not replica.process.running:
            replica.start()
            restarted.append(replica_name(index, len(plane.control_plane)))
    for name, agent in plane.agents.items():
        if not agent.process.running:
            agent.start()
            restarted.append(name)
    for name, member in plane.members.items():
        if not member.apiserver.running:
            member.start_apiserver()
            restarted.append(f"{name}/apiserver")
    return restarted


# What a control plane that is down, frozen, restarting or without its etcd answers.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


def _transient(error: BaseException) -> bool:
    return isinstance(error, ClientError) and error.code in _TRANSIENT


def _retrying() -> tenacity.Retrying:
    """A step is retried until the control plane acknowledges it: while it is down,
    frozen or without its etcd, calls fail or time out."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(_transient),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=3.0, jitter=0.5),
        stop=tenacity.stop_after_delay(120),
        reraise=True,
    )


def write(client: Client, step: Step, model: Model) -> None:
    if step.placement is not None:
        client.apply_document(policy_document(step.policy, step.placement))
    elif step.template is not None:
        client.apply_document(template_document(step.template))
    else:
        current = model.templates[step.name]
        api_version = "v1" if current.kind == "ConfigMap" else "apps/v1"
        try:
            client.delete_template(api_version, current.kind, step.name, NAMESPACE)
        except ClientError as error:
            # An earlier try may have deleted it and lost the answer: gone is what
            # was asked.
            if error.code != grpc.StatusCode.NOT_FOUND:
                raise


class Run:
    """One chaos run on a started fleet of members."""

    def __init__(self, settings: Settings, members: Mapping[str, Member], directory: Path):
        self.settings = settings
        self.members = dict(members)
        self.directory = directory
        self.history = History(settings.seed, tuple(sorted(self.members)))
        self.steps: dict[str, int] = {}
        self.injected: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._failures: list[BaseException] = []
        self.restarted_at_end: list[str] = []
        self.not_as_written: list[str] = []

    @contextlib.contextmanager
    def plane(self) -> Iterator[Plane]:
        binaries = tools.ensure("etcd")
        etcd = EtcdCluster(binary=binaries.etcd, directory=self.directory / "etcd", size=3)
        etcd.start()
        control_plane = ControlPlaneReplicas(
            self.settings.replicas,
            etcd_endpoint=",".join(etcd.endpoints),
            directory=self.directory / "controlplane",
            heartbeat_interval=1,
            # The default grace: an agent restarted within seconds does not make its
            # cluster NotReady (which holds new placements off it, Karmada's NoSchedule
            # taint, until the cluster has been Ready again for the success threshold).
            cluster_grace_period=40,
        )
        agents: dict[str, AgentProcess] = {}
        try:
            control_plane.start()
            for name, member in self.members.items():
                token = control_plane.join(member)
                for replica in range(self.settings.agents_per_member):
                    # Two agents per member, as a DaemonSet runs them: one leads
                    # through the member's Lease, the other stands by. Agent i starts
                    # on control-plane replica i mod N and fails over to the others.
                    agent = f"agent-{replica}"
                    agents[f"{name}/{agent}"] = control_plane.agent(
                        len(agents),
                        member=member,
                        token_file=token,
                        heartbeat_interval=1,
                        name=agent,
                        extra_args=(
                            "--leader-elect",
                            f"--identity={name}-{agent}",
                            *LEASE_TIMINGS,
                        ),
                    )
                    agents[f"{name}/{agent}"].start()
            yield Plane(etcd, control_plane, agents, self.members)
        finally:
            for process in agents.values():
                process.stop()
            control_plane.stop()
            etcd.stop()

    def _load(self, plane: Plane) -> None:
        client = Client(plane.control_plane.config())
        try:
            # The policies first, so every template has its policy from the start.
            for policy, placement in self.history.model.placements.items():
                _retrying()(client.apply_document, policy_document(policy, placement))
            while not self._stop.is_set():
                step = self.history.next()
                _retrying()(write, client, step, self.history.model)
                self.history.commit(step)
                self.steps[step.what] = self.steps.get(step.what, 0) + 1
                self._stop.wait(self.history.random.uniform(0.02, 0.2))
        except BaseException as error:
            self._failures.append(error)
        finally:
            client.close()

    def _faults(self, plane: Plane, started: float) -> None:
        """Inject faults until the run's time is up. Runs on the main thread: processes
        are started with a parent-death signal, which Linux ties to the thread that
        started them, so one restarted from a thread that ends would die with it."""
        chooser = random.Random(self.settings.seed + 1)
        every = faults(plane, chooser)
        deadline = started + self.settings.duration
        while time.monotonic() + self.settings.fault_interval < deadline:
            time.sleep(self.settings.fault_interval)
            fault = chooser.choice(every)
            at = time.monotonic() - started
            target = fault.aim() if fault.aim is not None else fault.target
            fault.break_()
            time.sleep(chooser.uniform(0.5, 3.0))
            fault.mend()
            self.injected.append(
                {
                    "fault": fault.name,
                    "target": target,
                    "at": round(at, 1),
                    "mended_after": round(time.monotonic() - started - at, 1),
                    "restarted": supervise(plane),
                }
            )
        time.sleep(max(0.0, deadline - time.monotonic()))

    def _check(self, model: Model) -> Differences:
        """The members against the model; a member that does not answer is counted as
        holding nothing, and the check is made again."""
        try:
            return compare(model, observe(self.members))
        except Unobservable as error:
            return Differences(lost=[str(error)])

    def run(self) -> dict[str, Any]:
        with self.plane() as plane:
            started = time.monotonic()
            load = threading.Thread(target=self._load, args=(plane,), name="chaos-load")
            load.start()
            try:
                self._faults(plane, started)
            finally:
                self._stop.set()
                load.join()
            if self._failures:
                raise self._failures[0]
            self.restarted_at_end = supervise(plane)
            last_fault = time.monotonic()
            client = Client(plane.control_plane.config())
            try:
                final = _retrying()(stored_model, client)
            finally:
                client.close()
            self.not_as_written = model_differences(self.history.model, final)
            differences = self._check(final)
            # How the differences shrank: what was slow to converge, for the report.
            progress = [{"t": 0.0, **differences.counts(), "first": differences.first()}]
            while (
                not differences.clean
                and time.monotonic() - last_fault < self.settings.converge_timeout
            ):
                time.sleep(1.0)
                differences = self._check(final)
                if differences.counts() != {k: progress[-1][k] for k in differences.counts()}:
                    progress.append(
                        {
                            "t": round(time.monotonic() - last_fault, 1),
                            **differences.counts(),
                            "first": differences.first(),
                        }
                    )
            converged = time.monotonic() - last_fault if differences.clean else None
        return {
            "settings": dataclasses.asdict(self.settings),
            "operations": sum(self.steps.values()),
            "operations_by_kind": dict(sorted(self.steps.items())),
            "faults": len(self.injected),
            "faults_by_kind": _tally(
                f"{f['fault']} {f['target'].split('/')[-1].split('-')[0]}" for f in self.injected
            ),
            "templates_at_end": len(final.templates),
            # Writes carried out after the load had given up on them, so stored other
            # than the history says; the members are checked against what is stored.
            "stored_not_as_written": self.not_as_written,
            **differences.counts(),
            "examples": (
                differences.lost + differences.extra + differences.misplaced + differences.wrong
            )[:20],
            "converge_seconds": None if converged is None else round(converged, 1),
            "restarted_at_end": self.restarted_at_end,
            "convergence": progress,
            **duplicate_applies(self.directory / "controlplane" / "agents"),
            "injected": self.injected,
        }


_AGAIN = re.compile(r"checked after a restart, (\d+) of \d+ objects applied again")


def duplicate_applies(logs: Path) -> dict[str, int]:
    """Applies that changed nothing, from the agents' logs: the load never edits a
    member, so every drift correction re-applied what was in place, and so did every
    object applied again when an agent checked its ledger after a restart or a
    takeover (it applies only what differs from what it recorded)."""
    corrections = again = 0
    for log_file in sorted(logs.glob("*.log")):
        text = log_file.read_text(errors="replace")
        corrections += text.count("restored objects changed in the member")
        again += sum(int(count) for count in _AGAIN.findall(text))
    return {"drift_corrections": corrections, "applied_again_after_restart": again}


def _tally(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-interval", type=float, default=5.0)
    parser.add_argument(
        "--replicas", type=int, default=1, help="control-plane processes on the one etcd cluster"
    )
    parser.add_argument("--output", type=Path, default=Path(".local/bench/chaos.json"))
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas: must be at least 1")
    settings = Settings(
        duration=args.duration,
        seed=args.seed,
        fault_interval=args.fault_interval,
        replicas=args.replicas,
    )
    # The logs of every process stay under .local/chaos for a look after the run.
    scratch = args.output.parent.parent / "chaos"
    # A run starts from nothing: the control plane's etcd of an earlier run holds its
    # templates, which this run's model knows nothing of.
    shutil.rmtree(scratch, ignore_errors=True)
    fleet = Fleet(scratch / "fleet", default_specs(settings.members))
    with fleet:
        report = Run(settings, fleet.members, scratch / "run").run()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k != "injected"}
    print(json.dumps(summary, indent=2))
    failed = report["lost"] or report["extra"] or report["misplaced"] or report["wrong"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
