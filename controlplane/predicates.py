"""Event filters: whether a change seen by an informer can matter to a controller.

Informer handlers receive ``(key, old, new)``, with None for a side that does not
exist (created, deleted). Most changes concern only some controllers: status moves all
the time and matters to none of those that act on specs. These predicates name the
usual questions once, so handlers read as what they care about.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from archipel.core import kinds
from archipel.core.kinds import Manifest


class _Object(Protocol):
    @property
    def metadata(self) -> Any: ...


def appeared_or_vanished(old: object | None, new: object | None) -> bool:
    return old is None or new is None


def generation_changed(old: _Object | None, new: _Object | None) -> bool:
    """Created, deleted, or its spec changed (the store raises generation only then)."""
    return old is None or new is None or old.metadata.generation != new.metadata.generation


def lifecycle_changed(old: _Object | None, new: _Object | None) -> bool:
    """Created or deleted, or its deletion began, or its finalizers changed."""
    return (
        old is None
        or new is None
        or old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
        or list(old.metadata.finalizers) != list(new.metadata.finalizers)
    )


def spec_changed(old: Any, new: Any) -> bool:
    """Created or deleted, or its spec differs (for objects whose spec others edit)."""
    return old is None or new is None or bool(old.spec != new.spec)


def status_changed(old: Any, new: Any) -> bool:
    """Created or deleted, or its status differs."""
    return old is None or new is None or bool(old.status != new.status)


def labels_changed(old: _Object | None, new: _Object | None) -> bool:
    return old is None or new is None or old.metadata.labels != new.metadata.labels


def _what_policies_read(manifest: Manifest) -> tuple[bytes, Any, Any]:
    """What a change of a template is judged by: its spec (everything but metadata and
    status), labels and annotations. Aggregated status written back into it is not a
    change."""
    metadata = manifest.get("metadata", {})
    return (
        kinds.RESOURCE_TEMPLATE.spec_fingerprint(manifest),
        metadata.get("labels") or {},
        metadata.get("annotations") or {},
    )


def template_changed(old: Manifest | None, new: Manifest | None) -> bool:
    """A template change other than its status: the spec, labels, annotations, or its
    deletion."""
    if old is None or new is None:
        return True
    return _what_policies_read(old) != _what_policies_read(new) or old.get("metadata", {}).get(
        "deletionTimestamp"
    ) != new.get("metadata", {}).get("deletionTimestamp")


def template_digest(manifest: Manifest) -> str:
    """A digest of what :func:`template_changed` compares (deletion aside): recorded on
    a binding, it tells later whether the template changed since."""
    body, labels, annotations = _what_policies_read(manifest)
    digest = hashlib.sha256(body)
    digest.update(json.dumps([labels, annotations], sort_keys=True).encode())
    return digest.hexdigest()[:32]


def is_deleting(obj: _Object) -> bool:
    return bool(obj.metadata.HasField("deletion_timestamp"))
