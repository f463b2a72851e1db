"""A network's lock manager in virtual time, on a real SQLite store: leases end and are
reclaimed, renewals extend them, waiters are served by priority then arrival, cycles of waits of
two and three holders are broken, and a restart keeps the grants and the fencing tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors import Address, Unreachable
from yggdrasil import Database, tenant_rule
from yggdrasil._config import LocksConfig
from yggdrasil.locks import Granted, LockFailed, LockView, Released, ViewLocks, locks_address

from .locks_harness import (
    Instance,
    acquire,
    instance,
    new_network,
    open_inline,
    release,
    renew,
)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_inline(tmp_path / "locks.sqlite3")
    yield database
    await database.aclose()


@pytest.fixture
async def net(db: Database) -> str:
    return await new_network(db)


@pytest.fixture
async def node(db: Database) -> AsyncIterator[Instance]:
    async with instance(db) as running:
        yield running


class Later:
    """A request answered in the background (a waiter)."""

    def __init__(self) -> None:
        self.answer: Any = None
        self.done = trio.Event()
        self.at = 0.0


def later(node: Instance, nursery: trio.Nursery, network: str, body: Any) -> Later:
    slot = Later()

    async def run() -> None:
        slot.answer = await node.ask(network, body, timeout_s=120)
        slot.at = trio.current_time()
        slot.done.set()

    nursery.start_soon(run)
    return slot


async def test_a_lease_ends_and_the_next_waiter_gets_the_lock(
    autojump_clock: trio.testing.MockClock, node: Instance, net: str
) -> None:
    first = await node.ask(net, acquire("printer", "user:a", lease_ms=10_000))
    assert isinstance(first, Granted)
    assert first.lease_ms == 10_000
    busy = await node.ask(net, acquire("printer", "user:b"))
    assert isinstance(busy, LockFailed)
    assert busy.code == "busy"
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        waiter = later(node, nursery, net, acquire("printer", "user:b", wait_ms=60_000))
        await trio.sleep(9.9)
        assert not waiter.done.is_set()  # the lease still runs
        await waiter.done.wait()
    # Reclaimed exactly when the lease ended, with a larger fencing token.
    assert waiter.at - started == pytest.approx(10.0, abs=0.01)
    assert isinstance(waiter.answer, Granted)
    assert waiter.answer.token > first.token
    # The first holder's token is no good any more.
    stale = await node.ask(net, release("printer", "user:a", first.token))
    assert isinstance(stale, LockFailed)
    assert stale.code == "not_held"


async def test_a_renewal_extends_the_lease(
    autojump_clock: trio.testing.MockClock, node: Instance, net: str
) -> None:
    granted = await node.ask(net, acquire("mic", "user:a", lease_ms=10_000))
    assert isinstance(granted, Granted)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        waiter = later(node, nursery, net, acquire("mic", "user:b", wait_ms=60_000))
        for _ in range(3):
            await trio.sleep(8)
            renewed = await node.ask(net, renew("mic", "user:a", granted.token, 10_000))
            assert isinstance(renewed, Granted)
            assert renewed.token == granted.token  # same grant, longer lease
        assert not waiter.done.is_set()
        released = await node.ask(net, release("mic", "user:a", granted.token))
        assert isinstance(released, Released)
        await waiter.done.wait()
    assert waiter.at - started == pytest.approx(24.0, abs=0.01)
    assert isinstance(waiter.answer, Granted)
    # A renewal after the lease ended is refused: the lease cannot be revived.
    assert isinstance(waiter.answer, Granted)
    await trio.sleep(11)
    late = await node.ask(net, renew("mic", "user:b", waiter.answer.token))
    assert isinstance(late, LockFailed)
    assert late.code == "not_held"


async def test_waiters_are_served_by_priority_then_arrival(
    autojump_clock: trio.testing.MockClock, node: Instance, net: str
) -> None:
    holder = await node.ask(net, acquire("gpu", "user:h", lease_ms=60_000))
    assert isinstance(holder, Granted)
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        waiters = {}
        for who, priority in (("low", 0), ("high1", 5), ("mid", 2), ("high2", 5), ("neg", -3)):
            waiters[who] = later(
                node,
                nursery,
                net,
                acquire("gpu", f"user:{who}", 1000, priority=priority, wait_ms=60_000),
            )
            await trio.sleep(0.01)  # arrival order
        token = holder.token
        for _ in range(5):
            await node.ask(net, release("gpu", order_holder(order, "h"), token))
            with trio.fail_after(1):
                while True:
                    done = [w for w, s in waiters.items() if s.done.is_set() and w not in order]
                    if done:
                        break
                    await trio.sleep(0.001)
            assert len(done) == 1
            order.append(done[0])
            answer = waiters[done[0]].answer
            assert isinstance(answer, Granted)
            assert answer.token > token
            token = answer.token
    assert order == ["high1", "high2", "mid", "low", "neg"]


def order_holder(order: list[str], first: str) -> str:
    return f"user:{order[-1] if order else first}"


async def test_a_wait_runs_out(
    autojump_clock: trio.testing.MockClock, node: Instance, net: str
) -> None:
    await node.ask(net, acquire("door", "user:a", lease_ms=60_000))
    started = trio.current_time()
    answer = await node.ask(net, acquire("door", "user:b", wait_ms=5_000))
    assert isinstance(answer, LockFailed)
    assert answer.code == "timeout"
    assert trio.current_time() - started == pytest.approx(5.0, abs=0.01)


async def test_a_cycle_of_two_is_broken_at_its_lowest_priority_wait(
    autojump_clock: trio.testing.MockClock, node: Instance, net: str
) -> None:
    a = await node.ask(net, acquire("one", "user:a", lease_ms=60_000))
    b = await node.ask(net, acquire("two", "user:b", lease_ms=60_000))
    assert isinstance(a, Granted)
    assert isinstance(b, Granted)
    async with trio.open_nursery() as nursery:
        a_waits = later(node, nursery, net, acquire("two", "user:a", priority=1, wait_ms=50_000))
        await trio.sleep(0.1)
        b_waits = later(node, nursery, net, acquire("one", "user:b", priority=0, wait_ms=50_000))
        await b_waits.done.wait()
        assert isinstance(b_waits.answer, LockFailed)
        assert b_waits.answer.code == "deadlock"
        assert b_waits.answer.locks == ["one", "two"]
        assert trio.current_time() < 1  # at once, not when a wait runs out
        assert not a_waits.done.is_set()
        # b gives up its lock: a's wait goes on and is served.
        await node.ask(net, release("two", "user:b", b.token))
        await a_waits.done.wait()
    assert isinstance(a_waits.answer, Granted)


async def test_a_cycle_of_three_is_broken_at_its_youngest_wait_among_equals(
    autojump_clock: trio.testing.MockClock, node: Instance, net: str
) -> None:
    for name, who in (("x", "a"), ("y", "b"), ("z", "c")):
        assert isinstance(await node.ask(net, acquire(name, f"user:{who}", 60_000)), Granted)
    async with trio.open_nursery() as nursery:
        waits = {}
        for who, name in (("a", "y"), ("b", "z"), ("c", "x")):
            waits[who] = later(node, nursery, net, acquire(name, f"user:{who}", wait_ms=50_000))
            await trio.sleep(0.1)
        await waits["c"].done.wait()  # the youngest of three equal waits closes the cycle
        assert isinstance(waits["c"].answer, LockFailed)
        assert waits["c"].answer.code == "deadlock"
        assert waits["c"].answer.locks == ["x", "y", "z"]
        assert not waits["a"].done.is_set()
        assert not waits["b"].done.is_set()
        nursery.cancel_scope.cancel()


async def test_a_cycle_closed_by_a_grant_is_found_too(
    autojump_clock: trio.testing.MockClock, node: Instance, net: str
) -> None:
    """a holds one and c holds two; b (priority 3) and a (priority 1) wait for two. c's lease
    ends and two goes to b: now a waits for b. When b then waits for one (held by a), the
    waits form a cycle, and a's wait, the lower priority, is failed."""
    a = await node.ask(net, acquire("one", "user:a", 60_000))
    c = await node.ask(net, acquire("two", "user:c", 5_000))
    assert isinstance(a, Granted)
    assert isinstance(c, Granted)
    async with trio.open_nursery() as nursery:
        b_two = later(
            node, nursery, net, acquire("two", "user:b", 60_000, priority=3, wait_ms=50_000)
        )
        await trio.sleep(0.1)
        a_two = later(node, nursery, net, acquire("two", "user:a", priority=1, wait_ms=50_000))
        await b_two.done.wait()  # c's lease ended
        assert isinstance(b_two.answer, Granted)
        b_one = later(node, nursery, net, acquire("one", "user:b", priority=2, wait_ms=50_000))
        await a_two.done.wait()
        assert isinstance(a_two.answer, LockFailed)
        assert a_two.answer.code == "deadlock"  # priority 1 < 2: a's wait is the victim
        assert not b_one.done.is_set()
        nursery.cancel_scope.cancel()


