"""Session-scoped real servers, opted into per test module.

A module that needs member clusters says so with a marker, for example
``pytestmark = pytest.mark.members(count=2, profile="api")``, and asks for the
``members`` fixture. Fleets with the same count and profile are shared by the whole
session; ``isolated=True`` gives a module its own fleet, for tests that break things.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from archipel.fleet import members as member_clusters
from archipel.fleet import tools
from archipel.fleet.etcd import EtcdCluster, EtcdServer

FleetFactory = Callable[[int, member_clusters.Profile], member_clusters.Fleet]


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A real etcd for the whole session."""
    binaries = tools.ensure("etcd")
    server = EtcdServer(binary=binaries.etcd, directory=tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three etcd members forming one cluster, of the module's own: tests that use it
    stop and kill members, so no other module shares it."""
    cluster = EtcdCluster(
        binary=tools.ensure("etcd").etcd, directory=tmp_path_factory.mktemp("etcd-cluster")
    )
    cluster.start()
    yield cluster
    cluster.stop()


def _start_fleet(root: Path, count: int, profile: member_clusters.Profile) -> member_clusters.Fleet:
    fleet = member_clusters.Fleet(root, member_clusters.default_specs(count, profile=profile))
    return fleet.start()


@pytest.fixture(scope="session")
def shared_fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetFactory]:
    fleets: dict[tuple[int, str], member_clusters.Fleet] = {}

    def get(count: int, profile: member_clusters.Profile) -> member_clusters.Fleet:
        key = (count, profile)
        if key not in fleets:
            root = tmp_path_factory.mktemp(f"fleet-{profile}-{count}")
            fleets[key] = _start_fleet(root, count, profile)
        return fleets[key]

    yield get
    for fleet in fleets.values():
        fleet.stop()


@pytest.fixture(scope="module")
def members(
    request: pytest.FixtureRequest,
    shared_fleets: FleetFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[member_clusters.Fleet]:
    """The member clusters the module's ``members`` marker asks for."""
    marker = request.node.get_closest_marker("members")
    if marker is None:
        raise pytest.UsageError(
            f"{request.node.nodeid}: the 'members' fixture needs pytest.mark.members on the module"
        )
    count: int = marker.kwargs.get("count", 1)
    profile: member_clusters.Profile = marker.kwargs.get("profile", "api")
    if marker.kwargs.get("isolated", False):
        fleet = _start_fleet(tmp_path_factory.mktemp(f"isolated-{profile}"), count, profile)
        yield fleet
        fleet.stop()
    else:
        yield shared_fleets(count, profile)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many fuzz cases ran and what they found (tests/fuzzstats.py)."""
    from tests import fuzzstats

    lines = fuzzstats.summary()
    if lines:
        terminalreporter.section("fuzzing")
        for line in lines:
            terminalreporter.write_line(line)
