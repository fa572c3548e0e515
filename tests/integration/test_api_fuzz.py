"""Fuzzing every RPC the control plane serves, as every identity.

A real control plane on a real etcd gets random requests for every method it lists
through reflection (both API versions, unary calls and Watch streams, and the agent
stream), built from each request's descriptor: random messages, valid objects with
random fields merged over them (so that many are stored and reach the controllers),
and broken bytes. Each test runs as each identity of ``fuzzing.IDENTITIES``. The rules
(``tests/integration/fuzzing.py``): never UNKNOWN or INTERNAL, a refusal for whoever
may not call the method, a field path at the start of every INVALID_ARGUMENT, and the
server healthy and its log free of tracebacks at the end. The counts are printed at
the end of the session (tests/fuzzstats.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import pkgutil
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import archipel.v1alpha1
import archipel.v1alpha2
from archipel import agentstream, limits
from archipel.v1alpha1 import agent_pb2, work_pb2
from archipel.v1alpha1 import service_pb2 as v1alpha1_pb2
from tests import fuzzstats
from tests.integration import agents, fuzzing
from tests.integration.fuzzing import (
    AGENT_CLUSTER,
    AGENT_SERVICE,
    IDENTITIES,
    Access,
    Credentials,
    Identity,
    Method,
)
from tests.integration.rawgrpc import Plane, start_plane

pytestmark = pytest.mark.servers


def _settings(examples: int) -> settings:
    return settings(
        max_examples=fuzzstats.scaled(examples),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@dataclasses.dataclass
class Fuzzed:
    plane: Plane
    channel: grpc.Channel
    methods: list[Method]
    credentials: Credentials
    health: fuzzing.Health
    work: work_pb2.PropagationWork
    """The agent cluster's work."""

    def metadata(self, identity: Identity) -> tuple[tuple[str, str], ...]:
        return identity.metadata(self.credentials)

    def of(self, *, streaming: bool) -> list[Method]:
        return [
            m for m in self.methods if not m.client_streaming and m.server_streaming == streaming
        ]

    def stream_methods(self) -> list[Method]:
        return [m for m in self.methods if m.client_streaming]


# The agent cluster's one work: reports about it are stored, so the fuzzer reaches the
# work-status controller. Named so that no fuzzed request names it.
TARGET_NAMESPACE = "fz-target-ns"
TARGET_WORK = f"{TARGET_NAMESPACE}.fz-target-configmap"


async def _agent_cluster(plane: Plane) -> tuple[str, work_pb2.PropagationWork]:
    """Join the agent's cluster and give it a work; its token and the work."""
    api = agents.Api(plane.process)
    try:
        token = await api.join(AGENT_CLUSTER)
        await api.propagate_config_maps(AGENT_CLUSTER, namespace=TARGET_NAMESPACE)
        await api.apply(agents.config_map("fz-target", namespace=TARGET_NAMESPACE))
        work = await agents.eventually(
            "the agent cluster's work", lambda: api.work(AGENT_CLUSTER, TARGET_WORK)
        )
        return token, work
    finally:
        await api.close()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    for plane in start_plane(tmp_path_factory.mktemp("api-fuzz")):
        token, work = asyncio.run(_agent_cluster(plane))
        channel = fuzzing.channel(plane.process)
        admin = plane.process.client()
        try:
            users = {
                name: admin.create_user(name, identity.role.value, sorted(identity.namespaces))[1]
                for name, identity in fuzzing.ROLE_USERS.items()
            }
        finally:
            admin.close()
        try:
            yield Fuzzed(
                plane,
                channel,
                fuzzing.served_methods(plane.process),
                Credentials(admin_token=plane.process.admin_token, agent_token=token, users=users),
                fuzzing.Health(plane.process.serving),
                work,
            )
        finally:
            channel.close()
        _assert_healthy(plane)
        # Whatever the agent reported, its work is still readable (a status nested too
        # deep would have made it, and its binding, undecodable elsewhere).
        answer = plane.api.unary(
            "/archipel.v1alpha1.PropagationWorkService/Get",
            v1alpha1_pb2.GetRequest(
                namespace=f"archipel-es-{AGENT_CLUSTER}", name=TARGET_WORK
            ).SerializeToString(),
        )
        assert answer.code == grpc.StatusCode.OK, answer
        stored = work_pb2.PropagationWork.FromString(answer.body)
        for status in stored.status.manifest_statuses:
            assert agentstream.struct_depth(status.status) <= limits.MAX_MANIFEST_DEPTH


def _assert_healthy(plane: Plane) -> None:
    assert plane.process.process.running, "the control plane died"
    assert fuzzing.serving_within(plane.process.serving), "the control plane is not SERVING"
    assert "Traceback" not in plane.process.process.log_tail(5000), plane.process.process.log_tail(
        5000
    )


