"""Real member clusters on demand: one etcd, one kube-apiserver per member.

A member is a real kube-apiserver with TLS, client-certificate authentication and
RBAC, storing under its own ``--etcd-prefix`` in an etcd shared by the whole fleet
(which serves TLS with client certificates when the fleet is made with ``etcd_tls``).
Two profiles trade start-up time for realism:

``api``
    kube-apiserver plus a kube-controller-manager running only the controllers that
    make the API behave (namespace deletion, garbage collection, default service
    accounts). Objects are stored and watched; nothing runs.
``full``
    adds every controller, kube-scheduler and kwok with fake Nodes, so Pods are
    scheduled and report Running and a Deployment reaches ``readyReplicas``.

The pytest fixtures, the local demo and the benchmarks all start members through
:class:`Fleet`. Processes are started from the calling (main) thread because the
kernel ties their death signal to it; only waiting happens on worker threads.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import json
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import kubernetes
import yaml

from archipel.fleet import pki, tools
from archipel.fleet.etcd import EtcdClientTLS, EtcdServer, free_port
from archipel.fleet.processes import ManagedProcess, ProcessError, process_state

Profile = Literal["api", "full"]
PROFILES: tuple[Profile, ...] = ("api", "full")

# The kube-controller-manager controllers the `api` profile needs: without them a
# deleted namespace stays Terminating forever and owner references are never honoured.
_API_PROFILE_CONTROLLERS = (
    "namespace-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
)
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# In a ``full`` member, pods with this label run but never turn Ready: an application
# that fails in one cluster only (an override can add the label there), for failover.
FAULT_LABEL = ("archipel.io/fault", "unready")
_POD_IP = (
    '{{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) '
    '( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}'
)
_UNREADY_STATUS = "\n".join(
    [
        "{{ $now := Now }}",
        "conditions:",
        "- {lastTransitionTime: {{ $now | Quote }}, status: 'True', type: PodScheduled}",
        "- {lastTransitionTime: {{ $now | Quote }}, status: 'False', type: Ready}",
        "- {lastTransitionTime: {{ $now | Quote }}, status: 'False', type: ContainersReady}",
        "containerStatuses:",
        "{{ range .spec.containers }}",
        "- image: {{ .image | Quote }}",
        "  name: {{ .name | Quote }}",
        "  ready: false",
        "  restartCount: 0",
        "  state: {running: {startedAt: {{ $now | Quote }}}}",
        "{{ end }}",
        "hostIP: {{ NodeIPWith .spec.nodeName | Quote }}",
        f"podIP: {_POD_IP}",
        "phase: Running",
        "startTime: {{ $now | Quote }}",
    ]
)
_UNREADY_STAGE = {
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "kind": "Stage",
    "metadata": {"name": "archipel-pod-unready"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {
            "matchExpressions": [
                {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                {"key": ".status.podIP", "operator": "DoesNotExist"},
                {
                    "key": f'.metadata.labels["{FAULT_LABEL[0]}"]',
                    "operator": "In",
                    "values": [FAULT_LABEL[1]],
                },
            ]
        },
        "next": {"statusTemplate": _UNREADY_STATUS},
    },
}
ADMIN_USER = "archipel-admin"


class MemberError(RuntimeError):
    """A member cluster failed to start or to answer."""


@dataclasses.dataclass(frozen=True)
class NodePool:
    """The fake nodes of a `full` member, all alike."""

    count: int = 2
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """What a member cluster looks like: its topology feeds placement tests later."""

    name: str
    profile: Profile = "api"
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    region: str = ""
    zone: str = ""
    provider: str = ""
    nodes: NodePool = NodePool()

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile: must be one of {', '.join(PROFILES)}, not {self.profile!r}")
        if not self.name or not self.name.replace("-", "").isalnum() or not self.name.islower():
            raise ValueError(f"name: {self.name!r} must be lowercase letters, digits and '-'")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"labels": dict(self.labels)}


def default_specs(count: int, *, profile: Profile = "api") -> list[MemberSpec]:
    """``member1``…``memberN`` spread over two regions and three zones, as a demo fleet."""
    specs = []
    for index in range(1, count + 1):
        region = "region-a" if index % 2 else "region-b"
        zone = f"{region}-{(index - 1) % 3 + 1}"
        specs.append(
            MemberSpec(
                name=f"member{index}",
                profile=profile,
                labels={"archipel.io/member": f"member{index}", "environment": "test"},
                region=region,
                zone=zone,
                provider="local",
            )
        )
    return specs


def _kubeconfig(
    *, name: str, server: str, ca: Path, user: str, client: pki.KeyPair
) -> dict[str, Any]:
    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
        "current-context": name,
    }


class Member:
    """One member cluster: its certificates, kubeconfig and processes."""

    def __init__(
        self,
        spec: MemberSpec,
        *,
        directory: Path,
        etcd_endpoint: str,
        binaries: tools.Tools,
        etcd_tls: EtcdClientTLS | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.directory = directory
        self.etcd_endpoint = etcd_endpoint
        self.etcd_tls = etcd_tls
        self.etcd_prefix = f"/members/{spec.name}"
        self._binaries = binaries
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = directory / "kubeconfig"
        self.logs = directory / "logs"
        pki_dir = directory / "pki"
        self._ca = pki.CertificateAuthority(pki_dir, common_name=f"archipel-{spec.name}-ca")
        self._serving = self._ca.issue_server("apiserver", hosts=("127.0.0.1", "localhost"))
        self._admin = self._ca.issue_client("admin", user=ADMIN_USER, groups=("system:masters",))
        self._sa_keys = pki.write_signing_key(
            pki_dir / "service-accounts.key", pki_dir / "service-accounts.pub"
        )
        self.ca_cert = self._ca.cert_path
        self._write_kubeconfig(self.kubeconfig, user=ADMIN_USER, client=self._admin)
        self.apiserver = ManagedProcess(
            f"{spec.name}/kube-apiserver",
            self._apiserver_argv(),
            log_path=self.logs / "kube-apiserver.log",
        )
        self.controller_manager = self._controller_manager()
        self.scheduler: ManagedProcess | None = None
        self.kwok: ManagedProcess | None = None
        if spec.profile == "full":
            self.scheduler = self._scheduler()
            self.kwok = self._kwok()
        self._ssl = ssl.create_default_context(cafile=str(self.ca_cert))
        self._ssl.load_cert_chain(str(self._admin.cert), str(self._admin.key))

    # -- configuration ---------------------------------------------------------------

    def _write_kubeconfig(self, path: Path, *, user: str, client: pki.KeyPair) -> None:
        config = _kubeconfig(
            name=self.name, server=self.server, ca=self._ca.cert_path, user=user, client=client
        )
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)

    def _apiserver_argv(self) -> list[str]:
        pki_dir = self._ca.directory
        return [
            str(self._binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_endpoint}",
            f"--etcd-prefix={self.etcd_prefix}",
            # The control plane's flags for etcd's TLS are kube-apiserver's.
            *(self.etcd_tls.flags() if self.etcd_tls is not None else []),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={pki_dir}",
            f"--tls-cert-file={self._serving.cert}",
            f"--tls-private-key-file={self._serving.key}",
            f"--client-ca-file={self._ca.cert_path}",
            "--authorization-mode=RBAC",
            "--anonymous-auth=false",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self._sa_keys.cert}",
            f"--service-account-signing-key-file={self._sa_keys.key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            # Endpoints may not hold loopback addresses, so the default reconciler would
            # fail forever publishing 127.0.0.1 for the `kubernetes` Service.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ]

    def user_kubeconfig(self, user: str, *, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for any user or group, signed by this member's CA.

        The identity has only the rights RBAC gives it, which is how tests check that
        authorization is real and how agents can run with narrow permissions.
        """
        client = self._ca.issue_client(f"user-{user}", user=user, groups=groups)
        path = self.directory / f"user-{user}.kubeconfig"
        self._write_kubeconfig(path, user=user, client=client)
        return path

    def _component_kubeconfig(self, component: str, *, user: str) -> Path:
        client = self._ca.issue_client(component, user=user, groups=("system:masters",))
        path = self.directory / f"{component}.kubeconfig"
        self._write_kubeconfig(path, user=user, client=client)
        return path

    def _controller_manager(self) -> ManagedProcess:
        kubeconfig = self._component_kubeconfig(
            "kube-controller-manager", user="system:kube-controller-manager"
        )
        controllers = "*" if self.spec.profile == "full" else ",".join(_API_PROFILE_CONTROLLERS)
        argv = [
            str(self._binaries.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--cert-dir={self.directory / 'pki' / 'kube-controller-manager'}",
            "--leader-elect=false",
            f"--controllers={controllers}",
            f"--service-account-private-key-file={self._sa_keys.key}",
            f"--root-ca-file={self._ca.cert_path}",
            "--use-service-account-credentials=false",
            "--profiling=false",
            "--v=1",
        ]
        return ManagedProcess(
            f"{self.name}/kube-controller-manager",
            argv,
            log_path=self.logs / "kube-controller-manager.log",
        )

    def _scheduler(self) -> ManagedProcess:
        kubeconfig = self._component_kubeconfig("kube-scheduler", user="system:kube-scheduler")
        argv = [
            str(self._binaries.kube_scheduler),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--cert-dir={self.directory / 'pki' / 'kube-scheduler'}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]
        return ManagedProcess(
            f"{self.name}/kube-scheduler", argv, log_path=self.logs / "kube-scheduler.log"
        )

    def _stages(self) -> list[Path]:
        """kwok's stages, except that pods labelled FAULT_LABEL stay not Ready."""
        directory = self.directory / "kwok-stages"
        directory.mkdir(parents=True, exist_ok=True)
        ready_selector = "    - key: '.status.podIP'\n      operator: 'DoesNotExist'\n"
        skip_faulty = (
            f"    - key: '.metadata.labels[\"{FAULT_LABEL[0]}\"]'\n      operator: 'DoesNotExist'\n"
        )
        stages = []
        for stage in sorted(self._binaries.kwok_stages.glob("*.yaml")):
            text = stage.read_text()
            if stage.name == "pod-ready.yaml":
                if ready_selector not in text:
                    raise RuntimeError(f"{stage}: not the pod-ready stage this fleet patches")
                text = text.replace(ready_selector, ready_selector + skip_faulty, 1)
            (directory / stage.name).write_text(text)
            stages.append(directory / stage.name)
        (directory / "archipel-pod-unready.yaml").write_text(yaml.safe_dump(_UNREADY_STAGE))
        stages.append(directory / "archipel-pod-unready.yaml")
        return stages

    def _kwok(self) -> ManagedProcess:
        kubeconfig = self._component_kubeconfig("kwok", user="system:kwok-controller")
        stages = self._stages()
        key, value = FAKE_NODE_ANNOTATION
        argv = [
            str(self._binaries.kwok),
            f"--kubeconfig={kubeconfig}",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            "--node-ip=127.0.0.1",
            # kwok serves a kubelet-like API; each member's kwok needs its own port.
            f"--server-address=127.0.0.1:{free_port()}",
            "--node-lease-duration-seconds=40",
            *(f"--config={stage}" for stage in stages),
        ]
        return ManagedProcess(f"{self.name}/kwok", argv, log_path=self.logs / "kwok.log")

    # -- talking to the API server ---------------------------------------------------

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout: float = 5
    ) -> tuple[int, Any]:
        """One HTTPS call as the admin user; returns the status and the decoded body."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.server}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as response:
                raw = response.read()
                status: int = response.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def ready(self) -> bool:
        """Whether kube-apiserver answers /readyz with everything ready."""
        try:
            status, _ = self.request("GET", "/readyz", timeout=2)
        except OSError:
            return False
        return status == 200

    def _wait(self, what: str, condition: Callable[[], bool], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes():
                if process.running or process is self.apiserver:
                    process.check_running()
            if condition():
                return
            if time.monotonic() > deadline:
                raise MemberError(
                    f"{self.name}: {what} not reached after {timeout:.0f}s; logs in {self.logs}"
                )
            time.sleep(0.1)

    def wait_apiserver(self, *, timeout: float = 60.0) -> None:
        self._wait("kube-apiserver ready", self.ready, timeout=timeout)

    def _default_service_account_exists(self) -> bool:
        try:
            status, _ = self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        except OSError:
            return False
        return status == 200

    def _nodes_ready(self) -> bool:
        try:
            status, body = self.request("GET", "/api/v1/nodes")
        except OSError:
            return False
        if status != 200:
            return False
        ready = 0
        for node in body.get("items", []):
            conditions = node.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                ready += 1
        return ready >= self.spec.nodes.count

    def create_nodes(self) -> None:
        """Register the fake Nodes kwok keeps alive, labelled with the member's topology."""
        pool = self.spec.nodes
        key, value = FAKE_NODE_ANNOTATION
        for index in range(pool.count):
            node_name = f"{self.name}-node-{index}"
            labels = {
                "kubernetes.io/hostname": node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            }
            if self.spec.region:
                labels["topology.kubernetes.io/region"] = self.spec.region
            if self.spec.zone:
                labels["topology.kubernetes.io/zone"] = self.spec.zone
            resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.pods)}
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node_name, "labels": labels, "annotations": {key: value}},
                "status": {"capacity": resources, "allocatable": resources},
            }
            status, body = self.request("POST", "/api/v1/nodes", node)
            if status not in (201, 409):
                raise MemberError(f"{self.name}: creating node {node_name}: {status} {body}")

    # -- lifecycle ---------------------------------------------------------------------

    def processes(self) -> list[ManagedProcess]:
        return [
            p
            for p in (self.apiserver, self.controller_manager, self.scheduler, self.kwok)
            if p is not None
        ]

    def start_apiserver(self, *, wait: bool = True, timeout: float = 60.0) -> None:
        """Start (or restart after :meth:`stop_apiserver`) the API server, same port and data."""
        self.apiserver.start()
        if wait:
            self.wait_apiserver(timeout=timeout)

    def start_components(self) -> None:
        """Start what runs beside the API server; call once it is ready."""
        for process in self.processes()[1:]:
            if not process.running:
                process.start()

    def wait_components(self, *, timeout: float = 60.0) -> None:
        if self.spec.profile == "full":
            self.create_nodes()
            self._wait("fake nodes Ready", self._nodes_ready, timeout=timeout)
        self._wait("default service account", self._default_service_account_exists, timeout=timeout)

    def stop_apiserver(self) -> None:
        """Stop the API server gracefully; clients see connections refused."""
        self.apiserver.stop()

    def restart_apiserver(self, *, timeout: float = 60.0) -> None:
        self.stop_apiserver()
        self.start_apiserver(timeout=timeout)

    def pause_apiserver(self) -> None:
        """Freeze the API server: connections hang instead of failing."""
        self.apiserver.pause()

    def resume_apiserver(self) -> None:
        self.apiserver.resume()

    def kill(self) -> None:
        """SIGKILL every process of the member, as a lost machine would."""
        for process in reversed(self.processes()):
            process.kill()

    def stop(self) -> None:
        for process in reversed(self.processes()):
            process.stop()

    def rss_bytes(self) -> int:
        """Resident memory of all the member's processes together."""
        total = 0
        for process in self.processes():
            if process.pid is None or not process.running:
                continue
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def state(self) -> str:
        """``running``, ``paused``, ``stopped`` or ``degraded`` (some component is down)."""
        if not self.apiserver.running:
            return "stopped"
        if self.apiserver.pid is not None and process_state(self.apiserver.pid) in ("T", "t"):
            return "paused"
        if not all(p.running for p in self.processes()):
            return "degraded"
        return "running"

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec.as_dict(),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "logs": str(self.logs),
            "etcdPrefix": self.etcd_prefix,
            "pids": {p.name.split("/", 1)[1]: p.pid for p in self.processes()},
        }

    def api_client(self) -> kubernetes.client.ApiClient:
        """A kubernetes client ``ApiClient`` logged in as the member's admin."""
        # The kubeconfig loader is one of the client's few untyped functions.
        api_client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            str(self.kubeconfig)
        )
        return api_client


