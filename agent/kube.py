"""The agent's access to its member cluster's API server.

The official kubernetes client blocks, so every call runs in a bounded thread pool
and the event loop never waits on the network. Long-running watches get threads of
their own and hand events back to the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError, ResourceNotFoundError

log = logging.getLogger(__name__)
R = TypeVar("R")
Manifest = dict[str, Any]
FIELD_MANAGER = "archipel-agent"


class KubeError(Exception):
    """A call to the member's API server failed; the message says why."""


class RefusedError(KubeError):
    """The API server answered with an error status (``status``: 403, 404, 410...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NotLeader(KubeError):
    """This agent may no longer act in the member: another agent may lead by now
    (agent/election.py). Raised before a write, never after it was sent."""


class NotServed(KubeError):
    """The member does not serve the kind (its CRD is not there, or not any more)."""


def load_api_client(kubeconfig: str | None) -> kubernetes.client.ApiClient:
    """A client from a kubeconfig file, or from in-cluster credentials (DaemonSet)."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # Fail fast and let the agent's own backoff retry, instead of urllib3's.
    configuration.retries = False
    # One connection per worker thread, plus the long-lived watches.
    configuration.connection_pool_maxsize = 32
    return kubernetes.client.ApiClient(configuration)


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}: {(error.body or '')[:300]!s}"
    return f"{type(error).__name__}: {error}"


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient, *, workers: int = 16) -> None:
        self.api_client = api_client
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="kube"
        )
        # Two threads: a Lease call that hangs until its timeout does not hold the next.
        self._lease_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="lease"
        )
        self._dynamic: DynamicClient | None = None
        self._discovery_lock = threading.Lock()

    async def call(self, function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(function, *args, **kwargs)
        )

    async def call_lease(self, function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """As :meth:`call`, on a lane of its own for the leader election's Lease calls:
        a renewal queued behind a burst of applies would cost the agent its lease."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._lease_executor, functools.partial(function, *args, **kwargs)
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._lease_executor.shutdown(wait=False, cancel_futures=True)

    # -- blocking helpers (run through call()) ------------------------------------------

    @property
    def dynamic(self) -> DynamicClient:
        with self._discovery_lock:
            if self._dynamic is None:
                self._dynamic = DynamicClient(self.api_client)  # type: ignore[no-untyped-call]
            return self._dynamic

    def resource(self, api_version: str, kind: str) -> Any:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            # A CRD may have been created since discovery ran.
            self.dynamic.resources.invalidate_cache()
            try:
                return self.dynamic.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError as error:
                raise NotServed(f"the member does not serve {kind} in {api_version}") from error

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        resource = self.resource(api_version, kind)
        try:
            found = resource.get(name=name, namespace=namespace or None)
        except NotFoundError:
            return None
        return dict(found.to_dict())

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply under the agent's field manager, taking over conflicts."""
        resource = self.resource(manifest["apiVersion"], manifest["kind"])
        metadata = manifest["metadata"]
        namespace = metadata.get("namespace") if resource.namespaced else None
        applied = self.dynamic.server_side_apply(  # type: ignore[no-untyped-call]
            resource,
            body=manifest,
            name=metadata["name"],
            namespace=namespace,
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
        return dict(applied.to_dict())

    def store_config_map(self, body: Manifest, *, exists: bool) -> None:
        """Create or wholly replace a ConfigMap this agent alone writes (its ledger).

        A plain POST or unconditional PUT: no field ownership to merge, so it costs the
        API server, and this process, less than a server-side apply; the ledger is
        written once or twice per apply. ``exists`` says which to try first."""
        metadata = body["metadata"]
        collection = f"/api/v1/namespaces/{metadata['namespace']}/configmaps"
        attempts = [("PUT", f"{collection}/{metadata['name']}"), ("POST", collection)]
        if not exists:
            attempts.reverse()
        for method, path in attempts[:-1]:
            try:
                self.raw_send(method, path, body)
                return
            except RefusedError as error:
                if error.status not in (404, 409):  # absent for a PUT, present for a POST
                    raise
        method, path = attempts[-1]
        self.raw_send(method, path, body)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        try:
            resource = self.resource(api_version, kind)
        except NotServed:
            # Its CRD was removed from the member, and its objects with it: nothing is
            # left to delete (and a work leaving a cluster that stopped serving its kind
            # must not fail for ever).
            return False
        try:
            resource.delete(
                name=name,
                namespace=namespace or None,
                body={"propagationPolicy": "Background"},
            )
        except NotFoundError:
            return False
        return True

    def delete_owned(
        self, api_version: str, kind: str, namespace: str, name: str, *, annotation: str, value: str
    ) -> bool:
        """Delete the object only if it carries ``annotation: value``, and only the very
        object read with it (a precondition on its uid): whether it was deleted."""
        try:
            live = self.get(api_version, kind, namespace, name)
        except NotServed:
            return False  # its CRD went, and its objects with it
        if live is None:
            return False
        metadata = live.get("metadata") or {}
        if (metadata.get("annotations") or {}).get(annotation) != value:
            return False
        try:
            self.resource(api_version, kind).delete(
                name=name,
                namespace=namespace or None,
                body={"propagationPolicy": "Background", "preconditions": {"uid": metadata["uid"]}},
            )
        except (NotFoundError, ConflictError):
            return False  # gone, or replaced by another object since it was read
        return True

    def raw_get(self, path: str, *, timeout: float = 5) -> Any:
        """GET a path of the API server (discovery, /readyz, a list); JSON is decoded.

        Nothing is cached: every call asks the API server, so discovery after an API
        went away reads its absence."""
        response = self._raw_request(path, [], timeout)
        data: bytes = response.read()
        if response.status != 200:
            raise RefusedError(f"GET {path}: {response.status} {data[:200]!r}", response.status)
        try:
            return json.loads(data)
        except ValueError:
            return data.decode(errors="replace")

    def raw_send(self, method: str, path: str, body: Manifest, *, timeout: float = 5) -> Manifest:
        """POST or PUT ``body`` as JSON to ``path``; the object the API server answers
        with. RefusedError (with the status: 409 on a stale resourceVersion) otherwise."""
        method, url, headers, data, _ = self.api_client.param_serialize(
            method,
            path,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response: Any = self.api_client.call_api(
            method, url, header_params=headers, body=data, _request_timeout=timeout
        )
        raw: bytes = response.read()
        if response.status not in (200, 201):
            raise RefusedError(f"{method} {path}: {response.status} {raw[:200]!r}", response.status)
        answer: Manifest = json.loads(raw)
        return answer

    def watch_events(
        self, path: str, *, resource_version: str, timeout: int
    ) -> Iterator[dict[str, Any]]:
        """Watch the collection at ``path`` from ``resource_version``, with bookmarks,
        until the API server ends the watch after ``timeout`` seconds: the events
        decoded, the objects as plain JSON (no model classes to fail on a field the
        client does not know). RefusedError when the API server refuses the watch."""
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout)),
        ]
        # The read timeout is a little longer than the server's: a connection that went
        # silent (a member gone without closing it) fails rather than hangs.
        response = self._raw_request(path, query, (10, timeout + 15))
        try:
            if response.status != 200:
                data: bytes = response.read()
                raise RefusedError(
                    f"watch {path}: {response.status} {data[:200]!r}", response.status
                )
            for line in kubernetes.watch.watch.iter_resp_lines(response.response):  # type: ignore[no-untyped-call]
                if line.strip():
                    yield json.loads(line)
        finally:
            # Closed, not returned to the pool: a watch left early has unread data.
            response.response.close()
            response.response.release_conn()

    def _raw_request(
        self, path: str, query: list[tuple[str, str]], timeout: float | tuple[float, float]
    ) -> Any:
        method, url, headers, _, _ = self.api_client.param_serialize(
            "GET",
            path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        return self.api_client.call_api(
            method, url, header_params=headers, _request_timeout=timeout
        )

    def is_namespaced(self, api_version: str, kind: str) -> bool:
        return bool(self.resource(api_version, kind).namespaced)

    def ensure_namespace(self, name: str, *, labels: dict[str, str] | None = None) -> bool:
        """Create the namespace if it is missing; True when it was created.

        ``labels`` mark a namespace the agent made, so a later work that propagates
        the same Namespace may adopt it instead of reporting a conflict.
        """
        core = kubernetes.client.CoreV1Api(self.api_client)
        try:
            core.read_namespace(name)
            return False
        except ApiException as error:
            if error.status != 404:
                raise
        try:
            core.create_namespace(
                kubernetes.client.V1Namespace(
                    metadata=kubernetes.client.V1ObjectMeta(name=name, labels=labels)
                )
            )
        except ApiException as error:
            if error.status != 409:
                raise
        return True


def describe(error: Exception) -> str:
    return _describe(error)
