"""Drift: whether someone else changed an object the agent applied.

(Status reflection, health and retention are the resource interpreter's, shared with
the control plane: :mod:`archipel.interpreter`.)

Drift is judged on the fields the agent applied only: right after an apply the agent
keeps the live object's values at exactly those paths (so the API server's own
normalisation, such as ``1000m`` becoming ``1``, is already included); an object
whose values at those paths later differ was changed by someone else.
"""

from __future__ import annotations

from typing import Any

Manifest = dict[str, Any]


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
