"""The Helm chart (charts/archipel): it lints, and what it renders is accepted by a
real kube-apiserver (a server-side dry run: admission, validation and RBAC rules, as
``kubectl apply --dry-run=server`` does), for each way an operator installs it."""

from __future__ import annotations

import base64
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from archipel.fleet import tools
from archipel.fleet.members import Fleet

pytestmark = pytest.mark.members(count=1, profile="api")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "archipel"
AGENT = {"agent.enabled": "true", "agent.server": "cp.example.com:7443", "agent.token": "m1.s3cr3t"}

# Each way the chart is installed: the values set, and the kinds it must render.
INSTALLS: dict[str, tuple[dict[str, str], set[str]]] = {
    "control plane with its own etcd": (
        {"controlPlane.enabled": "true"},
        {"Secret", "Deployment", "Service", "PodDisruptionBudget", "StatefulSet"},
    ),
    "control plane on external etcd, with TLS, three replicas": (
        {
            "controlPlane.enabled": "true",
            "controlPlane.replicas": "3",
            "controlPlane.tls.secretName": "archipel-tls",
            "etcd.enabled": "false",
            "etcd.endpoints[0]": "https://etcd-0.example:2379",
            "etcd.endpoints[1]": "https://etcd-1.example:2379",
            "etcd.tls.secretName": "etcd-client",
        },
        {"Secret", "Deployment", "Service", "PodDisruptionBudget"},
    ),
    "control plane with its own etcd in plaintext": (
        {"controlPlane.enabled": "true", "etcd.tls.enabled": "false"},
        {"Secret", "Deployment", "Service", "PodDisruptionBudget", "StatefulSet"},
    ),
    "agent, cluster-admin": (
        AGENT,
        {
            "ServiceAccount",
            "Secret",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "DaemonSet",
        },
    ),
    "agent registering with a bootstrap token, with its CA": (
        {
            "agent.enabled": "true",
            "agent.server": "cp.example.com:7443",
            "agent.cluster": "m1",
            "agent.bootstrapToken": "abcdef.0123456789abcdef",
            "agent.ca": "-----BEGIN CERTIFICATE-----",
        },
        {
            "ServiceAccount",
            "Secret",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "DaemonSet",
        },
    ),
    "agent, scoped to two namespaces, with a CA": (
        {
            **AGENT,
            "agent.rbac": "scoped",
            "agent.scoped.namespaces[0]": "shop",
            "agent.scoped.namespaces[1]": "blog",
            "agent.caConfigMap": "archipel-ca",
        },
        {
            "ServiceAccount",
            "Secret",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "DaemonSet",
        },
    ),
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools.ensure("helm").helm), *args], capture_output=True, text=True, check=False
    )


def render(values: dict[str, str], namespace: str) -> list[dict[str, Any]]:
    sets = [f"--set={key}={value}" for key, value in values.items()]
    rendered = helm("template", "archipel", str(CHART), "--namespace", namespace, *sets)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.fixture
def namespaces(members: Fleet) -> Iterator[tuple[str, list[str]]]:
    """A fresh release namespace, plus the scoped agent's namespaces, in the member."""
    release = f"archipel-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(next(iter(members)).api_client())
    made = [release, "shop", "blog"]
    for name in made:
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        except ApiException as error:
            if error.status != 409:
                raise
    yield release, made
    core.delete_namespace(release)


def dry_run_create(api: client.ApiClient, path: str, body: dict[str, Any]) -> None:
    """POST ``body`` as a server-side dry run with strict field validation, so that a
    misspelt field is an error, not a warning that is easy to miss; ApiException when
    the API server refuses it."""
    serialized = api.param_serialize(
        method="POST",
        resource_path=path,
        query_params=[("dryRun", "All"), ("fieldValidation", "Strict")],
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*serialized)
    response.read()
    if not 200 <= response.status < 300:
        raise ApiException(http_resp=response)


def test_the_chart_lints_for_each_install() -> None:
    for values, _ in INSTALLS.values():
        sets = [f"--set={key}={value}" for key, value in values.items()]
        linted = helm("lint", "--strict", str(CHART), *sets)
        assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize("install", list(INSTALLS))
