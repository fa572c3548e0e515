"""Event filters: whether a change seen by an informer can matter to a controller.

Informer handlers receive ``(key, old, new)``, with None for a side that does not
exist (created, deleted). Most changes concern only some controllers: status moves all
the time and matters to none of those that act on specs. These predicates name the
usual questions once, so handlers read as what they care about.
"""

from __future__ import annotations

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


def template_changed(old: Manifest | None, new: Manifest | None) -> bool:
    """A template change other than its status (which the control plane aggregates into
    it): the spec, labels, annotations, or its deletion."""
    if old is None or new is None:
        return True
    strip = kinds.RESOURCE_TEMPLATE.spec_fingerprint
    old_meta, new_meta = old.get("metadata", {}), new.get("metadata", {})
    return (
        strip(old) != strip(new)
        or old_meta.get("labels") != new_meta.get("labels")
        or old_meta.get("annotations") != new_meta.get("annotations")
        or old_meta.get("deletionTimestamp") != new_meta.get("deletionTimestamp")
    )


def is_deleting(obj: _Object) -> bool:
    return bool(obj.metadata.HasField("deletion_timestamp"))
