"""What the store knows about each kind: its key layout, codec and metadata.

Objects of the API kinds are their protobuf messages, end to end. Resource templates
are arbitrary Kubernetes objects, so their one representation inside the control
plane is the manifest as a plain dict (:data:`Manifest`), stored as JSON; it becomes a
``google.protobuf.Struct`` only at the gRPC edge. :class:`MetaView` hides the
difference so the store handles uid, resourceVersion, generation, finalizers and
deletion the same way for both.

Keys are ``<plural>/<namespace or _>/<name>`` below the configured prefix; templates
add their API group and kind: ``templates/<group or core>/<Kind>/<namespace or _>/<name>``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, MutableMapping
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf import message as pb_message

from archipel.core import names
from archipel.core.errors import Invalid
from archipel.v1alpha1 import (
    apps_pb2,
    cluster_pb2,
    interpreter_pb2,
    meta_pb2,
    override_pb2,
    policy_pb2,
    work_pb2,
)

Manifest = dict[str, Any]
CLUSTER_SCOPE = "_"
T = TypeVar("T")
P = TypeVar("P", bound=pb_message.Message)


class MetaView(Protocol):
    """Uniform access to an object's metadata, whatever its representation."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    generation: int

    @property
    def labels(self) -> MutableMapping[str, str]: ...
    @property
    def annotations(self) -> MutableMapping[str, str]: ...
    @property
    def finalizers(self) -> list[str]: ...
    def set_finalizers(self, finalizers: list[str]) -> None: ...
    @property
    def deletion_timestamp(self) -> datetime.datetime | None: ...
    def set_deletion_timestamp(self, when: datetime.datetime) -> None: ...
    @property
    def creation_timestamp(self) -> datetime.datetime | None: ...
    def set_creation_timestamp(self, when: datetime.datetime) -> None: ...


class _ProtoMeta:
    """MetaView over an ``ObjectMeta`` message (changes write through)."""

    def __init__(self, meta: meta_pb2.ObjectMeta) -> None:
        self._m = meta

    name = property(lambda self: self._m.name, lambda self, v: setattr(self._m, "name", v))
    namespace = property(
        lambda self: self._m.namespace, lambda self, v: setattr(self._m, "namespace", v)
    )
    uid = property(lambda self: self._m.uid, lambda self, v: setattr(self._m, "uid", v))
    resource_version = property(
        lambda self: self._m.resource_version,
        lambda self, v: setattr(self._m, "resource_version", v),
    )
    generation = property(
        lambda self: self._m.generation, lambda self, v: setattr(self._m, "generation", v)
    )

    @property
    def labels(self) -> MutableMapping[str, str]:
        return self._m.labels

    @property
    def annotations(self) -> MutableMapping[str, str]:
        return self._m.annotations

    @property
    def finalizers(self) -> list[str]:
        return list(self._m.finalizers)

    def set_finalizers(self, finalizers: list[str]) -> None:
        del self._m.finalizers[:]
        self._m.finalizers.extend(finalizers)

    @property
    def deletion_timestamp(self) -> datetime.datetime | None:
        if not self._m.HasField("deletion_timestamp"):
            return None
        return self._m.deletion_timestamp.ToDatetime(tzinfo=datetime.UTC)

    def set_deletion_timestamp(self, when: datetime.datetime) -> None:
        self._m.deletion_timestamp.FromDatetime(when)

    @property
    def creation_timestamp(self) -> datetime.datetime | None:
        if not self._m.HasField("creation_timestamp"):
            return None
        return self._m.creation_timestamp.ToDatetime(tzinfo=datetime.UTC)

    def set_creation_timestamp(self, when: datetime.datetime) -> None:
        self._m.creation_timestamp.FromDatetime(when)