def test_what_the_chart_renders_passes_a_server_side_dry_run(
    install: str, members: Fleet, namespaces: tuple[str, list[str]]
) -> None:
    values, kinds = INSTALLS[install]
    release, _ = namespaces
    documents = render(values, release)
    assert {d["kind"] for d in documents} == kinds
    api = next(iter(members)).api_client()
    dynamic = DynamicClient(api)
    for document in documents:
        resource = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        namespace = document["metadata"].get("namespace")
        try:
            dry_run_create(api, resource.path(namespace=namespace), document)
        except ApiException as error:
            pytest.fail(f"{document['kind']} {document['metadata']['name']}: {error.body}")


def test_a_misspelt_field_fails_the_dry_run(
    members: Fleet, namespaces: tuple[str, list[str]]
) -> None:
    """The check above would catch a chart that writes a field Kubernetes does not know."""
    api = next(iter(members)).api_client()
    release, _ = namespaces
    (deployment,) = [
        d for d in render({"controlPlane.enabled": "true"}, release) if d["kind"] == "Deployment"
    ]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    resource = DynamicClient(api).resources.get(api_version="apps/v1", kind="Deployment")
    with pytest.raises(ApiException) as refused:
        dry_run_create(api, resource.path(namespace=release), deployment)
    assert "readinesProbe" in str(refused.value.body)


def test_bad_values_are_refused_naming_the_value() -> None:
    for values, wanted in (
        ({"agent.enabled": "true", "agent.token": "m1.s"}, "agent.server"),
        ({"agent.enabled": "true", "agent.server": "cp:7443"}, "agent.token"),
        ({**AGENT, "agent.rbac": "everything"}, "agent.rbac"),
        ({"controlPlane.enabled": "true", "etcd.enabled": "false"}, "etcd.endpoints"),
        # A value the chart would accept and not act on is refused.
        (
            {
                "controlPlane.enabled": "true",
                "etcd.enabled": "false",
                "etcd.endpoints[0]": "https://etcd-0.example:2379",
            },
            "etcd.tls.secretName: https:// etcd endpoints need a Secret",
        ),
        (
            {
                "controlPlane.enabled": "true",
                "etcd.enabled": "false",
                "etcd.endpoints[0]": "http://etcd-0.example:2379",
                "etcd.tls.secretName": "etcd-client",
            },
            "etcd.tls.secretName: the etcd.endpoints are plaintext",
        ),
        (
            {
                "controlPlane.enabled": "true",
                "etcd.enabled": "false",
                "etcd.endpoints[0]": "https://etcd-0.example:2379",
                "etcd.endpoints[1]": "http://etcd-1.example:2379",
                "etcd.tls.secretName": "etcd-client",
            },
            "etcd.endpoints: all http:// or all https://",
        ),
    ):
        sets = [f"--set={key}={value}" for key, value in values.items()]
        rendered = helm("template", "archipel", str(CHART), *sets)
        assert rendered.returncode == 1 and wanted in rendered.stderr, rendered.stderr


def test_the_chart_and_the_application_have_one_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == project