# Cases per identity: an identity that reaches the servicers gets many more, since a
# refused one is turned away before its request is read.
def _budget(identity: Identity, method_path: str, served: int, refused: int) -> int:
    return served if identity.may(method_path) is not Access.REFUSED else refused


API_PROBE = "/archipel.v1alpha2.InfoService/GetVersion"
AGENT_PROBE = f"/{AGENT_SERVICE}/Connect"
# How long a Watch may stay silent before the case counts as "a valid watch": every
# invalid request is refused well within it (and one that is not counts as a silent
# watch, never as a failure).
WATCH_WAIT = 0.5
# A refusal of who may not call is due whatever the load, and comes before anything
# is read: waited for as long as it takes, so a slow machine never fails the test.
REFUSAL_WAIT = 30.0


def _watch_wait(identity: Identity, method: Method) -> float:
    return REFUSAL_WAIT if identity.may(method.path) is Access.REFUSED else WATCH_WAIT


def _declared_services() -> set[str]:
    """Every service of every file generated from proto/, both versions."""
    declared = set()
    for package in (archipel.v1alpha1, archipel.v1alpha2):
        for module in pkgutil.iter_modules(package.__path__):
            if module.name.endswith("_pb2"):
                file = importlib.import_module(f"{package.__name__}.{module.name}").DESCRIPTOR
                declared |= {service.full_name for service in file.services_by_name.values()}
    return declared


def test_every_service_of_both_versions_is_discovered(fuzzed: Fuzzed) -> None:
    # The fuzzer calls what reflection lists: a service of the contract that the server
    # does not list would never be fuzzed (nor found by grpcurl).
    served = {method.service for method in fuzzed.methods}
    declared = _declared_services()
    assert {"archipel.v1alpha1.ResourceTemplateService", AGENT_SERVICE} <= declared
    assert any(name.startswith("archipel.v1alpha2.") for name in declared)
    assert declared <= served, f"declared but not served or not listed: {declared - served}"
    assert fuzzed.of(streaming=False) and fuzzed.of(streaming=True) and fuzzed.stream_methods()
    # Nothing the fuzzer cannot call: a client-streaming method other than the agent
    # stream would need a case of its own.
    assert {m.service for m in fuzzed.stream_methods()} == {AGENT_SERVICE}


@pytest.mark.parametrize("identity", IDENTITIES, ids=lambda i: i.name)
def test_random_unary_requests(fuzzed: Fuzzed, identity: Identity) -> None:
    methods = fuzzed.of(streaming=False)
    metadata = fuzzed.metadata(identity)

    @_settings(_budget(identity, API_PROBE, 500, 60))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(methods))
        request = data.draw(fuzzing.message_bytes(method.input))
        answer = fuzzing.call_unary(fuzzed.channel, method, request, metadata)
        event(f"{method.name}: {answer.code.name}")
        fuzzing.check_answer("api unary", identity, method, request, answer)
        fuzzed.health.tick()

    run()
    _assert_healthy(fuzzed.plane)


@pytest.mark.parametrize("identity", IDENTITIES, ids=lambda i: i.name)
def test_valid_objects_with_random_fields(fuzzed: Fuzzed, identity: Identity) -> None:
    based = [(m, base) for m in fuzzed.of(streaming=False) if (base := fuzzing.valid_base(m))]
    # Every kind's Apply in both versions, and the templates'.
    assert len(based) >= 2 * len(fuzzing.VALID_OBJECTS) - 2
    metadata = fuzzed.metadata(identity)

    @_settings(_budget(identity, API_PROBE, 400, 30))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        method, base = data.draw(st.sampled_from(based))
        # Protobuf merges a message sent twice: the random fields land over the valid ones.
        request = base + data.draw(fuzzing.perturbation(method))
        answer = fuzzing.call_unary(fuzzed.channel, method, request, metadata)
        event(f"{method.short}: {answer.code.name}")
        fuzzing.check_answer("api perturbed", identity, method, request, answer)
        fuzzed.health.tick()

    run()
    _assert_healthy(fuzzed.plane)


@pytest.mark.parametrize("identity", IDENTITIES, ids=lambda i: i.name)
def test_broken_bytes(fuzzed: Fuzzed, identity: Identity) -> None:
    methods = fuzzed.of(streaming=False) + fuzzed.of(streaming=True)
    metadata = fuzzed.metadata(identity)

    @_settings(_budget(identity, API_PROBE, 300, 30))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(methods))
        base = fuzzing.valid_base(method) or data.draw(fuzzing.message_bytes(method.input))
        request = data.draw(fuzzing.mangled(base))
        if method.server_streaming:
            answer = fuzzing.call_server_stream(
                fuzzed.channel, method, request, metadata, wait=_watch_wait(identity, method)
            )
        else:
            answer = fuzzing.call_unary(fuzzed.channel, method, request, metadata)
        event(f"{method.name}: {answer.code.name}")
        fuzzing.check_answer("api broken bytes", identity, method, request, answer)
        fuzzed.health.tick()

    run()
    _assert_healthy(fuzzed.plane)


