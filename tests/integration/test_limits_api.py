"""The limits of docs/limits.md that callers and agents meet, on a real control plane, and
what the fuzzing suite (test_api_fuzz.py) found, each as a test of its own.

* a work carries at most ``MAX_WORK_MANIFESTS`` manifests;
* a List page holds at most ``MAX_LIST_PAGE_ITEMS`` objects, whatever ``limit`` asks;
* a status an agent reports nested deeper than ``MAX_MANIFEST_DEPTH`` is stored empty,
  with the reason;
* bytes on the agent stream that are not an AgentMessage end it with
  INVALID_ARGUMENT naming the field (it was INTERNAL, and a traceback in the log);
* mutating calls over an identity's ``--mutation-rate`` are RESOURCE_EXHAUSTED with
  a retry hint, reads never are, and the CLI waits as told and succeeds.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from archipel import limits, structs
from archipel.v1alpha1 import agent_pb2, service_pb2, work_pb2
from archipel.v1alpha2 import service_pb2 as v2
from tests.integration import agents, fuzzing
from tests.integration.agents import Api, RawAgent, eventually
from tests.integration.rawgrpc import Answer, Plane, start_plane

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[2]
V1 = "/archipel.v1alpha1."
V2 = "/archipel.v1alpha2."


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """A control plane of the module's own, spoken to in bytes."""
    yield from start_plane(tmp_path_factory.mktemp("limits"))


def _work(manifests: int) -> work_pb2.PropagationWork:
    work = work_pb2.PropagationWork()
    work.metadata.name = "default.many-configmap"
    work.metadata.namespace = "archipel-es-member1"
    for index in range(manifests):
        work.spec.workload.manifests.add().update(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{index}"}}
        )
    return work


def test_a_work_carries_at_most_the_limit_of_manifests(raw: Plane) -> None:
    too_many = _work(limits.MAX_WORK_MANIFESTS + 1)
    for method, request in (
        (f"{V1}PropagationWorkService/Apply", too_many),
        (
            f"{V2}PropagationWorkService/Apply",
            v2.PropagationWorkServiceApplyRequest(object=too_many),
        ),
    ):
        answer = raw.api.unary(method, request.SerializeToString())
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, answer
        assert answer.details.startswith(
            f"spec.workload.manifests: {limits.MAX_WORK_MANIFESTS + 1} manifests, over the limit "
            f"of {limits.MAX_WORK_MANIFESTS}"
        ), answer.details
    at_the_limit = _work(limits.MAX_WORK_MANIFESTS)
    answer = raw.api.unary(f"{V1}PropagationWorkService/Apply", at_the_limit.SerializeToString())
    assert answer.code == grpc.StatusCode.OK, answer


def _list(plane: Plane, method: str, request: Any) -> tuple[int, str]:
    answer = plane.api.unary(method, request.SerializeToString())
    assert answer.code == grpc.StatusCode.OK, answer
    page = service_pb2.ResourceTemplateList.FromString(answer.body)
    return len(page.items), getattr(page, "continue")


def test_a_list_page_holds_at_most_the_limit_of_objects(raw: Plane) -> None:
    count = limits.MAX_LIST_PAGE_ITEMS + 1

    def apply(index: int) -> Answer:
        manifest = agents.config_map(f"item-{index:04d}", namespace="many")
        request = work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest))
        return raw.api.unary(f"{V1}ResourceTemplateService/Apply", request.SerializeToString())

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(apply, range(count)))
    assert {answer.code for answer in answers} == {grpc.StatusCode.OK}

    # 0 ("everything") and more than the limit both get a full page and a token; so does
    # v1alpha2. Following the token gives the rest, and nothing more.
    for limit in (0, limits.MAX_LIST_PAGE_ITEMS + 500, 2**31 - 1):
        request = service_pb2.TemplateListRequest(
            api_version="v1", kind="ConfigMap", namespace="many", limit=limit
        )
        items, token = _list(raw, f"{V1}ResourceTemplateService/List", request)
        assert (items, bool(token)) == (limits.MAX_LIST_PAGE_ITEMS, True)
        setattr(request, "continue", token)
        assert _list(raw, f"{V1}ResourceTemplateService/List", request) == (1, "")
    request2 = v2.ResourceTemplateServiceListRequest(api_version="v1", kind="ConfigMap", limit=0)
    items, token = _list(raw, f"{V2}ResourceTemplateService/List", request2)
    assert items == limits.MAX_LIST_PAGE_ITEMS and token
    # A limit within the bound is served exactly, as before.
    request = service_pb2.TemplateListRequest(namespace="many", limit=7)
    assert _list(raw, f"{V1}ResourceTemplateService/List", request)[0] == 7