def _comparable(document: dict[str, Any]) -> dict[str, Any]:
    """A document without the labels only Helm writes (who manages it, which chart)."""
    text = yaml.safe_dump(document, sort_keys=True)
    for helm_only in ("app.kubernetes.io/managed-by", "helm.sh/chart"):
        text = "\n".join(line for line in text.splitlines() if helm_only not in line)
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def test_join_print_manifests_says_what_the_chart_renders() -> None:
    """`archipel join NAME --print-manifests` is the chart's agent, for kubectl users:
    the same objects, field for field (so neither can drift from the other)."""
    from archipel.cli.agent_manifests import agent_manifests

    printed = agent_manifests(server="cp.example.com:7443", token="m1.s3cr3t")
    assert printed[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "archipel-system"},
    }
    rendered = render(AGENT, "archipel-system")
    for document in rendered:
        if document["kind"] == "DaemonSet":
            # The chart names its image by repository and tag; the CLI's default is
            # the same name, and the chart says IfNotPresent as the CLI does.
            assert (
                document["spec"]["template"]["spec"]["containers"][0]["image"]
                == (printed[-1]["spec"]["template"]["spec"]["containers"][0]["image"])
            )
    assert sorted(map(str, map(_comparable, printed[1:]))) == sorted(
        map(str, map(_comparable, rendered))
    )
    # With the control plane's CA bundle: a ConfigMap, mounted, and the agent told.
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    printed = agent_manifests(server="cp.example.com:7443", token="m1.s3cr3t", ca=ca.encode())
    rendered = render({**AGENT, "agent.ca": ca}, "archipel-system")
    assert sorted(map(str, map(_comparable, printed[1:]))) == sorted(
        map(str, map(_comparable, rendered))
    )
    assert "ConfigMap" in {document["kind"] for document in printed}