def _parallel(items: Iterable[Member], action: Callable[[Member], None]) -> None:
    members = list(items)
    if not members:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(members)) as pool:
        for future in [pool.submit(action, m) for m in members]:
            future.result()


class Fleet:
    """One etcd and N member clusters, started together and stopped together."""

    def __init__(self, root: Path, specs: Sequence[MemberSpec], *, etcd_tls: bool = False) -> None:
        """With ``etcd_tls``, the fleet's etcd serves TLS and asks its clients (the
        members' kube-apiservers) for certificates of its own CA."""
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique: {names}")
        self.root = root
        self.specs = list(specs)
        self.etcd: EtcdServer | None = None
        self.etcd_tls = etcd_tls
        self.members: dict[str, Member] = {}
        self.started_in: float | None = None

    def __getitem__(self, name: str) -> Member:
        return self.members[name]

    def __iter__(self) -> Any:
        return iter(self.members.values())

    def __len__(self) -> int:
        return len(self.members)

    def start(self, *, timeout: float = 120.0) -> Fleet:
        started = time.monotonic()
        needed = ["etcd", "kube"]
        if any(s.profile == "full" for s in self.specs):
            needed.append("kwok")
        binaries = tools.ensure(*needed)
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        try:
            self.etcd = EtcdServer(
                binary=binaries.etcd, directory=self.root / "_etcd", tls=self.etcd_tls
            )
            self.etcd.start()
            for spec in self.specs:
                self.members[spec.name] = Member(
                    spec,
                    directory=self.root / spec.name,
                    etcd_endpoint=self.etcd.endpoint,
                    binaries=binaries,
                    etcd_tls=self.etcd.client_tls,
                )
            for member in self:
                member.start_apiserver(wait=False)
            _parallel(self, lambda m: m.wait_apiserver(timeout=timeout))
            for member in self:
                member.start_components()
            _parallel(self, lambda m: m.wait_components(timeout=timeout))
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop members, then etcd; every process is gone when this returns."""
        for member in self.members.values():
            member.stop()
        if self.etcd is not None:
            self.etcd.stop()

    def pids(self) -> list[int]:
        pids = [p.pid for m in self for p in m.processes() if p.pid is not None]
        if self.etcd is not None and self.etcd.process.pid is not None:
            pids.append(self.etcd.process.pid)
        return pids

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "etcd": self.etcd.endpoint if self.etcd else None,
            "etcdPid": self.etcd.process.pid if self.etcd else None,
            "supervisorPid": os.getpid(),
            "members": {m.name: m.describe() for m in self},
        }

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "PROFILES",
    "Fleet",
    "Member",
    "MemberError",
    "MemberSpec",
    "NodePool",
    "ProcessError",
    "Profile",
    "default_specs",
]
