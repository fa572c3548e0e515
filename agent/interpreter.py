"""Reading applied objects: what status to report, how healthy they are, and drift.

Status reflection and health follow Karmada's built-in interpreters for the common
workload kinds (any other kind reports its whole ``status`` and counts as Healthy,
as Karmada does without an interpreter).

Drift is judged on the fields the agent applied only: right after an apply the agent
keeps the live object's values at exactly those paths (so the API server's own
normalisation, such as ``1000m`` becoming ``1``, is already included); an object
whose values at those paths later differ was changed by someone else.
"""

from __future__ import annotations

from typing import Any

Manifest = dict[str, Any]

_DEPLOYMENT_FIELDS = (
    "replicas",
    "readyReplicas",
    "availableReplicas",
    "updatedReplicas",
    "unavailableReplicas",
    "observedGeneration",
)


def reflect_status(manifest: Manifest) -> dict[str, Any] | None:
    status = manifest.get("status")
    if not isinstance(status, dict):
        return None
    kind = manifest.get("kind")
    if kind in ("Deployment", "StatefulSet", "ReplicaSet"):
        reflected = {k: status[k] for k in _DEPLOYMENT_FIELDS if k in status}
        # The member's generation lets the control plane tell a stale status.
        reflected["generation"] = manifest.get("metadata", {}).get("generation", 0)
        return reflected
    return dict(status)


def health(manifest: Manifest) -> str:
    kind = manifest.get("kind")
    status = manifest.get("status") or {}
    spec = manifest.get("spec") or {}
    generation = manifest.get("metadata", {}).get("generation", 0)
    if kind in ("Deployment", "StatefulSet", "ReplicaSet"):
        wanted = spec.get("replicas", 1)
        if status.get("observedGeneration", 0) < generation:
            return "Unhealthy"
        ready_field = "availableReplicas" if kind == "Deployment" else "readyReplicas"
        updated = status.get("updatedReplicas", wanted) if kind != "ReplicaSet" else wanted
        if updated == wanted and status.get(ready_field, 0) >= wanted:
            return "Healthy"
        return "Unhealthy"
    if kind == "DaemonSet":
        if status.get("observedGeneration", 0) < generation:
            return "Unhealthy"
        desired = status.get("desiredNumberScheduled", 0)
        return "Healthy" if status.get("numberAvailable", 0) >= desired else "Unhealthy"
    if kind == "Pod":
        return "Healthy" if status.get("phase") in ("Running", "Succeeded") else "Unhealthy"
    if kind == "Job":
        for condition in status.get("conditions", []):
            if condition.get("type") == "Failed" and condition.get("status") == "True":
                return "Unhealthy"
        return "Healthy"
    if kind == "PersistentVolumeClaim":
        return "Healthy" if status.get("phase") == "Bound" else "Unhealthy"
    if kind == "Service" and spec.get("type") == "LoadBalancer":
        return "Healthy" if status.get("loadBalancer", {}).get("ingress") else "Unhealthy"
    return "Healthy"


def project(desired: Any, live: Any) -> Any:
    """``live`` restricted to the paths present in ``desired``."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return live
        return {key: project(value, live.get(key)) for key, value in desired.items()}
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return live
        return [project(d, item) for d, item in zip(desired, live, strict=True)]
    return live


def applied_fields(manifest: Manifest) -> Manifest:
    """The parts of a manifest that drift is judged on (not status, not server fields)."""
    fields = {k: v for k, v in manifest.items() if k not in ("status",)}
    metadata = dict(fields.get("metadata", {}))
    for server_field in (
        "resourceVersion",
        "uid",
        "generation",
        "creationTimestamp",
        "managedFields",
    ):
        metadata.pop(server_field, None)
    fields["metadata"] = metadata
    return fields