# -- the agent stream -------------------------------------------------------------------------


def _metric(plane: Plane, name: str) -> float:
    url = f"http://127.0.0.1:{plane.process.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _join(plane: Plane, name: str) -> str:
    answer = plane.api.unary(
        f"{V1}ClusterAdminService/Join",
        service_pb2.JoinRequest(name=name, rotate=True).SerializeToString(),
    )
    assert answer.code == grpc.StatusCode.OK, answer
    return service_pb2.JoinResponse.FromString(answer.body).token


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        # A truncated hello: field 1 (hello) says 5 bytes and holds 2.
        ([b"\x0a\x05ab"], "hello"),
        # A valid hello, then a batch whose status report's name is not UTF-8.
        (
            [
                agent_pb2.AgentMessage(
                    hello=agent_pb2.Hello(cluster="undecodable")
                ).SerializeToString(),
                b"\x32\x06\x12\x04\x0a\x02\xff\xfe",
            ],
            "batch.statuses.name",
        ),
    ],
)
def test_bytes_that_are_not_an_agent_message_are_invalid_argument(
    raw: Plane, messages: list[bytes], field: str
) -> None:
    token = _join(raw, "undecodable")
    crashes = _metric(raw, "archipel_agent_session_crashes_total")
    channel = fuzzing.channel(raw.process)
    try:
        (connect,) = (m for m in fuzzing.served_methods(raw.process) if m.client_streaming)
        answer = fuzzing.call_bidi(
            channel, connect, messages, (("authorization", f"Bearer {token}"),), wait=30
        )
    finally:
        channel.close()
    # Before: UNKNOWN for an undecodable first message, INTERNAL for a later one ("the
    # control plane failed reading this stream"), a traceback and a session crash counted.
    assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, answer
    assert answer.details.startswith(f"{field}: cannot decode"), answer.details
    assert _metric(raw, "archipel_agent_session_crashes_total") == crashes
    assert "Traceback" not in raw.process.process.log_tail(2000)


async def test_a_reported_status_nested_past_the_limit_is_stored_empty(api: Api) -> None:
    namespace = "deep-status"
    token = await api.join("deep-report")
    await api.propagate_config_maps("deep-report", namespace=namespace)
    await api.apply(agents.config_map("deep", namespace=namespace))
    name = f"{namespace}.deep-configmap"
    work = await eventually("the work", lambda: api.work("deep-report", name))

    report = agent_pb2.WorkStatusReport(
        name=name, uid=work.metadata.uid, generation=work.metadata.generation, applied=True
    )
    manifest = report.manifest_statuses.add(health="Healthy")
    manifest.status.update({"deep": fuzzing.nested(limits.MAX_MANIFEST_DEPTH + 1)})
    # Sent as it is (a real agent would have emptied it): an older, buggy or hostile agent.
    agent = RawAgent(api.plane, "deep-report", token)
    agent.start([agent_pb2.AgentMessage(hello=agent_pb2.Hello(cluster="deep-report"))])
    try:
        await agent.wait("the work", lambda: name in agent.works)
        agent.outbox.put_nowait(agent_pb2.AgentMessage(status=report))

        async def reported() -> work_pb2.PropagationWork | None:
            found = await api.work("deep-report", name)
            return found if found is not None and len(found.status.manifest_statuses) else None

        stored = await eventually("the report stored", reported)
    finally:
        await agent.close()
    status = stored.status.manifest_statuses[0]
    assert structs.from_struct(status.status) == {}
    assert f"nested deeper than {limits.MAX_MANIFEST_DEPTH} levels" in status.health_message
    assert status.health == "Healthy"


