"""The agent's manifests for one member, as ``archipel join --print-manifests`` prints
them: what the Helm chart (charts/archipel) renders with ``agent.enabled``, with the
cluster's credential filled in, for people who apply YAML rather than charts.

A test renders the chart with the same values and checks that both say the same, so
this is a copy of the chart's output that cannot drift from it.
"""

from __future__ import annotations

from typing import Any

from archipel.version import VERSION

RELEASE = "archipel"
NAME = f"{RELEASE}-agent"


def labels() -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "archipel",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/version": VERSION,
        "app.kubernetes.io/component": "agent",
    }


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels()}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _subject(namespace: str) -> list[dict[str, str]]:
    return [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]


def agent_manifests(
    *,
    server: str,
    token: str,
    namespace: str = "archipel-system",
    image: str = "",
    ca: bytes | None = None,
) -> list[dict[str, Any]]:
    """The Namespace, then the chart's agent objects (cluster-admin RBAC, as Karmada's
    agent has; install the chart with ``agent.rbac=scoped`` for less). ``ca`` is the
    control plane's CA bundle, in a ConfigMap the agent reads (the chart's ``agent.ca``)."""
    image = image or f"archipel:{VERSION}"
    ca_objects: list[dict[str, Any]] = []
    ca_args: list[str] = []
    ca_mounts: list[dict[str, Any]] = []
    ca_volumes: list[dict[str, Any]] = []
    if ca is not None:
        ca_objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(f"{NAME}-ca", namespace),
                "data": {"ca.crt": ca.decode()},
            }
        )
        ca_args.append("--tls-ca-file=/etc/archipel/ca/ca.crt")
        ca_mounts.append({"name": "ca", "mountPath": "/etc/archipel/ca", "readOnly": True})
        ca_volumes.append({"name": "ca", "configMap": {"name": f"{NAME}-ca"}})
    selector = {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "agent"}
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, namespace)},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(f"{NAME}-credential", namespace),
            "type": "Opaque",
            "stringData": {"token": token},
        },
        *ca_objects,
        {
            "apiVersion": rbac,
            "kind": "ClusterRole",
            "metadata": _meta(f"{NAME}-base"),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["nodes", "pods"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["namespaces"],
                    "verbs": ["get", "list", "watch", "create"],
                },
                # The agent watches these to know when the APIs served change.
                {
                    "apiGroups": ["apiextensions.k8s.io"],
                    "resources": ["customresourcedefinitions"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["apiregistration.k8s.io"],
                    "resources": ["apiservices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": _meta(f"{NAME}-base"),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{NAME}-base",
            },
            "subjects": _subject(namespace),
        },
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": _meta(f"{NAME}-works"),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": _subject(namespace),
        },
        {
            "apiVersion": rbac,
            "kind": "Role",
            "metadata": _meta(NAME, namespace),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                },
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch"],
                },
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"]},
            ],
        },
        {
            "apiVersion": rbac,
            "kind": "RoleBinding",
            "metadata": _meta(NAME, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": _subject(namespace),
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": _meta(NAME, namespace),
            "spec": {
                "selector": {"matchLabels": selector},
                "updateStrategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": labels()},
                    "spec": {
                        "serviceAccountName": NAME,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "runAsGroup": 10001,
                            "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "agent",
                                "image": image,
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["archipel-agent"],
                                "args": [
                                    f"--server={server}",
                                    "--token-file=/etc/archipel/credential/token",
                                    *ca_args,
                                    # One agent per node, one of them active.
                                    "--leader-elect=true",
                                    "--log-level=INFO",
                                ],
                                "env": [
                                    {
                                        "name": "ARCHIPEL_NAMESPACE",
                                        "valueFrom": {
                                            "fieldRef": {"fieldPath": "metadata.namespace"}
                                        },
                                    },
                                    {
                                        "name": "ARCHIPEL_POD_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                    },
                                ],
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "128Mi"},
                                    "limits": {"memory": "512Mi"},
                                },
                                "volumeMounts": [
                                    {
                                        "name": "credential",
                                        "mountPath": "/etc/archipel/credential",
                                        "readOnly": True,
                                    },
                                    *ca_mounts,
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "credential", "secret": {"secretName": f"{NAME}-credential"}},
                            *ca_volumes,
                        ],
                    },
                },
            },
        },
    ]
