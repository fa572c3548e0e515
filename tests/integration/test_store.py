"""The store and informers on a real etcd: guarded writes, finalizers, pages, watches."""

from __future__ import annotations

import asyncio

import pytest

from archipel.core import kinds
from archipel.core.errors import AlreadyExists, Conflict, Unavailable
from archipel.v1alpha1 import policy_pb2
from controlplane.etcd import Compacted
from controlplane.informers import Informer
from controlplane.store import Store

KIND = kinds.PROPAGATION_POLICY

pytestmark = pytest.mark.servers


def policy(name: str, *, kind: str = "Deployment") -> policy_pb2.PropagationPolicy:
    obj = policy_pb2.PropagationPolicy(api_version=KIND.api_version, kind=KIND.name)
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.spec.resource_selectors.add(api_version="apps/v1", kind=kind)
    return obj


async def test_generation_moves_only_with_the_spec(store: Store) -> None:
    created = await store.create(KIND, policy("p"))
    assert created.metadata.generation == 1
    assert created.metadata.uid
    assert created.metadata.HasField("creation_timestamp")

    relabelled = KIND.copy(created)
    relabelled.metadata.labels["team"] = "web"
    relabelled.metadata.uid = "forged"
    relabelled = await store.update(KIND, relabelled)
    assert relabelled.metadata.generation == 1
    assert relabelled.metadata.uid == created.metadata.uid

    changed = KIND.copy(relabelled)
    changed.spec.resource_selectors[0].kind = "StatefulSet"
    changed = await store.update(KIND, changed)
    assert changed.metadata.generation == 2
    assert int(changed.metadata.resource_version) > int(relabelled.metadata.resource_version)
    stored = await store.must_get(KIND, KIND.key_of(changed))
    assert stored == changed


async def test_writes_are_guarded(store: Store) -> None:
    created = await store.create(KIND, policy("p"))
    with pytest.raises(AlreadyExists):
        await store.create(KIND, policy("p"))
    first, second = KIND.copy(created), KIND.copy(created)
    first.spec.priority = 1
    await store.update(KIND, first)
    second.spec.priority = 2
    with pytest.raises(Conflict):
        await store.update(KIND, second)
    stored = await store.must_get(KIND, KIND.key_of(created))
    assert stored.spec.priority == 1
    with pytest.raises(Conflict):
        await store.delete(
            KIND, KIND.key_of(created), resource_version=created.metadata.resource_version
        )


async def test_finalizers_hold_deletion(store: Store) -> None:
    obj = policy("p")
    obj.metadata.finalizers.append("test/hold")
    created = await store.create(KIND, obj)
    key = KIND.key_of(created)
    assert await store.delete(KIND, key) is False
    held = await store.must_get(KIND, key)
    assert held.metadata.HasField("deletion_timestamp")
    await store.remove_finalizer(KIND, held, "test/hold")
    assert await store.get(KIND, key) is None


async def test_pages_are_consistent(store: Store) -> None:
    for index in range(7):
        await store.create(KIND, policy(f"p{index}"))
    first, token, _ = await store.list(KIND, KIND.prefix("default"), limit=3)
    await store.create(KIND, policy("p9"))  # after the first page: not in this listing
    names = [p.metadata.name for p in first]
    while token:
        page, token, _ = await store.list(
            KIND, KIND.prefix("default"), limit=3, continue_token=token
        )
        names += [p.metadata.name for p in page]
    assert names == [f"p{i}" for i in range(7)]


async def test_a_filtered_listing_fills_its_pages_with_what_it_keeps(store: Store) -> None:
    # As a Kubernetes List with a label selector: the limit counts matching objects, so
    # the objects filtered out between matches never leave a page short.
    for index in range(9):
        await store.create(KIND, policy(f"p{index}", kind="Job" if index % 3 else "Deployment"))

    def deployments(obj: policy_pb2.PropagationPolicy) -> bool:
        return obj.spec.resource_selectors[0].kind == "Deployment"

    pages: list[list[str]] = []
    token = ""
    while True:
        page, token, _ = await store.list(
            KIND, KIND.prefix("default"), limit=2, continue_token=token, keep=deployments
        )
        pages.append([p.metadata.name for p in page])
        if not token:
            break
    assert pages == [["p0", "p3"], ["p6"]]


async def test_informer_follows_changes(store: Store) -> None:
    await store.create(KIND, policy("before"))
    informer = Informer(store, KIND)
    events: list[tuple[str, bool, bool]] = []
    informer.add_handler(
        lambda key, old, new: events.append((key, old is not None, new is not None))
    )
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), timeout=10)
        assert informer.get(KIND.key("default", "before")) is not None
        created = await store.create(KIND, policy("after"))
        await store.delete(KIND, KIND.key_of(created))
        for _ in range(100):
            if (KIND.key("default", "after"), True, False) in events:
                break
            await asyncio.sleep(0.05)
        key = KIND.key("default", "after")
        assert (key, False, True) in events
        assert (key, True, False) in events
        assert informer.get(key) is None
    finally:
        task.cancel()


async def test_watch_from_a_compacted_revision_says_so(store: Store) -> None:
    first = await store.create(KIND, policy("p"))
    for index in range(3):
        obj = KIND.copy(await store.must_get(KIND, KIND.key_of(first)))
        obj.spec.priority = index
        await store.update(KIND, obj)
    revision = await store.etcd.current_revision()
    await store.etcd.compact(revision)
    with pytest.raises(Compacted):
        async for _ in store.etcd.watch(
            KIND.prefix(), start_revision=int(first.metadata.resource_version)
        ):
            pass


async def test_waiting_for_the_cache_to_reach_a_revision(store: Store) -> None:
    informer = Informer(store, KIND)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        written = await store.create(KIND, policy("waited-for"))
        revision = int(written.metadata.resource_version)
        # Returns once the watch has delivered the write, not after some sleep.
        await informer.wait_for_revision(revision)
        assert informer.get(KIND.key_of(written)) is not None
        await informer.wait_for_revision(0)  # nothing to wait for
        with pytest.raises(Unavailable):
            await informer.wait_for_revision(revision + 1_000_000, seconds=0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