@pytest.mark.parametrize("default_taints", ["true", "false"])
def test_the_control_planes_arguments_are_ones_it_takes(default_taints: str) -> None:
    from controlplane.server import parse_args

    documents = render(
        {
            "controlPlane.enabled": "true",
            "controlPlane.failover.defaultTaints": default_taints,
            "controlPlane.failover.gracePeriod": "120",
            "controlPlane.skippedPropagatingNamespaces[0]": "team-.*",
            # A comma inside a pattern stays in it (helm's --set escapes it).
            "controlPlane.skippedPropagatingNamespaces[1]": r"scratch-[0-9]{1\,3}",
            "controlPlane.replicas": "3",
            "controlPlane.shards": "64",
        },
        "archipel-system",
    )
    (deployment,) = [
        d
        for d in documents
        if d["kind"] == "Deployment" and "controlplane" in d["metadata"]["name"]
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = parse_args(container["args"])
    assert deployment["spec"]["replicas"] == 3
    # Each replica is its pod (the kubelet expands the variable from the pod's name).
    assert settings.replica_id == "$(ARCHIPEL_POD_NAME)"
    pod_name = {
        "name": "ARCHIPEL_POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    assert pod_name in container["env"]
    assert (settings.shards, settings.shard_lease_seconds) == (64, 10)
    # TLS with the CA Secret the chart made, for the Service's names; agents' port.
    assert not settings.insecure
    assert str(settings.pki_dir) == "/etc/archipel/pki"
    assert "archipel-controlplane.archipel-system.svc" in settings.tls_sans
    assert settings.agent_listen == "0.0.0.0:7444"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert ("Secret", "archipel-controlplane-ca") in kinds
    (ca_secret,) = [d for d in documents if d["metadata"]["name"] == "archipel-controlplane-ca"]
    assert set(ca_secret["data"]) == {"ca.crt", "ca.key"}
    assert settings.failover_grace_period == 120
    assert settings.default_failover_taints == (default_taints == "true")
    assert [p.pattern for p in settings.skipped_propagating_namespaces] == [
        "team-.*",
        "scratch-[0-9]{1,3}",
    ]
    assert (settings.mutation_rate, settings.mutation_burst) == (1000, 2000)
    # Every replica audits into a volume of its own.
    assert settings.audit_log_path is not None
    assert settings.audit_log_path.parent.as_posix() == "/var/log/archipel"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["audit"] == "/var/log/archipel"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["audit"]
    # Secrets are encrypted at rest, by the configuration the chart made.
    assert settings.encryption_provider_config == Path("/etc/archipel/encryption/config.yaml")
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["encryption"]
    assert settings.encryption_provider_config.parent == Path(mount)


def test_the_chart_makes_an_encryption_configuration_the_control_plane_takes() -> None:
    from controlplane.encryption import parse_config

    def configs(values: dict[str, str]) -> list[bytes]:
        return [
            base64.b64decode(d["data"]["config.yaml"])
            for d in render({"controlPlane.enabled": "true", **values}, "archipel-system")
            if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-encryption")
        ]

    (made,) = configs({})
    (rule,) = parse_config(yaml.safe_load(made)).rules
    assert rule.resources == ("secrets",)
    assert rule.writer.label == "aesgcm:key1"
    (again,) = configs({})
    assert again != made  # a fresh random key for each new install
    # An operator's own Secret: the chart makes none, and mounts that one.
    assert configs({"controlPlane.encryption.existingSecret": "mine"}) == []
    documents = render(
        {"controlPlane.enabled": "true", "controlPlane.encryption.existingSecret": "mine"},
        "archipel-system",
    )
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["encryption"]["secret"]["secretName"] == "mine"
    # Turned off: no flag, no volume.
    documents = render(
        {"controlPlane.enabled": "true", "controlPlane.encryption.enabled": "false"},
        "archipel-system",
    )
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert not any("encryption" in arg for arg in container["args"])


@pytest.mark.parametrize("leader_elect", ["true", "false"])
def test_the_agents_arguments_are_ones_it_takes(leader_elect: str) -> None:
    """The DaemonSet's agents elect a leader unless told not to, with flags the agent
    takes (a flag it does not know would crash every pod at start)."""
    from agent.main import parse_args

    documents = render({**AGENT, "agent.leaderElect": leader_elect}, "archipel-system")
    (daemon_set,) = [d for d in documents if d["kind"] == "DaemonSet"]
    (container,) = daemon_set["spec"]["template"]["spec"]["containers"]
    args = parse_args(container["args"])
    assert args.leader_elect == (leader_elect == "true")
    env = {item["name"]: item for item in container["env"]}
    # Each pod's name is its identity in the Lease.
    assert env["ARCHIPEL_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_an_agent_that_registers_is_given_a_file_never_a_flag() -> None:
    """The bootstrap flow: the token in a Secret mounted as a file (a flag's value is in
    every process listing), the cluster it registers, and the right to keep its identity
    Secret."""
    from agent.main import parse_args

    documents = render(
        {
            "agent.enabled": "true",
            "agent.server": "cp.example.com:7443",
            "agent.cluster": "m1",
            "agent.bootstrapToken": "abcdef.0123456789abcdef",
        },
        "archipel-system",
    )
    (daemon_set,) = [d for d in documents if d["kind"] == "DaemonSet"]
    (container,) = daemon_set["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if "0123456789abcdef" in a]
    args = parse_args(container["args"])
    assert str(args.bootstrap_token_file) == "/etc/archipel/bootstrap/token"
    assert args.token_file is None and args.cluster == "m1"
    (secret,) = [d for d in documents if d["metadata"]["name"] == "archipel-agent-bootstrap"]
    assert secret["stringData"] == {"token": "abcdef.0123456789abcdef"}
    (role,) = [d for d in documents if d["kind"] == "Role"]
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"]} in (
        role["rules"]
    )
    missing = helm(
        "template",
        "archipel",
        str(CHART),
        "--set=agent.enabled=true",
        "--set=agent.server=cp:7443",
        "--set=agent.bootstrapToken=abcdef.0123456789abcdef",
    )
    assert missing.returncode != 0 and "agent.cluster" in missing.stderr


def _pod(documents: list[dict[str, Any]], kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec of the one ``kind`` rendered, and its one container."""
    (workload,) = [d for d in documents if d["kind"] == kind]
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def _mounted_from(pod: dict[str, Any], container: dict[str, Any], path: Path) -> tuple[str, str]:
    """(Secret, key) that the file at ``path`` in ``container`` comes from."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container["volumeMounts"]:
        if Path(mount["mountPath"]) == path.parent:
            secret = volumes[mount["name"]]["secret"]
            for item in secret["items"]:
                if item["path"] == path.name:
                    return secret["secretName"], item["key"]
    raise AssertionError(f"{path} is not mounted from any Secret")


def _args(container: dict[str, Any], flag: str) -> list[str]:
    return [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"{flag}=")]


ETCD_TLS = {
    "its own etcd": (
        {"controlPlane.enabled": "true"},
        ["https://archipel-etcd:2379"],
        "archipel-etcd-client-tls",
    ),
    "your etcd, named by https:// endpoints": (
        {
            "controlPlane.enabled": "true",
            "etcd.enabled": "false",
            "etcd.endpoints[0]": "https://etcd-0.example:2379",
            "etcd.endpoints[1]": "https://etcd-1.example:2379",
            "etcd.tls.secretName": "etcd-client",
        },
        ["https://etcd-0.example:2379", "https://etcd-1.example:2379"],
        "etcd-client",
    ),
}


@pytest.mark.parametrize("install", list(ETCD_TLS))
def test_the_control_plane_speaks_tls_to_etcd_with_the_files_it_mounts(install: str) -> None:
    """The three flags, as the control plane reads them, point at files mounted from the
    Secret with etcd's CA and the client certificate, under the keys they name."""
    from controlplane.server import parse_args

    values, endpoints, secret = ETCD_TLS[install]
    pod, container = _pod(render(values, "archipel-system"), "Deployment")
    settings = parse_args(container["args"])
    assert settings.etcd_endpoints == endpoints
    files = {
        "ca.crt": settings.etcd_cafile,
        "tls.crt": settings.etcd_certfile,
        "tls.key": settings.etcd_keyfile,
    }
    for key, path in files.items():
        assert path is not None, key
        assert _mounted_from(pod, container, path) == (secret, key)


def test_the_charts_own_etcd_serves_tls_to_client_certificates_of_its_ca() -> None:
    """etcd's flags point at its own Secret; the health probe has a plaintext port of its
    own; etcd's certificate names the host the control plane connects to; and both
    Secrets hold one CA, which signed the control plane's client certificate. Turned off,
    etcd and the control plane speak plaintext, and no Secret is made for it."""
    from cryptography import x509

    from controlplane.server import parse_args

    documents = render({"controlPlane.enabled": "true"}, "archipel-system")
    pod, etcd = _pod(documents, "StatefulSet")
    assert "--client-cert-auth" in etcd["args"]
    assert _args(etcd, "--listen-client-urls") == ["https://0.0.0.0:2379"]
    for flag, key in (("--cert-file", "tls.crt"), ("--key-file", "tls.key")):
        (path,) = _args(etcd, flag)
        assert _mounted_from(pod, etcd, Path(path)) == ("archipel-etcd-server-tls", key)
    (trusted,) = _args(etcd, "--trusted-ca-file")
    assert _mounted_from(pod, etcd, Path(trusted)) == ("archipel-etcd-server-tls", "ca.crt")
    # The kubelet shows no client certificate: it probes the plaintext metrics port.
    assert _args(etcd, "--listen-metrics-urls") == ["http://0.0.0.0:2381"]
    ports = {p["name"]: p["containerPort"] for p in etcd["ports"]}
    assert etcd["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert ports["metrics"] == 2381

    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v) for k, v in d["data"].items()}
        for d in documents
        if d["kind"] == "Secret" and d["metadata"]["name"].startswith("archipel-etcd-")
    }
    server, client_files = secrets["archipel-etcd-server-tls"], secrets["archipel-etcd-client-tls"]
    assert server["ca.crt"] == client_files["ca.crt"]
    ca = x509.load_pem_x509_certificate(server["ca.crt"])
    serving = x509.load_pem_x509_certificate(server["tls.crt"])
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    _, container = _pod(documents, "Deployment")
    (endpoint,) = parse_args(container["args"]).etcd_endpoints
    assert endpoint.split("://")[1].rsplit(":", 1)[0] in names.get_values_for_type(x509.DNSName)
    for cert in (serving, x509.load_pem_x509_certificate(client_files["tls.crt"])):
        cert.verify_directly_issued_by(ca)

    plaintext = render({"controlPlane.enabled": "true", "etcd.tls.enabled": "false"}, "default")
    pod, etcd = _pod(plaintext, "StatefulSet")
    assert _args(etcd, "--listen-client-urls") == ["http://0.0.0.0:2379"]
    assert "--client-cert-auth" not in etcd["args"] and "volumes" not in pod
    _, container = _pod(plaintext, "Deployment")
    settings = parse_args(container["args"])
    assert settings.etcd_endpoints == ["http://archipel-etcd:2379"]
    assert settings.etcd_cafile is None
    assert not [
        d
        for d in plaintext
        if d["metadata"]["name"].startswith("archipel-etcd-") and d["kind"] == "Secret"
    ]


async def test_etcd_and_the_control_plane_take_the_certificates_the_chart_makes(
    tmp_path: Path,
) -> None:
    """Helm's genCA and genSignedCert (RSA, both key usages) with a real etcd run as the
    StatefulSet runs it, and the control plane's etcd client as the Deployment runs it."""
    from archipel.fleet.etcd import EtcdServer, EtcdTLS
    from archipel.fleet.pki import KeyPair
    from controlplane.etcd import Etcd, Put, TLSError, load_tls

    documents = render({"controlPlane.enabled": "true"}, "archipel-system")
    for document in documents:
        name = document["metadata"]["name"]
        if document["kind"] == "Secret" and name.startswith("archipel-etcd-"):
            for key, value in document["data"].items():
                (tmp_path / name).mkdir(exist_ok=True)
                (tmp_path / name / key).write_bytes(base64.b64decode(value))
    server, client_dir = (
        tmp_path / "archipel-etcd-server-tls",
        tmp_path / "archipel-etcd-client-tls",
    )
    serving = KeyPair(cert=server / "tls.crt", key=server / "tls.key")
    tls = EtcdTLS(
        ca=server / "ca.crt",
        server=serving,
        client=KeyPair(cert=client_dir / "tls.crt", key=client_dir / "tls.key"),
        # As in the chart, where etcd's own gateway uses its serving certificate.
        gateway=serving,
    )
    etcd = EtcdServer(binary=tools.ensure("etcd").etcd, directory=tmp_path / "etcd", tls=tls)
    etcd.start()
    try:
        endpoint = etcd.endpoint.replace("127.0.0.1", "localhost")
        client = Etcd(
            [endpoint],
            tls=load_tls(client_dir / "ca.crt", client_dir / "tls.crt", client_dir / "tls.key"),
        )
        await client.connect()
        try:
            assert await client.commit([Put("chart", b"tls", 0)]) is not None
            stored = await client.get("chart")
            assert stored is not None and stored.value == b"tls"
        finally:
            await client.close()
        without = Etcd([endpoint], tls=load_tls(client_dir / "ca.crt", None, None))
        with pytest.raises(TLSError, match="without a client certificate"):
            await without.connect()
    finally:
        etcd.stop()


def test_etcds_certificates_are_kept_on_upgrade(
    members: Fleet, namespaces: tuple[str, list[str]]
) -> None:
    """Rendered against a cluster that has them (as helm upgrade renders), the etcd
    Secrets are the ones already there: etcd and the control plane keep one CA."""
    release, _ = namespaces
    member = next(iter(members))
    values = {"controlPlane.enabled": "true"}
    first = {
        d["metadata"]["name"]: d
        for d in render(values, release)
        if d["kind"] == "Secret" and d["metadata"]["name"].startswith("archipel-etcd-")
    }
    again = render(values, release)
    assert [d["data"] for d in again if d["metadata"]["name"] in first] != [
        d["data"] for d in first.values()
    ]  # a new install: new certificates
    core = client.CoreV1Api(member.api_client())
    for name, document in first.items():
        core.create_namespaced_secret(
            release,
            client.V1Secret(metadata=client.V1ObjectMeta(name=name), data=document["data"]),
        )
    sets = [f"--set={key}={value}" for key, value in values.items()]
    upgraded = helm(
        "template",
        "archipel",
        str(CHART),
        "--namespace",
        release,
        "--dry-run=server",
        "--kubeconfig",
        str(member.kubeconfig),
        *sets,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    kept = {
        d["metadata"]["name"]: d["data"]
        for d in yaml.safe_load_all(upgraded.stdout)
        if d and d["kind"] == "Secret" and d["metadata"]["name"] in first
    }
    assert kept == {name: d["data"] for name, d in first.items()}