def format_time(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


class _DictMeta:
    """MetaView over a manifest's ``metadata`` dict, in Kubernetes' JSON shape."""

    def __init__(self, manifest: Manifest) -> None:
        self._m: dict[str, Any] = manifest.setdefault("metadata", {})

    def _get(self, key: str, default: Any) -> Any:
        return self._m.get(key, default)

    def _set(self, key: str, value: Any) -> None:
        if value in ("", 0, None):
            self._m.pop(key, None)
        else:
            self._m[key] = value

    name = property(lambda self: self._get("name", ""), lambda self, v: self._set("name", v))
    namespace = property(
        lambda self: self._get("namespace", ""), lambda self, v: self._set("namespace", v)
    )
    uid = property(lambda self: self._get("uid", ""), lambda self, v: self._set("uid", v))
    resource_version = property(
        lambda self: self._get("resourceVersion", ""),
        lambda self, v: self._set("resourceVersion", v),
    )
    generation = property(
        lambda self: int(self._get("generation", 0)), lambda self, v: self._set("generation", v)
    )

    @property
    def labels(self) -> MutableMapping[str, str]:
        labels: MutableMapping[str, str] = self._m.setdefault("labels", {})
        return labels

    @property
    def annotations(self) -> MutableMapping[str, str]:
        annotations: MutableMapping[str, str] = self._m.setdefault("annotations", {})
        return annotations

    @property
    def finalizers(self) -> list[str]:
        return list(self._m.get("finalizers", []))

    def set_finalizers(self, finalizers: list[str]) -> None:
        self._set("finalizers", list(finalizers) or None)

    @property
    def deletion_timestamp(self) -> datetime.datetime | None:
        value = self._m.get("deletionTimestamp")
        return parse_time(value) if value else None

    def set_deletion_timestamp(self, when: datetime.datetime) -> None:
        self._m["deletionTimestamp"] = format_time(when)

    @property
    def creation_timestamp(self) -> datetime.datetime | None:
        value = self._m.get("creationTimestamp")
        return parse_time(value) if value else None

    def set_creation_timestamp(self, when: datetime.datetime) -> None:
        self._m["creationTimestamp"] = format_time(when)


class Kind(Generic[T]):
    """One kind of stored object."""

    def __init__(
        self,
        *,
        name: str,
        plural: str,
        namespaced: bool,
        api_version: str,
        accepted_api_versions: tuple[str, ...],
        new: Callable[[], T],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        meta: Callable[[T], MetaView],
        spec_fingerprint: Callable[[T], bytes],
        copy: Callable[[T], T],
        short_names: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.plural = plural
        self.namespaced = namespaced
        self.api_version = api_version
        self.accepted_api_versions = accepted_api_versions
        self.new = new
        self.encode = encode
        self.decode = decode
        self.meta = meta
        self.spec_fingerprint = spec_fingerprint
        self.copy = copy
        self.short_names = short_names

    @property
    def service(self) -> str:
        """The gRPC service that serves this kind (``proto/``: ``<Kind>Service``)."""
        return f"{self.name}Service"

    @property
    def aliases(self) -> tuple[str, ...]:
        """What people may call it on the command line, as kubectl allows."""
        return (self.name.lower(), self.plural, *self.short_names)

    def __repr__(self) -> str:
        return f"Kind({self.name})"

    def key(self, namespace: str, name: str) -> str:
        return f"{self.plural}/{namespace or CLUSTER_SCOPE}/{name}"

    def key_of(self, obj: T) -> str:
        meta = self.meta(obj)
        return self.key(meta.namespace, meta.name)

    def prefix(self, namespace: str = "") -> str:
        if namespace:
            return f"{self.plural}/{namespace}/"
        return f"{self.plural}/"


def _proto_kind(
    message: type[P],
    *,
    name: str,
    plural: str,
    namespaced: bool,
    group: str,
    karmada_group: str | None = None,
    short_names: tuple[str, ...] = (),
) -> Kind[P]:
    def copy(obj: P) -> P:
        clone = message()
        clone.CopyFrom(obj)
        return clone

    def decode(raw: bytes) -> P:
        obj = message()
        obj.ParseFromString(raw)
        return obj

    def fingerprint(obj: P) -> bytes:
        spec: pb_message.Message = obj.spec  # type: ignore[attr-defined]
        return spec.SerializeToString(deterministic=True)

    accepted: tuple[str, ...] = (f"{group}/v1alpha1",)
    if karmada_group:
        accepted += (f"{karmada_group}/v1alpha1",)
    return Kind(
        name=name,
        plural=plural,
        namespaced=namespaced,
        api_version=f"{group}/v1alpha1",
        accepted_api_versions=accepted,
        new=message,
        encode=lambda obj: obj.SerializeToString(deterministic=True),
        decode=decode,
        meta=lambda obj: _ProtoMeta(obj.metadata),  # type: ignore[attr-defined]
        spec_fingerprint=fingerprint,
        copy=copy,
        short_names=short_names,
    )


MEMBER_CLUSTER = _proto_kind(
    cluster_pb2.MemberCluster,
    name="MemberCluster",
    plural="memberclusters",
    namespaced=False,
    group="cluster.archipel.io",
    karmada_group="cluster.karmada.io",
    short_names=("cluster", "clusters", "mc"),
)
PROPAGATION_POLICY = _proto_kind(
    policy_pb2.PropagationPolicy,
    name="PropagationPolicy",
    plural="propagationpolicies",
    namespaced=True,
    group="policy.archipel.io",
    karmada_group="policy.karmada.io",
    short_names=("pp",),
)
CLUSTER_PROPAGATION_POLICY = _proto_kind(
    policy_pb2.ClusterPropagationPolicy,
    name="ClusterPropagationPolicy",
    plural="clusterpropagationpolicies",
    namespaced=False,
    group="policy.archipel.io",
    karmada_group="policy.karmada.io",
    short_names=("cpp",),
)
OVERRIDE_POLICY = _proto_kind(
    override_pb2.OverridePolicy,
    name="OverridePolicy",
    plural="overridepolicies",
    namespaced=True,
    group="policy.archipel.io",
    karmada_group="policy.karmada.io",
    short_names=("op",),
)
CLUSTER_OVERRIDE_POLICY = _proto_kind(
    override_pb2.ClusterOverridePolicy,
    name="ClusterOverridePolicy",
    plural="clusteroverridepolicies",
    namespaced=False,
    group="policy.archipel.io",
    karmada_group="policy.karmada.io",
    short_names=("cop",),
)
RESOURCE_INTERPRETER_CUSTOMIZATION = _proto_kind(
    interpreter_pb2.ResourceInterpreterCustomization,
    name="ResourceInterpreterCustomization",
    plural="resourceinterpretercustomizations",
    namespaced=False,
    group="config.archipel.io",
    karmada_group="config.karmada.io",
    short_names=("ric", "customization", "customizations"),
)
PROPAGATION_BINDING = _proto_kind(
    work_pb2.PropagationBinding,
    name="PropagationBinding",
    plural="propagationbindings",
    namespaced=True,
    group="work.archipel.io",
    short_names=("binding", "bindings", "pb"),
)
PROPAGATION_WORK = _proto_kind(
    work_pb2.PropagationWork,
    name="PropagationWork",
    plural="propagationworks",
    namespaced=True,
    group="work.archipel.io",
    short_names=("work", "works", "pw"),
)
WORKLOAD_REBALANCER = _proto_kind(
    apps_pb2.WorkloadRebalancer,
    name="WorkloadRebalancer",
    plural="workloadrebalancers",
    namespaced=False,
    group="apps.archipel.io",
    karmada_group="apps.karmada.io",
    short_names=("rebalancer", "rebalancers", "wr"),
)
CLUSTER_TAINT_POLICY = _proto_kind(
    policy_pb2.ClusterTaintPolicy,
    name="ClusterTaintPolicy",
    plural="clustertaintpolicies",
    namespaced=False,
    group="policy.archipel.io",
    karmada_group="policy.karmada.io",
    short_names=("ctp", "taintpolicy", "taintpolicies"),
)


# -- resource templates ------------------------------------------------------------


# Metadata the control plane owns: callers' values are ignored, members never see them.
SERVER_METADATA_FIELDS = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
    "selfLink",
)


def split_api_version(api_version: str) -> tuple[str, str]:
    """``apps/v1`` -> (``apps``, ``v1``); ``v1`` -> (``""``, ``v1``)."""
    group, _, version = api_version.rpartition("/")
    return group, version


def template_type_prefix(api_version: str, kind: str) -> str:
    group, _ = split_api_version(api_version)
    return template_group_kind_prefix(group, kind)


def template_group_kind_prefix(group: str, kind: str) -> str:
    """Where the templates of a kind are, in every version of its group."""
    return f"templates/{group or 'core'}/{kind}/"


def template_key(api_version: str, kind: str, namespace: str, name: str) -> str:
    return f"{template_type_prefix(api_version, kind)}{namespace or CLUSTER_SCOPE}/{name}"


class TemplateKind(Kind[Manifest]):
    """Resource templates: any apiVersion and kind, one key space."""

    def key_of(self, obj: Manifest) -> str:
        meta = obj.get("metadata", {})
        return template_key(
            obj.get("apiVersion", ""),
            obj.get("kind", ""),
            meta.get("namespace", ""),
            meta.get("name", ""),
        )

    def key(self, namespace: str, name: str) -> str:
        raise TypeError("template keys need apiVersion and kind: use template_key()")

    def prefix(self, namespace: str = "") -> str:
        return "templates/"


def _template_fingerprint(manifest: Manifest) -> bytes:
    body = {k: v for k, v in manifest.items() if k not in ("metadata", "status")}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _decode_template(raw: bytes) -> Manifest:
    """A stored template, refused (ValueError) unless it has the shape every reader of
    templates relies on: handlers and controllers may then read it without checks."""
    manifest = json.loads(raw)
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    for field in ("apiVersion", "kind"):
        if not isinstance(manifest.get(field), str):
            raise ValueError(f"{field} is not a string")
    metadata = manifest.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise ValueError("metadata.name is not a string")
    if not isinstance(metadata.get("namespace", ""), str):
        raise ValueError("metadata.namespace is not a string")
    for field in ("labels", "annotations"):
        values = metadata.get(field, {})
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()
        ):
            raise ValueError(f"metadata.{field} does not map strings to strings")
    return manifest


