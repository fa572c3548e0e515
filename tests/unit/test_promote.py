"""``archipel promote``'s pure parts: KIND/NAME parsing and turning a live object into
a resource template."""

from __future__ import annotations

import copy
from typing import Any

import grpc
import pytest

from archipel.cli import promote
from archipel.cli.main import build_parser
from archipel.cli.promote import KindQuery, clean_template, parse_kind, parse_target
from archipel.client import ClientError

SERVER_METADATA = {
    "uid": "0b1c",
    "resourceVersion": "812",
    "generation": 3,
    "creationTimestamp": "2026-01-02T03:04:05Z",
    "managedFields": [{"manager": "kubectl", "operation": "Update"}],
    "selfLink": "/apis/apps/v1/namespaces/shop/deployments/web",
    "ownerReferences": [{"apiVersion": "v1", "kind": "Thing", "name": "x", "uid": "1"}],
    "finalizers": ["example.com/hold"],
}


def _live(kind: str, api_version: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "web", "namespace": "shop", **SERVER_METADATA, **metadata},
        "spec": spec,
        "status": {"observedGeneration": 3},
    }


POD_TEMPLATE = {
    "metadata": {"creationTimestamp": None, "labels": {"app": "web"}},
    "spec": {
        "containers": [
            {
                "name": "web",
                "image": "nginx:1.27",
                "imagePullPolicy": "IfNotPresent",
                "terminationMessagePath": "/dev/termination-log",
            }
        ],
        "restartPolicy": "Always",
    },
}
DEPLOYMENT_SPEC = {
    "replicas": 2,
    "selector": {"matchLabels": {"app": "web"}},
    "template": POD_TEMPLATE,
    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
}
CLEAN_POD_TEMPLATE = {
    "metadata": {"labels": {"app": "web"}},
    "spec": POD_TEMPLATE["spec"],
}
JOB_LABELS = {
    "app": "batch",
    "controller-uid": "0b1c",
    "batch.kubernetes.io/controller-uid": "0b1c",
    "job-name": "web",
}

CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "deployment: server metadata, status and member annotations go; the rest stays",
        _live(
            "Deployment",
            "apps/v1",
            DEPLOYMENT_SPEC,
            labels={"app": "web"},
            annotations={
                "deployment.kubernetes.io/revision": "1",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "team": "shop",
            },
        ),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "labels": {"app": "web"},
                "annotations": {"team": "shop"},
            },
            "spec": {**DEPLOYMENT_SPEC, "template": CLEAN_POD_TEMPLATE},
        },
    ),
    (
        "annotations that were all the member's leave no empty map",
        _live(
            "Deployment",
            "apps/v1",
            DEPLOYMENT_SPEC,
            annotations={"deployment.kubernetes.io/revision": "4"},
        ),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {**DEPLOYMENT_SPEC, "template": CLEAN_POD_TEMPLATE},
        },
    ),
    (
        "service: the member-allocated clusterIP goes, ports and selector stay",
        _live(
            "Service",
            "v1",
            {
                "clusterIP": "10.0.0.12",
                "clusterIPs": ["10.0.0.12"],
                "type": "ClusterIP",
                "selector": {"app": "web"},
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
            },
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": "web"},
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
            },
        },
    ),
    (
        "headless service: clusterIP None is the user's and stays",
        _live("Service", "v1", {"clusterIP": "None", "clusterIPs": ["None"]}),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]},
        },
    ),
    (
        "job: the generated selector and controller-uid labels go",
        _live(
            "Job",
            "batch/v1",
            {
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "0b1c"}},
                "parallelism": 1,
                "template": {
                    "metadata": {"labels": JOB_LABELS},
                    "spec": {"containers": [{"name": "w", "image": "busybox"}]},
                },
            },
            labels=JOB_LABELS,
        ),
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "labels": {"app": "batch", "job-name": "web"},
            },
            "spec": {
                "parallelism": 1,
                "template": {
                    "metadata": {"labels": {"app": "batch", "job-name": "web"}},
                    "spec": {"containers": [{"name": "w", "image": "busybox"}]},
                },
            },
        },
    ),
    (
        "job with manualSelector: the selector and labels are the user's",
        _live(
            "Job",
            "batch/v1",
            {
                "manualSelector": True,
                "selector": {"matchLabels": {"controller-uid": "mine"}},
                "template": {"metadata": {"labels": {"controller-uid": "mine"}}},
            },
        ),
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "manualSelector": True,
                "selector": {"matchLabels": {"controller-uid": "mine"}},
                "template": {"metadata": {"labels": {"controller-uid": "mine"}}},
            },
        },
    ),
    (
        "configmap: no spec, data kept",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web", "namespace": "shop", **SERVER_METADATA},
            "data": {"a": "1"},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web", "namespace": "shop"},
            "data": {"a": "1"},
        },
    ),
]


