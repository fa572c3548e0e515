"""Several addresses for one control plane: the CLI and its client try them in turn, so
a replica that is down (here: an address nobody listens on, given first) costs a
retry, not a failure. (The agent's side: tests/e2e/test_agent_addresses_e2e.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from archipel.cli.main import main as cli
from archipel.client import Client, Config
from archipel.core import kinds
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import free_port

pytestmark = pytest.mark.servers


def nowhere() -> str:
    """An address on loopback where nothing listens: a control plane that is down."""
    return f"127.0.0.1:{free_port()}"


def test_the_client_moves_on_from_an_address_that_does_not_answer(
    plane: ControlPlaneProcess,
) -> None:
    client = Client(dataclasses.replace(plane.config(), server=f"{nowhere()},{plane.address}"))
    try:
        assert client.version().version
        # It stays with the one that answered: the next call goes straight there.
        assert client.channel.current == 1
        assert client.list_objects(kinds.MEMBER_CLUSTER) == []
        assert client.channel.current == 1
    finally:
        client.close()


@pytest.mark.parametrize("form", ["comma-separated", "repeated"])
def test_the_cli_takes_several_servers(
    form: str,
    plane: ControlPlaneProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ARCHIPEL_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("ARCHIPEL_TOKEN", plane.admin_token)
    monkeypatch.setenv("ARCHIPEL_TLS_CA_FILE", str(plane.ca_file))
    monkeypatch.delenv("ARCHIPEL_SERVER", raising=False)
    servers = [nowhere(), plane.address]
    flags = (
        ["--server", ",".join(servers)]
        if form == "comma-separated"
        else [part for server in servers for part in ("--server", server)]
    )
    assert cli([*flags, "version"]) == 0
    assert "server: " in capsys.readouterr().out


def test_the_cli_config_file_takes_a_list_of_servers(
    plane: ControlPlaneProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = nowhere()
    config = tmp_path / "archipel.yaml"
    config.write_text(
        f"server:\n- {down}\n- {plane.address}\ntokenFile: {plane.token_file}\n"
        f"tlsCaFile: {plane.ca_file}\n"
    )
    monkeypatch.delenv("ARCHIPEL_SERVER", raising=False)
    monkeypatch.delenv("ARCHIPEL_TOKEN", raising=False)
    loaded = Config.load(config)
    assert loaded.servers == [down, plane.address]
    client = Client(loaded)
    try:
        assert client.version().version
    finally:
        client.close()