RESOURCE_TEMPLATE = TemplateKind(
    name="ResourceTemplate",
    plural="templates",
    namespaced=True,
    api_version="",
    accepted_api_versions=(),
    new=dict,
    encode=lambda manifest: json.dumps(manifest, separators=(",", ":")).encode(),
    decode=_decode_template,
    meta=_DictMeta,
    spec_fingerprint=_template_fingerprint,
    copy=lambda manifest: json.loads(json.dumps(manifest)),
)

API_KINDS: dict[str, Kind[Any]] = {
    k.name: k
    for k in (
        MEMBER_CLUSTER,
        PROPAGATION_POLICY,
        CLUSTER_PROPAGATION_POLICY,
        OVERRIDE_POLICY,
        CLUSTER_OVERRIDE_POLICY,
        RESOURCE_INTERPRETER_CUSTOMIZATION,
        PROPAGATION_BINDING,
        PROPAGATION_WORK,
        WORKLOAD_REBALANCER,
        CLUSTER_TAINT_POLICY,
    )
}


def check_api_version(kind: Kind[Any], api_version: str) -> None:
    if api_version and api_version not in kind.accepted_api_versions:
        raise Invalid(
            "apiVersion",
            f"{kind.name} must be {' or '.join(kind.accepted_api_versions)}, not {api_version!r}",
        )


def execution_namespace(cluster: str) -> str:
    """Where a cluster's works live, as Karmada's karmada-es-<cluster>."""
    return f"{names.EXECUTION_NAMESPACE_PREFIX}{cluster}"


def cluster_of_execution_namespace(namespace: str) -> str | None:
    prefix = names.EXECUTION_NAMESPACE_PREFIX
    return namespace[len(prefix) :] if namespace.startswith(prefix) else None
