"""Plans committed on a real etcd: all or nothing, guarded, and grouped under load.

A reconcile's plan lands in one transaction (Store.commit); concurrent plans share
etcd transactions (the group commit) without ever mixing their outcomes.
"""

from __future__ import annotations

import asyncio

import pytest

from archipel.core import kinds
from archipel.core.errors import AlreadyExists, Conflict
from archipel.v1alpha1 import policy_pb2
from controlplane import plan as plans
from controlplane.etcd import MAX_TXN_OPS
from controlplane.store import Store

KIND = kinds.PROPAGATION_POLICY

pytestmark = pytest.mark.servers


def policy(name: str, priority: int = 0) -> policy_pb2.PropagationPolicy:
    obj = policy_pb2.PropagationPolicy(api_version=KIND.api_version, kind=KIND.name)
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.spec.resource_selectors.add(api_version="apps/v1", kind="Deployment")
    obj.spec.priority = priority
    return obj


async def stored_priorities(store: Store) -> dict[str, int]:
    items, _, _ = await store.list(KIND, KIND.prefix("default"))
    return {p.metadata.name: p.spec.priority for p in items}


async def test_a_plan_lands_whole_at_one_revision(store: Store) -> None:
    kept = await store.create(KIND, policy("kept"))
    gone = await store.create(KIND, policy("gone"))
    changed = KIND.copy(kept)
    changed.spec.priority = 7
    plan = plans.Plan()
    plan.create(KIND, policy("new"))
    plan.update(KIND, changed, current=kept)
    plan.delete(KIND, gone)
    revision = await store.commit(plan.writes)
    assert await stored_priorities(store) == {"kept": 7, "new": 0}
    assert changed.metadata.resource_version == str(revision)
    assert changed.metadata.generation == 2  # the spec changed


async def test_one_stale_guard_and_nothing_lands(store: Store) -> None:
    first = await store.create(KIND, policy("a"))
    other = await store.create(KIND, policy("b"))
    moved_on = KIND.copy(other)
    moved_on.spec.priority = 1
    await store.update(KIND, moved_on)  # someone else wrote b since we read it
    mine = KIND.copy(first)
    mine.spec.priority = 5
    stale = KIND.copy(other)
    stale.spec.priority = 9
    plan = plans.Plan()
    plan.create(KIND, policy("c"))
    plan.update(KIND, mine, current=first)
    plan.update(KIND, stale, current=other)
    with pytest.raises(Conflict):
        await store.commit(plan.writes)
    assert await stored_priorities(store) == {"a": 0, "b": 1}
    assert mine.metadata.resource_version == first.metadata.resource_version


async def test_deleting_with_finalizers_marks_and_keeps_what_the_plan_says(store: Store) -> None:
    held = policy("held")
    held.metadata.finalizers.append("archipel.io/test")
    held = await store.create(KIND, held)
    marked = KIND.copy(held)
    marked.spec.priority = 3
    plan = plans.Plan()
    plan.delete(KIND, held, marked=marked)
    await store.commit(plan.writes)
    stored = await store.must_get(KIND, KIND.key_of(held))
    assert stored.metadata.HasField("deletion_timestamp") and stored.spec.priority == 3
    released = KIND.copy(stored)
    released.metadata.ClearField("finalizers")
    plan = plans.Plan()
    plan.update(KIND, released, current=stored)
    await store.commit(plan.writes)
    assert await store.get(KIND, KIND.key_of(held)) is None


async def test_a_plan_beyond_one_transaction_lands_in_parts(store: Store) -> None:
    count = MAX_TXN_OPS * 2 + 5
    plan = plans.Plan()
    for index in range(count):
        plan.create(KIND, policy(f"p{index:04d}"))
    await store.commit(plan.writes)
    assert len(await stored_priorities(store)) == count


async def test_a_plan_may_not_write_one_key_twice(store: Store) -> None:
    plan = plans.Plan()
    plan.create(KIND, policy("twice"))
    plan.create(KIND, policy("twice"))
    with pytest.raises(ValueError, match="twice"):
        await store.commit(plan.writes)
    assert await stored_priorities(store) == {}


async def test_concurrent_plans_share_transactions_and_keep_their_own_outcomes(
    store: Store,
) -> None:
    """Hundreds of plans at once: distinct keys all land; of the plans racing for one
    object exactly one wins, and every loser is told so and wrote nothing."""
    contested = await store.create(KIND, policy("contested"))
    before = await store.etcd.current_revision()

    async def create(index: int) -> int:
        plan = plans.Plan()
        plan.create(KIND, policy(f"w{index:03d}"))
        plan.create(KIND, policy(f"x{index:03d}"))
        return await store.commit(plan.writes)

    async def race(index: int) -> str:
        mine = KIND.copy(contested)
        mine.spec.priority = index + 1
        plan = plans.Plan()
        plan.update(KIND, mine, current=contested)
        plan.create(KIND, policy(f"loser-or-winner-{index:03d}"))
        try:
            await store.commit(plan.writes)
        except Conflict:
            return "lost"
        return f"won:{index + 1}"

    creates = [create(i) for i in range(200)]
    races = [race(i) for i in range(20)]
    results = await asyncio.gather(*creates, *races)
    revisions, outcomes = results[:200], results[200:]
    winners = [o for o in outcomes if o != "lost"]
    assert len(winners) == 1
    stored = await stored_priorities(store)
    assert stored["contested"] == int(str(winners[0]).split(":")[1])
    # The winner's companion create landed with it; no loser's did.
    racers = {name for name in stored if name.startswith("loser-or-winner-")}
    assert len(racers) == 1
    assert all(f"w{i:03d}" in stored and f"x{i:03d}" in stored for i in range(200))
    # Grouping: far fewer etcd revisions than plans (each transaction is one revision).
    after = await store.etcd.current_revision()
    assert len(set(revisions)) < 200
    assert after - before < 200


async def test_a_create_over_an_existing_key_is_already_exists(store: Store) -> None:
    await store.create(KIND, policy("here"))
    with pytest.raises(AlreadyExists):
        await store.create(KIND, policy("here"))
