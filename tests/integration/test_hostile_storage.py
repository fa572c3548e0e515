"""What etcd may hold and what one write may weigh, on a real etcd.

An undecodable value is quarantined, never fatal: reads say DATA_LOSS, listings and
caches skip it, deleting it works, and a good write releases it. A write too large for
etcd fails alone, never the writes that happened to share its transaction.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from archipel.core import kinds
from archipel.core.errors import Corrupt, NotFound, TooMuch
from archipel.v1alpha1 import policy_pb2
from controlplane.etcd import Put
from controlplane.informers import Informer
from controlplane.store import Store

KIND = kinds.PROPAGATION_POLICY

pytestmark = pytest.mark.servers

# Values that decode as no object of their kind: bytes that are not protobuf, a
# truncated field, and a valid object stored under another object's key.
GARBAGE = (b"\xff\xfe not protobuf", b"\x0a\x05ab")


def policy(name: str) -> policy_pb2.PropagationPolicy:
    obj = policy_pb2.PropagationPolicy(api_version=KIND.api_version, kind=KIND.name)
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.spec.resource_selectors.add(api_version="apps/v1", kind="Deployment")
    return obj


async def plant(store: Store, key: str, value: bytes) -> int:
    current = await store.etcd.get(key)
    revision = await store.etcd.commit(
        [Put(key, value, current.mod_revision if current is not None else 0)]
    )
    assert revision is not None
    return revision


async def test_undecodable_values_are_reported_skipped_and_deletable(store: Store) -> None:
    await store.create(KIND, policy("good"))
    bad_keys = [KIND.key("default", f"bad-{index}") for index in range(len(GARBAGE))]
    for key, value in zip(bad_keys, GARBAGE, strict=True):
        await plant(store, key, value)
    # A valid policy stored under another name's key.
    misplaced = KIND.key("default", "misplaced")
    await plant(store, misplaced, KIND.encode(policy("good")))

    for key in [*bad_keys, misplaced]:
        with pytest.raises(Corrupt) as raised:
            await store.get(KIND, key)
        assert raised.value.key == key

    skipped: list[str] = []
    items, _, _ = await store.list(
        KIND, KIND.prefix(), on_corrupt=lambda error, revision: skipped.append(error.key)
    )
    assert [p.metadata.name for p in items] == ["good"]
    assert sorted(skipped) == sorted([*bad_keys, misplaced])

    # Deleting is the way out, without reading what cannot be read.
    assert await store.delete(KIND, bad_keys[0]) is True
    with pytest.raises(NotFound):
        await store.delete(KIND, bad_keys[0])


async def test_informer_quarantines_and_keeps_going(store: Store) -> None:
    informer = Informer(store, KIND)
    seen: list[tuple[str, str | None]] = []
    quarantined: list[tuple[str, str | None]] = []
    changed = asyncio.Event()

    def on_change(key: str, old: object, new: policy_pb2.PropagationPolicy | None) -> None:
        seen.append((key, new.metadata.name if new else None))
        changed.set()

    def on_quarantine(key: str, reason: str | None) -> None:
        quarantined.append((key, reason))
        changed.set()

    async def until(condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not condition():
                changed.clear()
                await changed.wait()

    informer.add_handler(on_change)
    informer.add_quarantine_handler(on_quarantine)
    bad_at_start = KIND.key("default", "bad-at-start")
    await plant(store, bad_at_start, GARBAGE[0])
    await store.create(KIND, policy("first"))
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        assert informer.get(KIND.key("default", "first")) is not None
        assert bad_at_start in informer.quarantined
        assert quarantined and quarantined[0][0] == bad_at_start

        # A good object goes bad: the last good copy stays and no handler hears of a
        # deletion; the watch goes on, as the next change shows.
        second = await store.create(KIND, policy("second"))
        second_key = KIND.key_of(second)
        await plant(store, second_key, GARBAGE[1])
        later = await store.create(KIND, policy("later"))
        await until(lambda: informer.get(KIND.key_of(later)) is not None)
        assert second_key in informer.quarantined
        assert informer.get(second_key) is not None
        assert (second_key, None) not in seen
        assert not task.done()

        # A good write releases it; a deletion releases the other.
        await plant(store, second_key, KIND.encode(policy("second")))
        await store.delete(KIND, bad_at_start)
        await until(lambda: not informer.quarantined)
        assert (second_key, None) in quarantined
        assert (bad_at_start, None) in quarantined
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_write_too_large_for_etcd_fails_alone(store: Store) -> None:
    # etcd's --max-request-bytes is 1.5 MiB: a 2 MiB write can never land. Before, it
    # shared a transaction with whatever was written at the same moment, and took
    # those down too.
    etcd = store.etcd
    small = [Put(f"group/small-{index}", b"x" * 30_000, 0) for index in range(60)]
    large = Put("group/large", b"y" * (2 * 1024 * 1024), 0)
    results = await asyncio.gather(
        *(etcd.commit_grouped([write]) for write in small[:30]),
        etcd.commit_grouped([large]),
        *(etcd.commit_grouped([write]) for write in small[30:]),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], TooMuch), failures
    assert all(isinstance(r, int) for r in results[:30] + results[31:])
    for write in small:
        assert await etcd.get(write.key) is not None
    assert await etcd.get(large.key) is None


@pytest.mark.parametrize(
    "metadata",
    [
        {"name": "odd", "namespace": "default", "labels": "not a map"},
        {"name": "odd", "namespace": "default", "annotations": {"a": 1}},
        {"name": "odd", "namespace": 7},
    ],
)
async def test_a_template_of_the_wrong_shape_is_quarantined(
    store: Store, metadata: dict[str, object]
) -> None:
    # Decodable JSON, but not what every reader of templates may rely on: it never
    # reaches a handler, which would otherwise crash on it.
    template = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    key = "templates/core/ConfigMap/default/odd"
    await plant(store, key, json.dumps(template).encode())
    with pytest.raises(Corrupt):
        await store.get(kinds.RESOURCE_TEMPLATE, key)