@pytest.mark.parametrize("identity", IDENTITIES, ids=lambda i: i.name)
def test_watch_streams(fuzzed: Fuzzed, identity: Identity) -> None:
    methods = fuzzed.of(streaming=True)
    metadata = fuzzed.metadata(identity)

    @_settings(_budget(identity, methods[0].path, 120, 20))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(methods))
        request = data.draw(fuzzing.message_bytes(method.input))
        answer = fuzzing.call_server_stream(
            fuzzed.channel, method, request, metadata, wait=_watch_wait(identity, method)
        )
        event(f"{method.name}: {answer.code.name}")
        fuzzing.check_answer("api watch", identity, method, request, answer)
        fuzzed.health.tick()

    run()
    _assert_healthy(fuzzed.plane)


# -- the agent stream ----------------------------------------------------------------------


def _hello(**fields: object) -> bytes:
    return agent_pb2.AgentMessage(hello=agent_pb2.Hello(**fields)).SerializeToString()  # type: ignore[arg-type]


@st.composite
def _status_report(draw: st.DrawFn, work: work_pb2.PropagationWork) -> bytes:
    """A status report meant to hurt: a reflected status nested past the limit, or
    more manifest statuses than a work has; about the agent's work (so it is stored)
    or about works that do not exist."""
    real = draw(st.booleans())
    report = agent_pb2.WorkStatusReport(
        name=work.metadata.name if real else draw(st.sampled_from(["x", "_.a", ""])),
        uid=work.metadata.uid if real else draw(st.sampled_from(["", "u"])),
        generation=work.metadata.generation if real else draw(st.integers(-1, 3)),
        applied=draw(st.booleans()),
        message=draw(fuzzing.TEXT),
    )
    for _ in range(draw(st.integers(0, 3))):
        manifest = report.manifest_statuses.add()
        manifest.health = draw(st.sampled_from(["Healthy", "", "Bogus"]))
        manifest.status.update({"deep": draw(fuzzing.DEEP)})
    if draw(st.booleans()):
        return agent_pb2.AgentMessage(status=report).SerializeToString()
    batch = agent_pb2.AgentBatch(statuses=[report] * draw(st.integers(1, 3)))
    return agent_pb2.AgentMessage(batch=batch).SerializeToString()


# How an agent stream opens: mostly with a hello that opens the session, so that what
# follows reaches it.
OPENINGS: tuple[str, ...] = ("hello", "hello", "hello+random", "hello+random")
OPENINGS += ("other-cluster", "random", "broken", "none")


@st.composite
def _agent_session(draw: st.DrawFn, message: Method, work: work_pb2.PropagationWork) -> list[bytes]:
    """What an agent stream carries: an opening (a valid hello, or not), then anything."""
    opening = draw(st.sampled_from(OPENINGS))
    first: list[bytes] = []
    if opening == "hello":
        first = [_hello(cluster=AGENT_CLUSTER)]
    elif opening == "hello+random":
        # Random hello fields, the cluster and an agent that does not elect (epoch 0)
        # last, so they win: the session opens, with whatever else the hello says.
        random = agent_pb2.AgentMessage.FromString(draw(fuzzing.message_bytes(message.input)))
        hello = agent_pb2.Hello()
        hello.MergeFrom(random.hello)
        hello.cluster, hello.leader_epoch = AGENT_CLUSTER, 0
        first = [agent_pb2.AgentMessage(hello=hello).SerializeToString()]
    elif opening == "other-cluster":
        first = [_hello(cluster=draw(st.sampled_from(["member1", "", "a" * 300])))]
    elif opening == "random":
        first = [draw(fuzzing.message_bytes(message.input))]
    elif opening == "broken":
        first = [draw(fuzzing.mangled(_hello(cluster=AGENT_CLUSTER)))]
    rest = draw(
        st.lists(
            st.one_of(
                fuzzing.message_bytes(message.input),
                _status_report(work),
                _status_report(work),
                fuzzing.message_bytes(message.input).flatmap(fuzzing.mangled),
            ),
            max_size=4,
        )
    )
    return first + rest


@pytest.mark.parametrize("identity", IDENTITIES, ids=lambda i: i.name)
def test_agent_streams(fuzzed: Fuzzed, identity: Identity) -> None:
    (connect,) = fuzzed.stream_methods()
    metadata = fuzzed.metadata(identity)

    @_settings(_budget(identity, connect.path, 150, 20))
    @given(_agent_session(connect, fuzzed.work))
    def run(messages: list[bytes]) -> None:
        answer = fuzzing.call_bidi(fuzzed.channel, connect, messages, metadata, wait=20)
        event(f"agent stream: {answer.code.name}")
        fuzzing.check_answer("agent stream", identity, connect, b"".join(messages), answer)
        fuzzed.health.tick(every=20)

    run()
    _assert_healthy(fuzzed.plane)
