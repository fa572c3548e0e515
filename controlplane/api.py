"""The gRPC servicers: validate, convert at the edge, delegate to the store.

Every kind gets the same five calls (Get, List, Watch, Apply, Delete) from one
implementation, :class:`KindService`; resource templates, addressed by apiVersion and
kind as well, get :class:`TemplateService`. Errors from below are
:mod:`controlplane.errors`, turned into gRPC status codes in exactly one place,
:func:`_guard` / :func:`_guard_stream`.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import message as pb_message

from archipel import interpreter, structs
from archipel.v1alpha1 import (
    cluster_pb2,
    interpreter_pb2,
    override_pb2,
    policy_pb2,
    service_pb2,
    work_pb2,
)
from controlplane import kinds, selectors, validation
from controlplane.controllers.cluster import ClusterController
from controlplane.errors import ArchipelError, Conflict, Expired, FailedPrecondition, Invalid
from controlplane.etcd import Compacted
from controlplane.kinds import Kind, Manifest
from controlplane.store import Store

T = TypeVar("T", bound=pb_message.Message)
R = TypeVar("R")


def _guard(
    method: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await method(self, request, context)
        except ArchipelError as error:
            await context.abort(error.code, str(error))
            raise  # unreachable: abort raises

    return wrapper


def _guard_stream(
    method: Callable[..., AsyncIterator[R]],
) -> Callable[..., AsyncIterator[R]]:
    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[R]:
        try:
            async for item in method(self, request, context):
                yield item
        except ArchipelError as error:
            await context.abort(error.code, str(error))

    return wrapper


def _label_filter(text: str) -> selectors.Selector:
    return selectors.parse(text, field="labelSelector")


async def watch_events(
    store: Store,
    kind: Kind[Any],
    prefix: str,
    *,
    resource_version: str,
    matches: Callable[[Any], bool],
) -> AsyncIterator[tuple[str, Any, str]]:
    """(type, object, resourceVersion) for a Watch call, Kubernetes-style."""
    if resource_version:
        try:
            start = int(resource_version) + 1
        except ValueError as error:
            raise Invalid(
                "resourceVersion", f"{resource_version!r} is not a resourceVersion"
            ) from error
    else:
        items, _, revision = await store.list(kind, prefix)
        for obj in items:
            if matches(obj):
                yield "ADDED", obj, kind.meta(obj).resource_version
        start = revision + 1
    try:
        async for events in store.etcd.watch(prefix, start_revision=start, previous=True):
            for event in events:
                obj = kind.decode(event.value)
                kind.meta(obj).resource_version = str(event.mod_revision)
                if not matches(obj):
                    continue
                if event.type == "DELETE":
                    yield "DELETED", obj, str(event.mod_revision)
                else:
                    yield ("ADDED" if event.created else "MODIFIED"), obj, str(event.mod_revision)
    except Compacted as error:
        raise Expired(
            f"resourceVersion {resource_version} is too old ({error}); list again"
        ) from error


class KindService(Generic[T]):
    """Get, List, Watch, Apply and Delete for one protobuf kind."""

    def __init__(
        self,
        store: Store,
        kind: Kind[T],
        *,
        list_type: type[pb_message.Message],
        event_type: type[pb_message.Message],
        validate: Callable[[T], None],
    ) -> None:
        self.store = store
        self.kind = kind
        self.list_type = list_type
        self.event_type = event_type
        self.validate = validate

    def _key(self, namespace: str, name: str) -> str:
        validation.check_name(name, "name")
        if self.kind.namespaced:
            validation.check_dns_label(namespace, "namespace")
        elif namespace:
            raise Invalid("namespace", f"must be empty: {self.kind.name} is cluster-scoped")
        return self.kind.key(namespace, name)

    @_guard
    async def Get(
        self, request: service_pb2.GetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> T:
        return await self.store.must_get(self.kind, self._key(request.namespace, request.name))

    @_guard
    async def List(
        self, request: service_pb2.ListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb_message.Message:
        if request.limit < 0:
            raise Invalid("limit", "must not be negative")
        if request.namespace and not self.kind.namespaced:
            raise Invalid("namespace", f"must be empty: {self.kind.name} is cluster-scoped")
        selector = _label_filter(request.label_selector)
        items, token, revision = await self.store.list(
            self.kind,
            self.kind.prefix(request.namespace),
            limit=request.limit,
            continue_token=request.__getattribute__("continue"),
        )
        response = self.list_type()
        response.items.extend(  # type: ignore[attr-defined]
            i for i in items if selector.matches(self.kind.meta(i).labels)
        )
        setattr(response, "continue", token)
        response.resource_version = str(revision)  # type: ignore[attr-defined]
        return response

    @_guard_stream
    async def Watch(
        self, request: service_pb2.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb_message.Message]:
        selector = _label_filter(request.label_selector)
        async for type_, obj, revision in watch_events(
            self.store,
            self.kind,
            self.kind.prefix(request.namespace),
            resource_version=request.resource_version,
            matches=lambda o: selector.matches(self.kind.meta(o).labels),
        ):
            yield self.event_type(type=type_, object=obj, resource_version=revision)

    @_guard
    async def Apply(self, request: T, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        obj = self.kind.copy(request)
        kinds.check_api_version(self.kind, obj.api_version)  # type: ignore[attr-defined]
        if obj.kind and obj.kind != self.kind.name:  # type: ignore[attr-defined]
            raise Invalid("kind", f"must be {self.kind.name}, not {obj.kind!r}")  # type: ignore[attr-defined]
        obj.api_version = self.kind.api_version  # type: ignore[attr-defined]
        obj.kind = self.kind.name  # type: ignore[attr-defined]
        self.validate(obj)
        return await apply(self.store, self.kind, obj)

    @_guard
    async def Delete(
        self, request: service_pb2.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.DeleteResponse:
        deleted = await self.store.delete(
            self.kind,
            self._key(request.namespace, request.name),
            resource_version=request.resource_version,
        )
        return service_pb2.DeleteResponse(deleted=deleted)


async def apply(store: Store, kind: Kind[T], obj: T) -> T:
    """Create, or replace spec, labels and annotations; writes nothing when unchanged."""
    requested = kind.meta(obj)
    current = await store.get(kind, kind.key_of(obj))
    if current is None:
        # Status belongs to the controllers, never to the caller.
        if "status" in obj.DESCRIPTOR.fields_by_name:
            obj.ClearField("status")
        return await store.create(kind, obj)
    stored = kind.meta(current)
    if requested.resource_version and requested.resource_version != stored.resource_version:
        raise Conflict(
            f"{kind.name} {requested.name} is at resourceVersion {stored.resource_version}, "
            f"not {requested.resource_version}"
        )
    updated = kind.copy(current)
    updated.spec.CopyFrom(obj.spec)  # type: ignore[attr-defined]
    meta = kind.meta(updated)
    meta.labels.clear()
    meta.labels.update(requested.labels)
    meta.annotations.clear()
    meta.annotations.update(requested.annotations)
    if updated == current:
        return current
    return await store.update(kind, updated, current=current)


def _check_policy(policy: policy_pb2.PropagationPolicy) -> None:
    validation.check_metadata(policy.metadata, namespaced=True)
    validation.check_propagation_spec(policy.spec, policy_namespace=policy.metadata.namespace)


def _check_cluster_policy(policy: policy_pb2.ClusterPropagationPolicy) -> None:
    validation.check_metadata(policy.metadata, namespaced=False)
    validation.check_propagation_spec(policy.spec, policy_namespace="")


def _check_customization(customization: interpreter_pb2.ResourceInterpreterCustomization) -> None:
    validation.check_metadata(customization.metadata, namespaced=False)
    try:
        interpreter.compile_customization(customization)
    except interpreter.CustomizationInvalid as error:
        raise Invalid(error.field, error.message) from error


def _check_override(policy: Any) -> None:
    namespaced = isinstance(policy, override_pb2.OverridePolicy)
    validation.check_metadata(policy.metadata, namespaced=namespaced)
    validation.check_override_spec(
        policy.spec, policy_namespace=policy.metadata.namespace if namespaced else ""
    )


def _check_namespaced(obj: Any) -> None:
    validation.check_metadata(obj.metadata, namespaced=True)


def kind_services(store: Store) -> dict[str, KindService[Any]]:
    """One servicer per API kind, keyed by the generated service's name."""
    return {
        "MemberClusterService": KindService(
            store,
            kinds.MEMBER_CLUSTER,
            list_type=service_pb2.MemberClusterList,
            event_type=service_pb2.MemberClusterEvent,
            validate=validation.check_member_cluster,
        ),
        "PropagationPolicyService": KindService(
            store,
            kinds.PROPAGATION_POLICY,
            list_type=service_pb2.PropagationPolicyList,
            event_type=service_pb2.PropagationPolicyEvent,
            validate=_check_policy,
        ),
        "ClusterPropagationPolicyService": KindService(
            store,
            kinds.CLUSTER_PROPAGATION_POLICY,
            list_type=service_pb2.ClusterPropagationPolicyList,
            event_type=service_pb2.ClusterPropagationPolicyEvent,
            validate=_check_cluster_policy,
        ),
        "OverridePolicyService": KindService(
            store,
            kinds.OVERRIDE_POLICY,
            list_type=service_pb2.OverridePolicyList,
            event_type=service_pb2.OverridePolicyEvent,
            validate=_check_override,
        ),
        "ClusterOverridePolicyService": KindService(
            store,
            kinds.CLUSTER_OVERRIDE_POLICY,
            list_type=service_pb2.ClusterOverridePolicyList,
            event_type=service_pb2.ClusterOverridePolicyEvent,
            validate=_check_override,
        ),
        "ResourceInterpreterCustomizationService": KindService(
            store,
            kinds.RESOURCE_INTERPRETER_CUSTOMIZATION,
            list_type=service_pb2.ResourceInterpreterCustomizationList,
            event_type=service_pb2.ResourceInterpreterCustomizationEvent,
            validate=_check_customization,
        ),
        "PropagationBindingService": KindService(
            store,
            kinds.PROPAGATION_BINDING,
            list_type=service_pb2.PropagationBindingList,
            event_type=service_pb2.PropagationBindingEvent,
            validate=_check_namespaced,
        ),
        "PropagationWorkService": KindService(
            store,
            kinds.PROPAGATION_WORK,
            list_type=service_pb2.PropagationWorkList,
            event_type=service_pb2.PropagationWorkEvent,
            validate=_check_namespaced,
        ),
    }


