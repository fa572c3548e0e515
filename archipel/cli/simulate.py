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

from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from archipel import quantity
from archipel.client import ClientError, api_kind_by_name, api_kind_of_document, to_message
from archipel.core import matching, scheduling
from archipel.core.errors import Invalid
from archipel.core.workloads import replica_requests, template_replicas


def _cluster(entry: Any, where: str) -> scheduling.ClusterInfo:
    if isinstance(entry, dict) and entry.get("kind") == "MemberCluster":
        kind = api_kind_by_name("MemberCluster")
        assert kind is not None
        return scheduling.ClusterInfo.from_proto(to_message(kind, entry))
    if not isinstance(entry, dict) or not entry.get("name"):
        raise ClientError(f"{where}: each cluster needs a name")
    taints = tuple(
        scheduling.TaintInfo(t.get("key", ""), t.get("value", ""), t.get("effect", ""))
        for t in entry.get("taints", []) or []
    )
    api_resources = None
    if "apiResources" in entry:
        api_resources = frozenset(
            (text.rpartition("/")[0], text.rpartition("/")[2]) for text in entry["apiResources"]
        )
    free = None
    if "available" in entry:
        try:
            free = {
                r: quantity.parse(str(v), field=f"{where}.available.{r}")
                for r, v in entry["available"].items()
            }
        except quantity.QuantityError as error:
            raise ClientError(str(error)) from error
    zones = tuple(entry.get("zones", []) or ([entry["zone"]] if entry.get("zone") else []))
    replicas = entry.get("availableReplicas")
    return scheduling.ClusterInfo(
        name=entry["name"],
        labels=dict(entry.get("labels", {}) or {}),
        provider=entry.get("provider", ""),
        region=entry.get("region", ""),
        zones=zones,
        taints=taints,
        free=free,
        api_resources=api_resources,
        replicas_available=int(replicas) if replicas is not None else None,
    )


def load_clusters(path: Path) -> list[scheduling.ClusterInfo]:
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as error:
        raise ClientError(f"{path}: {error}") from error
    entries: list[Any] = []
    for document in documents:
        if isinstance(document, list):
            entries.extend(document)
        elif isinstance(document, dict) and "items" in document:
            entries.extend(document["items"])
        elif isinstance(document, dict) and "clusters" in document:
            entries.extend(document["clusters"])
        else:
            entries.append(document)
    return [_cluster(entry, f"{path}[{index}]") for index, entry in enumerate(entries)]


def simulate(
    clusters: list[scheduling.ClusterInfo],
    documents: list[dict[str, Any]],
    *,
    previous: dict[str, dict[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """One decision per template in ``documents``, by the policies among them."""
    namespaced, cluster_wide, templates = [], [], []
    for document in documents:
        api_kind = api_kind_of_document(document)
        if api_kind is None:
            templates.append(document)
        elif api_kind.name == "PropagationPolicy":
            message = to_message(api_kind, document)
            if not message.metadata.namespace:
                message.metadata.namespace = "default"
            namespaced.append(message)
        elif api_kind.name == "ClusterPropagationPolicy":
            cluster_wide.append(to_message(api_kind, document))
    results = []
    for template in templates:
        metadata = template.setdefault("metadata", {})
        metadata.setdefault("namespace", "default")
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
