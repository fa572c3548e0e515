"""Both versions of the administration API, served from one store.

archipel.v1alpha2 gives every RPC its own request and response and types watch events
with an enum; archipel.v1alpha1 stays served for the clients generated from it. What
one version writes, the other reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from archipel import limits, structs
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.v1alpha1 import cluster_pb2, policy_pb2, work_pb2
from archipel.v1alpha1 import service_pb2 as v1
from archipel.v1alpha1 import service_pb2_grpc as v1_grpc
from archipel.v1alpha2 import service_pb2 as v2
from archipel.v1alpha2 import service_pb2_grpc as v2_grpc

pytestmark = pytest.mark.servers


@pytest.fixture
def channel(plane: ControlPlaneProcess) -> Iterator[grpc.Channel]:
    with plane.channel(options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as opened:
        yield opened


def _auth(plane: ControlPlaneProcess) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {plane.admin_token}"),)


def _policy(namespace: str, name: str, cluster: str) -> policy_pb2.PropagationPolicy:
    return json_format.ParseDict(
        {
            "apiVersion": "policy.karmada.io/v1alpha1",
            "kind": "PropagationPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
                "placement": {"clusterAffinity": {"clusterNames": [cluster]}},
            },
        },
        policy_pb2.PropagationPolicy(),
    )


def test_what_one_version_writes_the_other_reads(
    plane: ControlPlaneProcess, channel: grpc.Channel
) -> None:
    auth = _auth(plane)
    old = v1_grpc.PropagationPolicyServiceStub(channel)
    new = v2_grpc.PropagationPolicyServiceStub(channel)

    applied = new.Apply(
        v2.PropagationPolicyServiceApplyRequest(object=_policy("shop", "web", "member1")),
        metadata=auth,
    ).object
    assert applied.metadata.resource_version
    read_old = old.Get(v1.GetRequest(namespace="shop", name="web"), metadata=auth)
    assert read_old == applied

    changed = _policy("shop", "web", "member2")
    old.Apply(changed, metadata=auth)
    read_new = new.Get(
        v2.PropagationPolicyServiceGetRequest(namespace="shop", name="web"), metadata=auth
    ).object
    assert list(read_new.spec.placement.cluster_affinity.cluster_names) == ["member2"]

    listed = new.List(v2.PropagationPolicyServiceListRequest(namespace="shop"), metadata=auth)
    assert [item.metadata.name for item in listed.items] == ["web"]
    assert listed.resource_version

    deleted = new.Delete(
        v2.PropagationPolicyServiceDeleteRequest(namespace="shop", name="web"), metadata=auth
    )
    assert deleted.deleted
    with pytest.raises(grpc.RpcError) as gone:
        old.Get(v1.GetRequest(namespace="shop", name="web"), metadata=auth)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_events_are_typed_by_the_enum_in_v1alpha2_and_by_strings_in_v1alpha1(
    plane: ControlPlaneProcess, channel: grpc.Channel
) -> None:
    auth = _auth(plane)
    new = v2_grpc.PropagationPolicyServiceStub(channel)
    old = v1_grpc.PropagationPolicyServiceStub(channel)
    start = new.List(
        v2.PropagationPolicyServiceListRequest(namespace="watched"), metadata=auth
    ).resource_version
    new_events = new.Watch(
        v2.PropagationPolicyServiceWatchRequest(namespace="watched", resource_version=start),
        metadata=auth,
        timeout=30,
    )
    old_events = old.Watch(
        v1.WatchRequest(namespace="watched", resource_version=start), metadata=auth, timeout=30
    )
    for cluster in ("member1", "member2"):
        new.Apply(
            v2.PropagationPolicyServiceApplyRequest(object=_policy("watched", "p", cluster)),
            metadata=auth,
        )
    new.Delete(
        v2.PropagationPolicyServiceDeleteRequest(namespace="watched", name="p"), metadata=auth
    )

    def first_three(events: Any) -> list[tuple[object, str, str]]:
        seen = []
        for event in events:
            seen.append((event.type, event.object.metadata.name, event.resource_version))
            if len(seen) == 3:
                break
        return seen

    typed = first_three(new_events)
    named = first_three(old_events)
    new_events.cancel()
    old_events.cancel()
    assert [kind for kind, _, _ in typed] == [
        v2.EVENT_TYPE_ADDED,
        v2.EVENT_TYPE_MODIFIED,
        v2.EVENT_TYPE_DELETED,
    ]
    assert [kind for kind, _, _ in named] == ["ADDED", "MODIFIED", "DELETED"]
    # The same changes, at the same revisions, whichever version watches.
    assert [rest for _, *rest in typed] == [rest for _, *rest in named]


def test_cluster_scoped_kinds_take_no_namespace_in_v1alpha2(
    plane: ControlPlaneProcess, channel: grpc.Channel
) -> None:
    # A field that must always be empty is left out of the contract.
    for request in (
        v2.MemberClusterServiceGetRequest,
        v2.ClusterPropagationPolicyServiceListRequest,
        v2.ClusterOverridePolicyServiceWatchRequest,
        v2.ResourceInterpreterCustomizationServiceDeleteRequest,
    ):
        assert "namespace" not in request.DESCRIPTOR.fields_by_name
    assert "namespace" in v2.PropagationBindingServiceGetRequest.DESCRIPTOR.fields_by_name

    auth = _auth(plane)
    admin = v2_grpc.ClusterAdminServiceStub(channel)
    joined = admin.Join(v2.JoinRequest(name="edge1", region="eu"), metadata=auth)
    assert joined.token
    clusters = v2_grpc.MemberClusterServiceStub(channel)
    found = clusters.Get(v2.MemberClusterServiceGetRequest(name="edge1"), metadata=auth).object
    assert isinstance(found, cluster_pb2.MemberCluster)
    assert found.spec.region == "eu"


def test_templates_in_v1alpha2(plane: ControlPlaneProcess, channel: grpc.Channel) -> None:
    auth = _auth(plane)
    templates = v2_grpc.ResourceTemplateServiceStub(channel)
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "shop"},
        "data": {"mode": "blue"},
    }
    applied = templates.Apply(
        v2.ResourceTemplateServiceApplyRequest(
            object=work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest))
        ),
        metadata=auth,
    ).object
    version = structs.from_struct(applied.manifest)["metadata"]["resourceVersion"]
    found = templates.Get(
        v2.ResourceTemplateServiceGetRequest(
            api_version="v1", kind="ConfigMap", namespace="shop", name="settings"
        ),
        metadata=auth,
    ).object
    assert structs.from_struct(found.manifest)["data"] == {"mode": "blue"}

    stale = dict(manifest, metadata={**manifest["metadata"], "resourceVersion": "1"})
    with pytest.raises(grpc.RpcError) as conflict:
        templates.Apply(
            v2.ResourceTemplateServiceApplyRequest(
                object=work_pb2.ResourceTemplate(manifest=structs.to_struct(stale))
            ),
            metadata=auth,
        )
    assert conflict.value.code() == grpc.StatusCode.ABORTED

    listed = templates.List(
        v2.ResourceTemplateServiceListRequest(api_version="v1", kind="ConfigMap"), metadata=auth
    )
    assert [structs.from_struct(t.manifest)["metadata"]["name"] for t in listed.items] == [
        "settings"
    ]
    deleted = templates.Delete(
        v2.ResourceTemplateServiceDeleteRequest(
            api_version="v1",
            kind="ConfigMap",
            namespace="shop",
            name="settings",
            resource_version=version,
        ),
        metadata=auth,
    )
    assert deleted.deleted


def test_an_oversized_v1alpha2_apply_names_the_manifest(
    plane: ControlPlaneProcess, channel: grpc.Channel
) -> None:
    template = work_pb2.ResourceTemplate()
    template.manifest.update(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "big", "namespace": "shop"},
            "data": {"blob": "x" * (limits.MAX_REQUEST_BYTES + 1)},
        }
    )
    with pytest.raises(grpc.RpcError) as refused:
        v2_grpc.ResourceTemplateServiceStub(channel).Apply(
            v2.ResourceTemplateServiceApplyRequest(object=template), metadata=_auth(plane)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("object.manifest: ")


def test_info_names_every_served_version(plane: ControlPlaneProcess, channel: grpc.Channel) -> None:
    auth = _auth(plane)
    new = v2_grpc.InfoServiceStub(channel).GetVersion(v2.GetVersionRequest(), metadata=auth)
    assert list(new.api_versions) == ["v1alpha2", "v1alpha1"]
    old = v1_grpc.InfoServiceStub(channel).GetVersion(v1.GetVersionRequest(), metadata=auth)
    assert (old.version, old.api_version) == (new.version, "v1alpha1")


def test_a_label_selector_applies_before_the_limit(
    plane: ControlPlaneProcess, channel: grpc.Channel
) -> None:
    auth = _auth(plane)
    policies = v2_grpc.PropagationPolicyServiceStub(channel)
    for name, team in (("a", "ops"), ("b", "ops"), ("c", "web"), ("d", "web")):
        wanted = _policy("paged", name, "member1")
        wanted.metadata.labels["team"] = team
        policies.Apply(v2.PropagationPolicyServiceApplyRequest(object=wanted), metadata=auth)
    first = policies.List(
        v2.PropagationPolicyServiceListRequest(
            namespace="paged", label_selector="team=web", limit=1
        ),
        metadata=auth,
    )
    # Kubernetes' rule: the limit counts matching objects, so no page is short or empty
    # because non-matching objects came first.
    assert [item.metadata.name for item in first.items] == ["c"]
    second = policies.List(
        v2.PropagationPolicyServiceListRequest(
            namespace="paged",
            label_selector="team=web",
            limit=1,
            **{"continue": getattr(first, "continue")},
        ),
        metadata=auth,
    )
    assert [item.metadata.name for item in second.items] == ["d"]
    assert getattr(second, "continue") == ""
