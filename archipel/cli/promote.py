"""``archipel promote``: bring a workload that already runs in a member under Archipel.

This is the one command that talks to a member cluster's own API server (with the
member's kubeconfig, as ``karmadactl promote`` needs in pull mode); every other command
talks only to the control plane. That, and the rules for turning a live object into a
resource template, are why it lives in a module of its own: main.py stays about the
control plane, and the cleaning rules can be tested without any server.

Why nothing restarts: the template is the live object minus what the member owns
(status, server metadata, member-allocated fields such as a Service's clusterIP or a
Job's generated selector). The policy created with it sends the template back to the
same cluster with ``conflictResolution: Overwrite``, so the agent server-side applies
every field with the value it already has; it adds only its label and annotation to
``metadata``, never to the pod template, so no new ReplicaSet is made and the pods keep
running (a Deployment's generation still goes up by one: the API server counts any
annotation change). Fields left out of the template are not
owned by the agent and so are not removed either: the member keeps its clusterIP.

The policy and the template are written as one step: the policy first (alone it selects
nothing, so it cannot move anything), then the template; if the template cannot be
written, the policy is deleted again so nothing is left half-promoted.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

import grpc
import yaml

from archipel.client import TEMPLATE_KINDS, Client, ClientError
from archipel.core import kinds
from archipel.core.matching import is_system_namespace

POLICY_API_VERSION = "policy.archipel.io/v1alpha1"
# Metadata the member's API server owns; a template must not carry it.
SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "ownerReferences",
    # A member's finalizers (pvc-protection, say) would hold the template forever.
    "finalizers",
)
MEMBER_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
)
JOB_UID_LABELS = ("controller-uid", "batch.kubernetes.io/controller-uid")


# -- what the user typed ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KindQuery:
    """A kind as typed: ``deploy``, ``Deployment``, ``Deployment.apps``, ``widgets.example.com``.

    ``name`` is lowercased; ``group`` is None when the kind was not group-qualified
    (``""`` would mean the core group, written ``Service.core`` or ``Service.``).
    """

    name: str
    group: str | None = None


def parse_kind(text: str) -> KindQuery:
    name, dot, group = text.strip().partition(".")
    if not name:
        raise ClientError(f"kind {text!r}: give a kind such as deployment, svc or Kind.group")
    if not dot:
        return KindQuery(name.lower())
    group = group.lower()
    return KindQuery(name.lower(), "" if group == "core" else group)


def parse_target(text: str) -> tuple[KindQuery, str]:
    """``KIND/NAME`` as kubectl takes it."""
    kind, slash, name = text.partition("/")
    if not slash or not kind or not name or "/" in name:
        raise ClientError(f"{text!r}: give KIND/NAME, for example deployment/web")
    return parse_kind(kind), name


def known_kind(query: KindQuery) -> tuple[str, str] | None:
    """(apiVersion, Kind) from the table of common kinds, or None to ask discovery."""
    found = TEMPLATE_KINDS.get(query.name)
    if found is None:
        return None
    group = found[0].rpartition("/")[0]
    if query.group is not None and query.group != group:
        return None
    return found


# -- the template and its policy ---------------------------------------------------------


def _drop_null_timestamps(value: Any) -> None:
    """Embedded templates carry ``metadata.creationTimestamp: null``: noise, not intent."""
    if isinstance(value, dict):
        metadata = value.get("metadata")
        if isinstance(metadata, dict) and metadata.get("creationTimestamp", "") is None:
            del metadata["creationTimestamp"]
        for item in value.values():
            _drop_null_timestamps(item)
    elif isinstance(value, list):
        for item in value:
            _drop_null_timestamps(item)


def _without_labels(labels: Any, drop: tuple[str, ...]) -> Any:
    if not isinstance(labels, dict):
        return labels
    return {k: v for k, v in labels.items() if k not in drop}


def clean_template(live: dict[str, Any]) -> dict[str, Any]:
    """The resource template for a live member object: what the member owns removed."""
    template = copy.deepcopy(live)
    template.pop("status", None)
    metadata = template.setdefault("metadata", {})
    for field in SERVER_METADATA:
        metadata.pop(field, None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict):
        for key in MEMBER_ANNOTATIONS:
            annotations.pop(key, None)
        if not annotations:
            del metadata["annotations"]
    _drop_null_timestamps(template.get("spec"))
    spec = template.get("spec")
    if not isinstance(spec, dict):
        return template
    kind = template.get("kind")
    if kind == "Service":
        # Allocated by the member; a headless Service's "None" is the user's choice.
        if spec.get("clusterIP") != "None":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
    elif kind == "Job" and not spec.get("manualSelector"):
        # The selector and these labels carry the member Job's uid.
        spec.pop("selector", None)
        pod_metadata = spec.get("template", {}).get("metadata")
        if isinstance(pod_metadata, dict) and "labels" in pod_metadata:
            pod_metadata["labels"] = _without_labels(pod_metadata["labels"], JOB_UID_LABELS)
        if "labels" in metadata:
            metadata["labels"] = _without_labels(metadata["labels"], JOB_UID_LABELS)
    return template


def policy_name(name: str, kind: str) -> str:
    return f"{name}-{kind.lower()}-promoted"


def promoted_policy(template: dict[str, Any], cluster: str, *, namespaced: bool) -> dict[str, Any]:
    """The policy that keeps the promoted object where it is, taking it over."""
    metadata = template["metadata"]
    policy_metadata: dict[str, Any] = {"name": policy_name(metadata["name"], template["kind"])}
    if namespaced:
        policy_metadata["namespace"] = metadata["namespace"]
    return {
        "apiVersion": POLICY_API_VERSION,
        "kind": "PropagationPolicy" if namespaced else "ClusterPropagationPolicy",
        "metadata": policy_metadata,
        "spec": {
            "resourceSelectors": [
                {
                    "apiVersion": template["apiVersion"],
                    "kind": template["kind"],
                    "name": metadata["name"],
                }
            ],
            "placement": {"clusterAffinity": {"clusterNames": [cluster]}},
            "conflictResolution": "Overwrite",
        },
    }


# -- the member cluster ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool


def _matches(query: KindQuery, entry: dict[str, Any]) -> bool:
    names = {
        str(entry.get("kind", "")).lower(),
        str(entry.get("name", "")).lower(),
        str(entry.get("singularName", "")).lower(),
        *(str(short).lower() for short in entry.get("shortNames") or []),
    }
    return query.name in names


class MemberApi:
    """Just enough of a member's API: discovery and GET, over the kubernetes client."""

    def __init__(self, cluster: str, kubeconfig: str, context: str | None) -> None:
        import kubernetes

        self.cluster = cluster
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except Exception as error:
            raise ClientError(f"--cluster-kubeconfig {kubeconfig}: {_one_line(error)}") from error
        configuration.retries = False
        self.api_client = kubernetes.client.ApiClient(configuration)

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def get_json(self, path: str) -> Any | None:
        """GET a path; its decoded JSON, or None when the member says 404."""
        try:
            method, url, headers, _, _ = self.api_client.param_serialize(
                "GET",
                path,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            response = self.api_client.call_api(
                method, url, header_params=headers, _request_timeout=30
            )
            data: bytes = response.read()  # type: ignore[no-untyped-call]
        except Exception as error:
            raise ClientError(
                f"cannot reach member {self.cluster}'s API server: {_one_line(error)}"
            ) from error
        if response.status == 404:
            return None
        if response.status != 200:
            raise ClientError(
                f"member {self.cluster}: GET {path}: {response.status} {_status_message(data)}"
            )
        return json.loads(data)

    def _group_versions(self, group: str | None) -> list[str]:
        """Group versions to search, core first, each group at its preferred version."""
        found = ["v1"] if group in (None, "") else []
        if group == "":
            return found
        groups = self.get_json("/apis") or {}
        for item in groups.get("groups", []):
            if group is None or item.get("name") == group:
                preferred = item.get("preferredVersion", {}).get("groupVersion")
                if preferred:
                    found.append(preferred)
        return found

    def _resources(self, group_version: str) -> list[dict[str, Any]]:
        path = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        try:
            listed = self.get_json(path) or {}
        except ClientError:
            if group_version == "v1":
                raise
            return []  # an aggregated API that is down is not the one asked for
        return [r for r in listed.get("resources", []) if "/" not in r.get("name", "")]

    def resolve(self, query: KindQuery) -> Resource:
        known = known_kind(query)
        if known is not None:
            api_version, kind = known
            for entry in self._resources(api_version):
                if entry.get("kind") == kind:
                    return Resource(api_version, kind, entry["name"], bool(entry["namespaced"]))
            raise ClientError(f"member {self.cluster} does not serve {kind} in {api_version}")
        for group_version in self._group_versions(query.group):
            for entry in self._resources(group_version):
                if _matches(query, entry):
                    return Resource(
                        group_version, entry["kind"], entry["name"], bool(entry["namespaced"])
                    )
        typed = query.name if query.group is None else f"{query.name}.{query.group}"
        raise ClientError(f"member {self.cluster} serves no kind named {typed!r}")

    def read(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        base = "/api/v1" if resource.api_version == "v1" else f"/apis/{resource.api_version}"
        quoted = urllib.parse.quote(name, safe="")
        if resource.namespaced:
            path = f"{base}/namespaces/{namespace}/{resource.plural}/{quoted}"
        else:
            path = f"{base}/{resource.plural}/{quoted}"
        found = self.get_json(path)
        return dict(found) if found is not None else None


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())[:300]


def _status_message(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message", ""))[:300]
    except (ValueError, AttributeError):
        return data[:200].decode(errors="replace")


# -- the command -------------------------------------------------------------------------


def _exists(lookup: Callable[[], Any]) -> bool:
    """Whether a Get finds its object; any answer but NOT_FOUND is the user's to see."""
    try:
        lookup()
    except ClientError as error:
        if error.code == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


def _where(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def run(args: argparse.Namespace, client: Client) -> None:
    query, name = parse_target(args.target)
    cluster = args.cluster
    if not _exists(lambda: client.get_object(kinds.MEMBER_CLUSTER, cluster)):
        raise ClientError(
            f"--cluster: {cluster!r} is not a registered member cluster (see 'archipel clusters')"
        )
    member = MemberApi(cluster, args.cluster_kubeconfig, args.context)
    try:
        resource = member.resolve(query)
        namespace = (args.namespace or "default") if resource.namespaced else ""
        _refuse_system(resource, namespace, name)
        _refuse_other_scope(resource, client)
        label = f"{resource.kind} {_where(namespace, name)}"
        if _exists(
            lambda: client.get_template(resource.api_version, resource.kind, name, namespace)
        ):
            raise ClientError(f"{label} is already a resource template in the control plane")
        live = member.read(resource, namespace, name)
    finally:
        member.close()
    if live is None:
        raise ClientError(f"{label} not found in member {cluster}")
    template = clean_template(live)
    policy = promoted_policy(template, cluster, namespaced=resource.namespaced)
    if args.dry_run:
        print(yaml.safe_dump_all([template, policy], sort_keys=False), end="")
        return
    _create(client, template, policy, namespace)


def _refuse_system(resource: Resource, namespace: str, name: str) -> None:
    if is_system_namespace(namespace):
        raise ClientError(
            f"{resource.kind} {namespace}/{name}: {namespace} is a system namespace; "
            "its objects are not promoted"
        )
    if resource.kind == "Namespace" and is_system_namespace(name):
        raise ClientError(f"Namespace {name} is a system namespace; it is not promoted")


def _refuse_other_scope(resource: Resource, client: Client) -> None:
    """The control plane must keep templates of the kind with the scope the member
    gives it: a kind it does not know (no CRD template defines it) it keeps as
    namespaced, so a cluster-scoped custom resource needs its CRD applied first."""
    scope = client.template_scope(resource.api_version, resource.kind)
    if scope.namespaced == resource.namespaced:
        return
    member = "namespaced" if resource.namespaced else "cluster-scoped"
    theirs = "namespaced" if scope.namespaced else "cluster-scoped"
    why = (
        f"CustomResourceDefinition {scope.defined_by} says so"
        if scope.defined_by
        else "no CustomResourceDefinition template defines the kind"
    )
    raise ClientError(
        f"{resource.kind} is {member} in the member but {theirs} in the control plane "
        f"({why}); apply the kind's CustomResourceDefinition as a template first"
    )


def _create(
    client: Client, template: dict[str, Any], policy: dict[str, Any], namespace: str
) -> None:
    policy_kind = kinds.API_KINDS[policy["kind"]]
    policy_namespace = policy["metadata"].get("namespace", "")
    policy_name_ = policy["metadata"]["name"]
    policy_label = f"{policy['kind'].lower()}/{policy_name_}"
    if _exists(lambda: client.get_object(policy_kind, policy_name_, policy_namespace)):
        raise ClientError(
            f"{policy_label} already exists in {namespace or 'the cluster scope'}; "
            "delete it first or propagate the object with your own policy"
        )
    # The policy first: alone it selects nothing, so nothing moves before the template.
    applied_policy, policy_outcome = client.apply_document(policy)
    try:
        template_name, template_outcome = client.apply_document(template)
    except ClientError as error:
        try:
            client.delete_object(policy_kind, policy_name_, policy_namespace)
        except ClientError as cleanup:
            raise ClientError(
                f"template not created ({error}); deleting {policy_label} failed too: {cleanup}"
            ) from error
        raise ClientError(f"template not created, {policy_label} removed again: {error}") from error
    print(f"{template_name} {template_outcome}")
    print(f"{applied_policy} {policy_outcome}")