async def test_the_view_shows_holders_waiters_and_ages(
    autojump_clock: trio.testing.MockClock, node: Instance, net: str
) -> None:
    await node.ask(net, acquire("b-lock", "device:phone", lease_ms=30_000, priority=2))
    async with trio.open_nursery() as nursery:
        later(node, nursery, net, acquire("b-lock", "user:u", priority=1, wait_ms=20_000))
        await trio.sleep(4)
        view = await node.ask(net, ViewLocks())
        assert isinstance(view, LockView)
        [info] = view.items
        assert (info.name, info.holder, info.priority) == ("b-lock", "device:phone", 2)
        assert info.age_ms == 4000
        assert info.expires_in_ms == 26_000
        assert [(w.holder, w.priority, w.waited_ms) for w in info.waiters] == [("user:u", 1, 4000)]
        nursery.cancel_scope.cancel()


async def test_bad_requests_change_nothing(
    autojump_clock: trio.testing.MockClock, node: Instance, net: str
) -> None:
    for body in (
        acquire("", "user:a"),
        acquire("-x", "user:a"),
        acquire("x" * 129, "user:a"),
        acquire("ok", "user:a", lease_ms=10),
        acquire("ok", "user:a", lease_ms=10**9),
        acquire("ok", "user:a", priority=5000),
        acquire("ok", "user:a", wait_ms=-1),
        acquire("ok", "user:a", wait_ms=10**9),
    ):
        answer = await node.ask(net, body)
        assert isinstance(answer, LockFailed), body
        assert answer.code == "invalid"
    view = await node.ask(net, ViewLocks())
    assert view.items == []