# -- rate limits --------------------------------------------------------------------------------

RATE, BURST = 4, 3


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    yield from start_plane(
        tmp_path_factory.mktemp("rate-limited"),
        extra_args=[f"--mutation-rate={RATE}", f"--mutation-burst={BURST}"],
    )


def _call(
    plane: Plane, method: str, request: Any, *, token: str | None = None
) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """(code, details, trailing metadata) of a unary call, with the admin token unless
    ``token`` says otherwise ("" for none)."""
    channel = plane.api.channel
    metadata = (
        plane.api.metadata
        if token is None
        else ((("authorization", f"Bearer {token}"),) if token else ())
    )
    call = channel.unary_unary(
        method,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda data: data,
    )
    try:
        call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        # (key, value) pairs at run time, whatever the stubs say.
        pairs: Any = error.trailing_metadata() or ()
        return error.code(), error.details() or "", dict(pairs)
    return grpc.StatusCode.OK, "", {}


def _template(name: str) -> work_pb2.ResourceTemplate:
    return work_pb2.ResourceTemplate(
        manifest=structs.to_struct(agents.config_map(name, namespace="rated"))
    )


def test_mutating_calls_over_the_rate_are_refused_with_when_to_retry(limited: Plane) -> None:
    apply = f"{V1}ResourceTemplateService/Apply"
    codes = [_call(limited, apply, _template(f"burst-{i}"))[0] for i in range(BURST + 5)]
    # The burst goes through (a token or so may have come back meanwhile), then refusals.
    assert codes[:BURST] == [grpc.StatusCode.OK] * BURST
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, details, trailing = _call(limited, apply, _template("one-more"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith(f"rate limit: more than {RATE} mutating calls per second")
    assert "--mutation-rate" in details and "retry in " in details
    assert 0 < int(trailing["retry-after-ms"]) <= 1000 // RATE + 1

    # Reads are never limited; other mutating calls are, Join and Delete alike.
    for _ in range(20):
        code, _, _ = _call(
            limited, f"{V1}ResourceTemplateService/List", service_pb2.TemplateListRequest()
        )
        assert code == grpc.StatusCode.OK
    join = _call(limited, f"{V2}ClusterAdminService/Join", v2.JoinRequest(name="rated"))
    delete = _call(
        limited,
        f"{V1}ResourceTemplateService/Delete",
        service_pb2.TemplateDeleteRequest(
            api_version="v1", kind="ConfigMap", namespace="rated", name="burst-0"
        ),
    )
    assert join[0] == delete[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Another identity has a bucket of its own: it is turned away for what it is.
    assert _call(limited, apply, _template("x"), token="")[0] == grpc.StatusCode.UNAUTHENTICATED
    assert _metric(limited, "archipel_rate_limited_calls_total") >= 4


def test_the_cli_waits_as_told_and_applies_everything(limited: Plane, tmp_path: Path) -> None:
    count = BURST + 4  # more than a burst: some Applies are refused and retried
    (tmp_path / "objects.yaml").write_text(
        "---\n".join(
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cli-{i}\n  namespace: rated\n"
            for i in range(count)
        )
    )
    config = tmp_path / "archipel.yaml"
    limited.process.write_cli_config(config)
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("ARCHIPEL_")
    }
    result = subprocess.run(
        [sys.executable, "-m", "archipel.cli.main", "apply", "-f", str(tmp_path / "objects.yaml")],
        cwd=ROOT,
        env={**environment, "ARCHIPEL_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" created") == count, result.stdout
    assert _metric(limited, "archipel_rate_limited_calls_total") > 0


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--mutation-rate=-1"], "--mutation-rate must be a number from 0"),
        (["--mutation-rate=nan"], "--mutation-rate must be a number from 0"),
        (["--mutation-rate=5", "--mutation-burst=0"], "--mutation-burst must be at least 1"),
    ],
)
def test_rate_flags_that_make_no_sense_are_refused(flags: list[str], problem: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "--etcd=http://127.0.0.1:9", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert problem in result.stderr
