"""``archipel schedule --simulate``: the scheduler's own code, offline, as a what-if tool.

Clusters come from a YAML file, either as MemberCluster documents (for example the
output of ``archipel get clusters -o yaml``, so a live fleet can be replayed) or as a
short list::

    - name: member1
      labels: {tier: gold}
      provider: aws
      region: eu
      zone: eu-1
      taints: [{key: dedicated, value: ml, effect: NoSchedule}]
      apiResources: [apps/v1/Deployment, v1/ConfigMap]
      available: {cpu: "8", memory: 32Gi, pods: "110"}   # free capacity, or:
      availableReplicas: 10

Templates and policies come from ``-f``; the policy is chosen with the control plane's
precedence rules and the decision is made by :func:`archipel.core.scheduling.schedule`.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from archipel import limits, manifests, quantity
from archipel.client import (
    ApiKind,
    ClientError,
    api_kind_by_name,
    api_kind_of_document,
    to_message,
)
from archipel.core import matching, scheduling, scopes, validation
from archipel.core.errors import Invalid
from archipel.core.workloads import replica_requests, template_replicas


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ClientError(f"{where}: must be a list of strings")
    return value


def _string(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ClientError(f"{where}.{key}: must be a string, not {limits.echo(value)}")
    return value


def _cluster(entry: Any, where: str) -> scheduling.ClusterInfo:
    """One entry of a clusters file; anything that is not what the format says is a
    one-line :class:`ClientError` naming the entry and the field."""
    if isinstance(entry, dict) and entry.get("kind") == "MemberCluster":
        kind = api_kind_by_name("MemberCluster")
        assert kind is not None
        try:
            return scheduling.ClusterInfo.from_proto(to_message(kind, entry))
        except ClientError as error:
            raise ClientError(f"{where}: {error}") from error
    if not isinstance(entry, dict) or not entry.get("name"):
        raise ClientError(f"{where}: each cluster needs a name")
    name = _string(entry, "name", where)
    labels = entry.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ClientError(f"{where}.labels: must map strings to strings")
    if not isinstance(entry.get("taints") or [], list):
        raise ClientError(f"{where}.taints: must be a list")
    taints = []
    for index, taint in enumerate(entry.get("taints") or []):
        at = f"{where}.taints[{index}]"
        if not isinstance(taint, dict):
            raise ClientError(f"{at}: must be a mapping (key, value, effect)")
        taints.append(
            scheduling.TaintInfo(
                _string(taint, "key", at), _string(taint, "value", at), _string(taint, "effect", at)
            )
        )
    api_resources = None
    if "apiResources" in entry:
        api_resources = frozenset(
            (text.rpartition("/")[0], text.rpartition("/")[2])
            for text in _strings(entry["apiResources"], f"{where}.apiResources")
        )
    free = None
    if "available" in entry:
        available = entry["available"]
        if not isinstance(available, dict):
            raise ClientError(f"{where}.available: must map resources to quantities")
        try:
            free = {
                str(r): quantity.parse(str(v), field=f"{where}.available.{r}")
                for r, v in available.items()
            }
        except quantity.QuantityError as error:
            raise ClientError(str(error)) from error
    if "zones" in entry and entry["zones"] is not None:
        zones = tuple(_strings(entry["zones"], f"{where}.zones"))
    else:
        zone = _string(entry, "zone", where)
        zones = (zone,) if zone else ()
    replicas = entry.get("availableReplicas")
    if replicas is not None and (
        isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0
    ):
        raise ClientError(
            f"{where}.availableReplicas: must be a whole number from 0, not {limits.echo(replicas)}"
        )
    return scheduling.ClusterInfo(
        name=name,
        labels=dict(labels),
        provider=_string(entry, "provider", where),
        region=_string(entry, "region", where),
        zones=zones,
        taints=tuple(taints),
        free=free,
        api_resources=api_resources,
        replicas_available=replicas,
    )


def load_clusters(path: Path) -> list[scheduling.ClusterInfo]:
    """The clusters of a clusters file, read as manifests are (archipel.manifests: the
    same bounds on size, depth and aliases), each entry checked."""
    try:
        documents = [d for _, d in manifests.load_documents(manifests.read_file(path), str(path))]
    except manifests.ManifestError as error:
        raise ClientError(str(error)) from error
    entries: list[Any] = []
    for document in documents:
        if isinstance(document, list):
            entries.extend(document)
        elif isinstance(document, dict) and ("items" in document or "clusters" in document):
            listed = document.get("items", document.get("clusters"))
            if not isinstance(listed, list):
                raise ClientError(
                    f"{path}: {'items' if 'items' in document else 'clusters'}: "
                    "must be a list of clusters"
                )
            entries.extend(listed)
        else:
            entries.append(document)
    return [_cluster(entry, f"{path}[{index}]") for index, entry in enumerate(entries)]


def load_previous(path: Path) -> dict[str, dict[str, int]]:
    """An earlier ``-o json`` result (or its list of results): each template's replicas
    by cluster. Read as manifests are; anything else is a one-line error."""
    try:
        documents = manifests.load_documents(manifests.read_file(path), str(path))
    except manifests.ManifestError as error:
        raise ClientError(str(error)) from error
    earlier: Any = documents[0][1] if documents else {}
    results = earlier.get("results", []) if isinstance(earlier, dict) else earlier
    if not isinstance(results, list):
        raise ClientError(f"{path}: results: must be a list of results")
    previous: dict[str, dict[str, int]] = {}
    for index, result in enumerate(results):
        where = f"{path}: results[{index}]"
        clusters = result.get("clusters") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(result.get("template"), str):
            raise ClientError(f"{where}.template: required, a string")
        if not isinstance(clusters, list):
            raise ClientError(f"{where}.clusters: must be a list")
        placed: dict[str, int] = {}
        for number, cluster in enumerate(clusters):
            name = cluster.get("name") if isinstance(cluster, dict) else None
            replicas = cluster.get("replicas") if isinstance(cluster, dict) else None
            if (
                not isinstance(name, str)
                or isinstance(replicas, bool)
                or not isinstance(replicas, int)
            ):
                raise ClientError(
                    f"{where}.clusters[{number}]: needs a name and a whole number of replicas"
                )
            placed[name] = replicas
        previous[result["template"]] = placed
    return previous


def _check_policy(kind: str, message: Any) -> None:
    namespaced = kind in ("PropagationPolicy", "OverridePolicy")
    validation.check_metadata(message.metadata, namespaced=namespaced)
    namespace = message.metadata.namespace if namespaced else ""
    if kind.endswith("PropagationPolicy"):
        validation.check_propagation_spec(message.spec, policy_namespace=namespace)
    elif kind.endswith("OverridePolicy"):
        validation.check_override_spec(message.spec, policy_namespace=namespace)


def check_document(
    origin: str,
    document: dict[str, Any],
    *,
    scope_of: Callable[[str, str], scopes.Scope] = scopes.builtin_scope,
) -> tuple[ApiKind | None, Any]:
    """A document checked as the control plane admits it, offline: (None, the template)
    or (its kind, the message), a namespaced policy's namespace defaulted. Whatever the
    control plane would refuse is a one-line :class:`ClientError` naming ``origin`` and
    the field, before the scheduler or the overrides ever see it."""
    try:
        api_kind = api_kind_of_document(document)
        if api_kind is None:
            return None, validation.check_template(document, scope_of=scope_of)
        message = to_message(api_kind, document)
        if api_kind.namespaced and not message.metadata.namespace:
            message.metadata.namespace = "default"
        validation.check_message(message, api_kind.name)
        _check_policy(api_kind.name, message)
        return api_kind, message
    except (ClientError, Invalid) as error:
        raise ClientError(f"{origin}: {error}") from error


def simulate(
    clusters: list[scheduling.ClusterInfo],
    documents: list[tuple[str, dict[str, Any]]],
    *,
    previous: dict[str, dict[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """One decision per template in ``documents`` ((origin, document) pairs), by the
    policies among them."""
    namespaced, cluster_wide, templates = [], [], []
    for origin, document in documents:
        api_kind, checked = check_document(origin, document)
        if api_kind is None:
            templates.append(checked)
        elif api_kind.name == "PropagationPolicy":
            namespaced.append(checked)
        elif api_kind.name == "ClusterPropagationPolicy":
            cluster_wide.append(checked)
    results = []
    for template in templates:
        metadata = template["metadata"]
        key = f"{template['kind'].lower()}/{metadata.get('name')}"
        chosen = matching.choose(template, namespaced, cluster_wide)
        if chosen is None:
            results.append(
                {
                    "template": key,
                    "scheduled": False,
                    "reason": "NoPolicy",
                    "message": "no policy matches this template",
                    "clusters": [],
                }
            )
            continue
        try:
            requests = {
                r: Fraction(quantity.parse(v)) for r, v in replica_requests(template).items()
            }
        except (Invalid, quantity.QuantityError) as error:
            raise ClientError(f"{key}: {error}") from error
        decision = scheduling.schedule(
            chosen.policy.spec.placement,
            replicas=template_replicas(template),
            clusters=clusters,
            current=(previous or {}).get(key, {}),
            requests=requests,
            resource=(template["apiVersion"], template["kind"]),
        )
        results.append(
            {
                "template": key,
                "policy": f"{chosen.kind}/{chosen.policy.metadata.name}",
                "scheduled": decision.scheduled,
                "reason": decision.reason,
                "message": decision.message,
                "clusters": [{"name": t.name, "replicas": t.replicas} for t in decision.targets],
                "rejected": dict(decision.rejected),
            }
        )
    return results