async def test_too_many_locks_or_waiters_are_refused(
    autojump_clock: trio.testing.MockClock, db: Database, net: str
) -> None:
    config = LocksConfig(max_locks=2, max_waiters=1)
    async with instance(db, config) as small:
        assert isinstance(await small.ask(net, acquire("a", "user:x", 60_000)), Granted)
        assert isinstance(await small.ask(net, acquire("b", "user:x", 60_000)), Granted)
        third = await small.ask(net, acquire("c", "user:x"))
        assert isinstance(third, LockFailed)
        assert third.code == "overloaded"
        async with trio.open_nursery() as nursery:
            later(small, nursery, net, acquire("a", "user:y", wait_ms=10_000))
            await trio.sleep(0.1)
            second = await small.ask(net, acquire("b", "user:y", wait_ms=10_000))
            assert isinstance(second, LockFailed)
            assert second.code == "overloaded"
            nursery.cancel_scope.cancel()


async def test_a_restart_keeps_live_grants_and_the_tokens_grow(
    autojump_clock: trio.testing.MockClock, db: Database, net: str
) -> None:
    async with instance(db) as first:
        held = await first.ask(net, acquire("disk", "user:a", lease_ms=30_000))
        gone = await first.ask(net, acquire("tape", "user:a", lease_ms=1_000))
        assert isinstance(held, Granted)
        assert isinstance(gone, Granted)
        first.crash()
    await trio.sleep(5)
    async with instance(db) as second:
        # The lease that still runs is still held, by the same holder and token.
        refused = await second.ask(net, acquire("disk", "user:b"))
        assert isinstance(refused, LockFailed)
        assert refused.code == "busy"
        same = await second.ask(net, acquire("disk", "user:a"))
        assert isinstance(same, Granted)
        assert same.token == held.token
        # The ended lease is free, and its next grant's token is larger than any before.
        tape = await second.ask(net, acquire("tape", "user:b"))
        assert isinstance(tape, Granted)
        assert tape.token > max(held.token, gone.token)


async def test_another_networks_manager_is_unreachable_from_a_device(
    autojump_clock: trio.testing.MockClock, node: Instance, db: Database, net: str
) -> None:
    other = await new_network(db, "bob@example.org")
    assert isinstance(await node.ask(other, acquire("printer", "user:bob")), Granted)
    phone = Address.of("device", net, "phone")
    assert not tenant_rule(phone, locks_address(other))
    with pytest.raises(Unreachable):
        await node.router.request(phone, locks_address(other), acquire("printer", ""), timeout_s=5)
    with pytest.raises(Unreachable):  # a made-up network answers the same
        await node.router.request(
            phone, locks_address("n_none"), acquire("printer", ""), timeout_s=5
        )
    # Its own network's "printer" is another lock: free, whatever bob's holds.
    own = await node.router.request(
        phone, locks_address(net), acquire("printer", "user:bob"), timeout_s=5
    )
    assert isinstance(own, Granted)
    view = await node.ask(net, ViewLocks())
    assert [(i.name, i.holder) for i in view.items] == [("printer", "device:phone")]
    # A device of the other network cannot reach this one's manager either.
    with pytest.raises(Unreachable):
        await node.router.request(
            Address.of("device", other, "spy"),
            locks_address(net),
            acquire("y", ""),
            timeout_s=1,
        )