# Karmada's label is honoured too, so protected templates stay protected after a move.
DELETION_PROTECTION_LABELS = (
    "resourcetemplate.archipel.io/deletion-protected",
    "resourcetemplate.karmada.io/deletion-protected",
)


class TemplateService:
    """Resource templates: any Kubernetes object, as a Struct on the wire."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.kind = kinds.RESOURCE_TEMPLATE

    @staticmethod
    def _wire(manifest: Manifest) -> work_pb2.ResourceTemplate:
        return work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest))

    @staticmethod
    def _type_prefix(api_version: str, kind: str) -> str:
        if bool(api_version) != bool(kind):
            raise Invalid(
                "apiVersion" if not api_version else "kind", "give apiVersion and kind together"
            )
        return kinds.template_type_prefix(api_version, kind) if kind else "templates/"

    def _key(self, api_version: str, kind: str, namespace: str, name: str) -> str:
        if not api_version:
            raise Invalid("apiVersion", "required")
        if not kind:
            raise Invalid("kind", "required")
        validation.check_object_name(name, "name")
        return kinds.template_key(api_version, kind, namespace, name)

    @_guard
    async def Get(
        self, request: service_pb2.TemplateGetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> work_pb2.ResourceTemplate:
        key = self._key(request.api_version, request.kind, request.namespace, request.name)
        return self._wire(await self.store.must_get(self.kind, key))

    @_guard
    async def List(
        self, request: service_pb2.TemplateListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.ResourceTemplateList:
        if request.limit < 0:
            raise Invalid("limit", "must not be negative")
        selector = _label_filter(request.label_selector)
        items, token, revision = await self.store.list(
            self.kind,
            self._type_prefix(request.api_version, request.kind),
            limit=request.limit,
            continue_token=getattr(request, "continue"),
        )
        response = service_pb2.ResourceTemplateList(resource_version=str(revision))
        for manifest in items:
            meta = manifest.get("metadata", {})
            if request.namespace and meta.get("namespace") != request.namespace:
                continue
            if selector.matches(meta.get("labels", {})):
                response.items.append(self._wire(manifest))
        setattr(response, "continue", token)
        return response

    @_guard_stream
    async def Watch(
        self, request: service_pb2.TemplateWatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[service_pb2.ResourceTemplateEvent]:
        selector = _label_filter(request.label_selector)

        def matches(manifest: Manifest) -> bool:
            meta = manifest.get("metadata", {})
            if request.namespace and meta.get("namespace") != request.namespace:
                return False
            return selector.matches(meta.get("labels", {}))

        async for type_, manifest, revision in watch_events(
            self.store,
            self.kind,
            self._type_prefix(request.api_version, request.kind),
            resource_version=request.resource_version,
            matches=matches,
        ):
            yield service_pb2.ResourceTemplateEvent(
                type=type_, object=self._wire(manifest), resource_version=revision
            )

    @_guard
    async def Apply(
        self, request: work_pb2.ResourceTemplate, context: grpc.aio.ServicerContext[Any, Any]
    ) -> work_pb2.ResourceTemplate:
        manifest = validation.check_template(structs.from_struct(request.manifest))
        return self._wire(await apply_template(self.store, manifest))

    @_guard
    async def Delete(
        self,
        request: service_pb2.TemplateDeleteRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.DeleteResponse:
        key = self._key(request.api_version, request.kind, request.namespace, request.name)
        current = await self.store.must_get(self.kind, key)
        labels = current.get("metadata", {}).get("labels", {})
        for label in DELETION_PROTECTION_LABELS:
            if labels.get(label) == "Always":
                raise FailedPrecondition(
                    f"{request.kind} {request.name} is protected by the label {label}=Always; "
                    "remove the label to delete it"
                )
        deleted = await self.store.delete(self.kind, key, resource_version=request.resource_version)
        return service_pb2.DeleteResponse(deleted=deleted)


async def apply_template(store: Store, manifest: Manifest) -> Manifest:
    kind = kinds.RESOURCE_TEMPLATE
    metadata = manifest["metadata"]
    requested_version = metadata.get("resourceVersion", "")
    for field in kinds.SERVER_METADATA_FIELDS:
        metadata.pop(field, None)
    manifest.pop("status", None)
    current = await store.get(kind, kind.key_of(manifest))
    if current is None:
        return await store.create(kind, manifest)
    stored = current.get("metadata", {})
    if requested_version and requested_version != stored.get("resourceVersion"):
        raise Conflict(
            f"{manifest['kind']} {metadata['name']} is at resourceVersion "
            f"{stored.get('resourceVersion')}, not {requested_version}"
        )
    updated: Manifest = dict(manifest)
    updated["metadata"] = {
        **metadata,
        **{f: stored[f] for f in kinds.SERVER_METADATA_FIELDS if f in stored},
    }
    if "finalizers" in stored:
        updated["metadata"]["finalizers"] = stored["finalizers"]
    if "status" in current:
        updated["status"] = current["status"]
    if updated == current:
        return current
    return await store.update(kind, updated, current=current)


class ClusterAdminService:
    def __init__(self, clusters: ClusterController) -> None:
        self.clusters = clusters

    @_guard
    async def Join(
        self, request: service_pb2.JoinRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.JoinResponse:
        cluster = cluster_pb2.MemberCluster(
            api_version=kinds.MEMBER_CLUSTER.api_version, kind="MemberCluster"
        )
        cluster.metadata.name = request.name
        cluster.metadata.labels.update(request.labels)
        cluster.spec.sync_mode = "Pull"
        cluster.spec.provider = request.provider
        cluster.spec.region = request.region
        cluster.spec.zone = request.zone
        if request.zone:
            cluster.spec.zones.append(request.zone)
        validation.check_member_cluster(cluster)
        joined, token = await self.clusters.join(cluster, rotate=request.rotate)
        return service_pb2.JoinResponse(cluster=joined, token=token)
