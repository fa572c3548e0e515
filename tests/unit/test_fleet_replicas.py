"""The launcher's control-plane replicas, as configured before anything starts: each
replica's log, port and flags, the shared token file, and each agent's server list."""

from __future__ import annotations

from pathlib import Path

from archipel import pki
from archipel.client import Config
from archipel.fleet.controlplane import ControlPlaneReplicas, ensure_encryption_config, rotated
from archipel.fleet.etcd import EtcdClientTLS, EtcdTLS


def test_agents_start_on_replica_i_mod_n_and_fail_over_to_the_others() -> None:
    assert rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotated(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert rotated(["a", "b", "c"], 5) == ["c", "a", "b"]
    assert rotated(["a"], 3) == ["a"]
    assert rotated([], 2) == []


def test_one_replica_is_the_control_plane_as_before(tmp_path: Path) -> None:
    plane = ControlPlaneReplicas(1, etcd_endpoint="127.0.0.1:2379", directory=tmp_path)
    (only,) = plane.replicas
    assert only.process.log_path == tmp_path / "controlplane.log"
    assert only.token_file == tmp_path / "admin-token"
    assert plane.server == only.address
    assert plane.servers_for(1) == [only.address]


def test_replicas_share_the_token_file_and_keep_their_own_logs_and_ports(tmp_path: Path) -> None:
    plane = ControlPlaneReplicas(
        3,
        etcd_endpoint="127.0.0.1:2379",
        directory=tmp_path,
        ports=[17443, None],
        extra_args=["--heartbeat-interval=1"],
        replica_args=ControlPlaneReplicas.replica_id_args,
    )
    assert [r.process.log_path.name for r in plane.replicas] == [
        "controlplane-0.log",
        "controlplane-1.log",
        "controlplane-2.log",
    ]
    assert {r.token_file for r in plane.replicas} == {tmp_path / "admin-token"}
    assert f"--admin-token-file={tmp_path / 'admin-token'}" in plane[2].process.argv
    assert plane[0].port == 17443
    assert len({r.port for r in plane.replicas}) == 3
    assert len({r.metrics_port for r in plane.replicas}) == 3
    assert plane[1].process.argv[-2:] == ["--heartbeat-interval=1", "--replica-id=replica-1"]
    assert plane.servers_for(1) == [plane[1].address, plane[2].address, plane[0].address]
    assert plane.server == ",".join(r.address for r in plane.replicas)


def test_the_cli_config_names_every_replica(tmp_path: Path) -> None:
    plane = ControlPlaneReplicas(2, etcd_endpoint="127.0.0.1:2379", directory=tmp_path)
    (tmp_path / "admin-token").write_text("secret\n")
    # The CA the replicas share, as the first of them creates it.
    pki.ensure_ca(tmp_path / "pki", common_name="test")
    plane.write_cli_config(tmp_path / "archipel.yaml")
    config = Config.load(tmp_path / "archipel.yaml")
    assert config.servers == plane.addresses
    assert config.token == "secret"
    assert config.tls_ca == (tmp_path / "pki" / "ca" / "ca.crt").read_bytes()
    assert not config.insecure


def test_replicas_share_one_encryption_configuration_made_once(tmp_path: Path) -> None:
    plane = ControlPlaneReplicas(3, etcd_endpoint="127.0.0.1:2379", directory=tmp_path)
    config = tmp_path / "encryption-config.yaml"
    assert {r.encryption_config for r in plane.replicas} == {config}
    for replica in plane.replicas:
        assert f"--encryption-provider-config={config}" in replica.process.argv
    # Made with a fresh key on first use, readable by its owner only, then kept.
    ensure_encryption_config(config)
    made = config.read_text()
    assert config.stat().st_mode & 0o777 == 0o600
    assert "kind: EncryptionConfiguration" in made and "resources: [secrets]" in made
    ensure_encryption_config(config)
    assert config.read_text() == made
    other = tmp_path / "other" / "encryption-config.yaml"
    ensure_encryption_config(other)
    assert other.read_text() != made  # another fresh key


def test_a_control_plane_without_encryption_gets_no_configuration(tmp_path: Path) -> None:
    plane = ControlPlaneReplicas(
        2, etcd_endpoint="127.0.0.1:2379", directory=tmp_path, encrypt=False
    )
    for replica in plane.replicas:
        assert replica.encryption_config is None
        assert not any("--encryption-provider-config" in a for a in replica.process.argv)


def test_every_replica_is_given_etcds_tls_files(tmp_path: Path) -> None:
    """On an etcd that serves TLS, each replica gets the three flags, kube-apiserver's
    names; without a client certificate, the CA alone; on plaintext etcd, none."""
    files = EtcdTLS.issue(tmp_path / "etcd-pki").client_tls
    plane = ControlPlaneReplicas(
        2, etcd_endpoint="https://127.0.0.1:2379", directory=tmp_path, etcd_tls=files
    )
    for replica in plane.replicas:
        assert {
            f"--etcd-cafile={files.ca}",
            f"--etcd-certfile={files.cert}",
            f"--etcd-keyfile={files.key}",
        } <= set(replica.process.argv)
    ca_only = EtcdClientTLS(ca=files.ca)
    (replica,) = ControlPlaneReplicas(
        1, etcd_endpoint="https://127.0.0.1:2379", directory=tmp_path, etcd_tls=ca_only
    ).replicas
    assert [a for a in replica.process.argv if a.startswith("--etcd-")] == [
        "--etcd-prefix=/archipel/",
        f"--etcd-cafile={files.ca}",
    ]
    (plain,) = ControlPlaneReplicas(1, etcd_endpoint="127.0.0.1:2379", directory=tmp_path).replicas
    assert not any(a.startswith(("--etcd-cafile", "--etcd-certfile")) for a in plain.process.argv)
    # The files are etcd's CA, a client certificate of it and its key (mode 0600).
    assert files.key is not None and files.key.stat().st_mode & 0o777 == 0o600