@pytest.mark.parametrize(
    ("live", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_clean_template(live: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(live)
    assert clean_template(live) == expected
    assert live == before  # the live object is not changed


def test_pod_template_is_left_exactly_as_the_member_has_it() -> None:
    """Any change to spec.template would roll the Deployment when the agent applies it."""
    live = _live("Deployment", "apps/v1", copy.deepcopy(DEPLOYMENT_SPEC))
    live["spec"]["template"]["metadata"].pop("creationTimestamp")
    cleaned = clean_template(live)
    assert cleaned["spec"]["template"] == live["spec"]["template"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deployment", KindQuery("deployment")),
        ("deploy", KindQuery("deploy")),
        ("Deployment", KindQuery("deployment")),
        ("Deployment.apps", KindQuery("deployment", "apps")),
        ("widgets.example.com", KindQuery("widgets", "example.com")),
        ("Service.core", KindQuery("service", "")),
    ],
)
def test_parse_kind(text: str, expected: KindQuery) -> None:
    assert parse_kind(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deployment", ("apps/v1", "Deployment")),
        ("deploy", ("apps/v1", "Deployment")),
        ("sts", ("apps/v1", "StatefulSet")),
        ("ds", ("apps/v1", "DaemonSet")),
        ("svc", ("v1", "Service")),
        ("service", ("v1", "Service")),
        ("cm", ("v1", "ConfigMap")),
        ("secret", ("v1", "Secret")),
        ("job", ("batch/v1", "Job")),
        ("Deployment.apps", ("apps/v1", "Deployment")),
        ("service.core", ("v1", "Service")),
        ("Deployment.example.com", None),  # another group's Deployment: ask discovery
        ("widgets.example.com", None),
        ("widget", None),
    ],
)
def test_known_kinds(text: str, expected: tuple[str, str] | None) -> None:
    assert promote.known_kind(parse_kind(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deployment/web", (KindQuery("deployment"), "web")),
        ("svc/web", (KindQuery("svc"), "web")),
        ("Widget.example.com/w-1", (KindQuery("widget", "example.com"), "w-1")),
    ],
)
def test_parse_target(text: str, expected: tuple[KindQuery, str]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["deployment", "deployment/", "/web", "deploy/a/b", ""])
def test_parse_target_refuses(text: str) -> None:
    with pytest.raises(ClientError, match="KIND/NAME"):
        parse_target(text)


def test_discovery_matching_by_plural_singular_and_short_names() -> None:
    entry = {"name": "widgets", "singularName": "widget", "kind": "Widget", "shortNames": ["wg"]}
    for typed in ("widgets", "widget", "Widget", "wg"):
        assert promote._matches(parse_kind(typed), entry)
    assert not promote._matches(parse_kind("gadget"), entry)


def test_policy_selects_exactly_the_object_and_takes_it_over() -> None:
    template = clean_template(_live("Deployment", "apps/v1", DEPLOYMENT_SPEC))
    policy = promote.promoted_policy(template, "member3", namespaced=True)
    assert policy["kind"] == "PropagationPolicy"
    assert policy["metadata"] == {"name": "web-deployment-promoted", "namespace": "shop"}
    assert policy["spec"] == {
        "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}],
        "placement": {"clusterAffinity": {"clusterNames": ["member3"]}},
        "conflictResolution": "Overwrite",
    }
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole"}
    cluster_wide = promote.promoted_policy(
        {**role, "metadata": {"name": "reader"}}, "member1", namespaced=False
    )
    assert cluster_wide["kind"] == "ClusterPropagationPolicy"
    assert cluster_wide["metadata"] == {"name": "reader-clusterrole-promoted"}


def test_policy_parses_as_an_archipel_policy() -> None:
    from archipel.client import api_kind_of_document, to_message

    template = clean_template(_live("Deployment", "apps/v1", DEPLOYMENT_SPEC))
    policy = promote.promoted_policy(template, "member3", namespaced=True)
    api_kind = api_kind_of_document(policy)
    assert api_kind is not None
    parsed = to_message(api_kind, policy)
    assert parsed.spec.conflict_resolution == "Overwrite"


def test_cli_parses_promote() -> None:
    args = build_parser().parse_args(
        [
            "promote",
            "deploy/web",
            "-n",
            "shop",
            "--cluster",
            "member3",
            "--cluster-kubeconfig",
            "/tmp/k",
            "--dry-run",
        ]
    )
    assert (args.command, args.target, args.namespace) == ("promote", "deploy/web", "shop")
    assert (args.cluster, args.cluster_kubeconfig, args.context, args.dry_run) == (
        "member3",
        "/tmp/k",
        None,
        True,
    )


class _FakeClient:
    """Records writes; the template write fails when ``fail_template`` is set."""

    def __init__(self, *, fail_template: bool) -> None:
        self.fail_template = fail_template
        self.log: list[str] = []

    def get_object(self, api_kind: Any, name: str, namespace: str = "") -> Any:
        raise ClientError("NOT_FOUND: not found", code=grpc.StatusCode.NOT_FOUND)

    def delete_object(self, api_kind: Any, name: str, namespace: str = "") -> bool:
        self.log.append(f"delete {namespace}/{name}")
        return True

    def apply_document(self, document: dict[str, Any]) -> tuple[str, str]:
        self.log.append(f"apply {document['kind']}")
        if document["kind"] == "Deployment" and self.fail_template:
            raise ClientError("INVALID_ARGUMENT: spec: broken")
        return f"{document['kind'].lower()}/{document['metadata']['name']}", "created"


@pytest.mark.parametrize("fail_template", [False, True])
def test_policy_and_template_are_one_step(
    fail_template: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    template = clean_template(_live("Deployment", "apps/v1", DEPLOYMENT_SPEC))
    policy = promote.promoted_policy(template, "member3", namespaced=True)
    fake = _FakeClient(fail_template=fail_template)
    if not fail_template:
        promote._create(fake, template, policy, "shop")  # type: ignore[arg-type]
        assert fake.log == ["apply PropagationPolicy", "apply Deployment"]
        assert capsys.readouterr().out.splitlines() == [
            "deployment/web created",
            "propagationpolicy/web-deployment-promoted created",
        ]
        return
    with pytest.raises(ClientError, match="removed again: INVALID_ARGUMENT: spec: broken"):
        promote._create(fake, template, policy, "shop")  # type: ignore[arg-type]
    # The policy written first is deleted again: nothing is left half-promoted.
    assert fake.log == [
        "apply PropagationPolicy",
        "apply Deployment",
        "delete shop/web-deployment-promoted",
    ]
