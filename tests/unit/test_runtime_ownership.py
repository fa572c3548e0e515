"""A controller runs only the keys its owner rule gives this replica, and commits each
plan with the rule's guards (controlplane/runtime.py). The store is a recorder: what
the guards do in etcd is tests/integration/test_shards.py's business."""

from __future__ import annotations

from collections.abc import Sequence

from controlplane import plan
from controlplane.etcd import Guard
from controlplane.runtime import Controller


class RecordingStore:
    def __init__(self) -> None:
        self.commits: list[tuple[list[plan.Write], list[Guard]]] = []

    async def commit(self, writes: Sequence[plan.Write], *, guards: Sequence[Guard] = ()) -> int:
        self.commits.append((list(writes), list(guards)))
        return 7


class Owner:
    """Owns the keys in ``owned``, under a guard named after the key."""

    def __init__(self, *owned: str) -> None:
        self.owned = set(owned)

    def __call__(self, key: str) -> list[Guard] | None:
        return [Guard(f"claims/{key}", 3)] if key in self.owned else None


def controller(owner: Owner, planned: list[str]) -> tuple[Controller, RecordingStore]:
    store = RecordingStore()

    async def reconcile(key: str) -> plan.Plan:
        planned.append(key)
        return plan.Plan(writes=[plan.Purge(f"objects/{key}", 1)])

    built = Controller("test", reconcile, store=store, caches=[], owner=owner)  # type: ignore[arg-type]
    return built, store


async def test_an_owned_key_is_committed_with_its_guards() -> None:
    planned: list[str] = []
    built, store = controller(Owner("a"), planned)
    await built.reconcile("a")
    assert planned == ["a"]
    assert store.commits == [([plan.Purge("objects/a", 1)], [Guard("claims/a", 3)])]


async def test_a_key_another_replica_owns_is_neither_planned_nor_written() -> None:
    planned: list[str] = []
    built, store = controller(Owner(), planned)
    assert await built.reconcile("b") is None
    assert planned == [] and store.commits == []


async def test_a_parked_key_is_queued_again_when_ownership_changes() -> None:
    owner = Owner()
    built, _ = controller(owner, [])
    await built.reconcile("b")
    assert built.queue.idle()
    owner.owned.add("b")
    built.ownership_changed()
    assert await built.queue.get() == "b"


async def test_a_key_lost_while_planning_writes_nothing() -> None:
    owner = Owner("a")
    store = RecordingStore()

    async def reconcile(key: str) -> plan.Plan:
        owner.owned.discard(key)  # the shard moved while this pass looked
        return plan.Plan(writes=[plan.Purge(f"objects/{key}", 1)])

    built = Controller("test", reconcile, store=store, caches=[], owner=owner)  # type: ignore[arg-type]
    await built.reconcile("a")
    assert store.commits == []
