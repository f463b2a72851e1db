from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from actors import ByteBudget, Mailbox, Overflow, Overloaded, Unreachable


def test_capacity_must_be_a_positive_integer() -> None:
    for bad in (0, -1, math.inf, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            Mailbox(bad)  # type: ignore[arg-type]


async def test_reject_policy_tells_the_sender() -> None:
    box: Mailbox[int] = Mailbox(2, Overflow.REJECT)
    await box.put(1)
    await box.put(2)
    with pytest.raises(Overloaded):
        await box.put(3)
    stats = box.statistics()
    assert (stats.size, stats.peak, stats.rejected, stats.dropped) == (2, 2, 1, 0)
    assert [box.get_nowait(), box.get_nowait()] == [1, 2]


async def test_drop_oldest_keeps_the_newest() -> None:
    box: Mailbox[int] = Mailbox(3, Overflow.DROP_OLDEST)
    for i in range(10):
        await box.put(i)
    assert [box.get_nowait() for _ in range(3)] == [7, 8, 9]
    stats = box.statistics()
    assert stats.dropped == 7
    assert stats.delivered == 10
    assert stats.size == 0


async def test_wait_policy_blocks_until_there_is_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Mailbox[int] = Mailbox(1, Overflow.WAIT)
    await box.put(1)
    with pytest.raises(Overloaded):
        box.put_nowait(2)
    done = trio.Event()

    async def producer() -> None:
        await box.put(2)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.sleep(5)
        assert not done.is_set()  # still waiting: backpressure
        assert await box.get() == 1
        await done.wait()
    assert await box.get() == 2


async def test_closed_mailbox_is_unreachable_and_drains() -> None:
    box: Mailbox[str] = Mailbox(4)
    await box.put("a")
    box.close()
    with pytest.raises(Unreachable):
        await box.put("b")
    assert [item async for item in box] == ["a"]


# ----------------------------------------------------------------------------- bounded in bytes


def blob(size: int) -> bytes:
    return b"x" * size


def bytes_box(
    max_bytes: int, overflow: Overflow = Overflow.REJECT, **kwargs: object
) -> Mailbox[bytes]:
    return Mailbox(1000, overflow, max_bytes=max_bytes, sizer=len, **kwargs)  # type: ignore[arg-type]


def test_a_byte_bound_needs_a_sizer() -> None:
    with pytest.raises(ValueError, match="sizer"):
        Mailbox(10, max_bytes=100)
    with pytest.raises(ValueError, match="sizer"):
        Mailbox(10, budget=ByteBudget(100))


async def test_bytes_bound_a_mailbox_like_items_do() -> None:
    box = bytes_box(100)
    box.put_nowait(blob(60))
    with pytest.raises(Overloaded):
        box.put_nowait(blob(60))
    box.put_nowait(blob(40))
    assert box.queued_bytes == 100
    assert box.get_nowait() == blob(60)
    assert box.queued_bytes == 40
    box.put_nowait(blob(60))
    assert box.statistics().rejected == 1


async def test_an_empty_mailbox_takes_one_item_of_any_size() -> None:
    box = bytes_box(100)
    box.put_nowait(blob(1000))  # one frame larger than the bound still gets through
    with pytest.raises(Overloaded):
        box.put_nowait(blob(1))


async def test_drop_oldest_makes_room_in_bytes() -> None:
    box = bytes_box(100, Overflow.DROP_OLDEST)
    for size in (30, 30, 30, 50):
        box.put_nowait(blob(size))
    assert [len(box.get_nowait()), len(box.get_nowait())] == [30, 50]
    assert box.statistics().dropped == 2


async def test_waiting_for_bytes(autojump_clock: trio.testing.MockClock) -> None:
    box = bytes_box(100)
    box.put_nowait(blob(80))
    done = trio.Event()

    async def producer() -> None:
        await box.put(blob(50), overflow=Overflow.WAIT)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.sleep(1)
        assert not done.is_set()
        assert len(await box.get()) == 80
        await done.wait()
    assert box.queued_bytes == 50


async def test_a_cancelled_waiter_leaves_no_bytes_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Mailbox[bytes] = Mailbox(1, Overflow.WAIT, max_bytes=1000, sizer=len)
    box.put_nowait(blob(10))
    with trio.move_on_after(1):
        await box.put(blob(20))  # waits for item capacity, with its bytes reserved
    assert box.queued_bytes == 10


async def test_a_shared_budget_sheds_the_longest_backlog() -> None:
    budget = ByteBudget(300)
    shed: list[str] = []
    slow = bytes_box(1000, budget=budget, on_shed=lambda: shed.append("slow"))
    busy = bytes_box(1000, budget=budget, on_shed=lambda: shed.append("busy"))
    healthy = bytes_box(1000, budget=budget, on_shed=lambda: shed.append("healthy"))
    for _ in range(4):
        slow.put_nowait(blob(50))  # 200 bytes behind
    busy.put_nowait(blob(80))
    healthy.put_nowait(blob(10))
    assert budget.used == 290
    healthy.put_nowait(blob(20))  # past the budget: the slow one goes, not this one
    assert shed == ["slow"]
    assert slow.closed
    assert slow.queued_bytes == 0
    assert budget.used == 110
    assert budget.shed == 1
    assert slow.statistics().shed
    with pytest.raises(Unreachable):
        slow.put_nowait(blob(1))
    assert [len(healthy.get_nowait()), len(healthy.get_nowait())] == [10, 20]
    assert budget.used == 80


async def test_the_longest_backlog_shed_is_the_recipient_itself() -> None:
    budget = ByteBudget(100)
    box = bytes_box(1000, budget=budget)
    box.put_nowait(blob(90))
    with pytest.raises(Unreachable):
        box.put_nowait(blob(20))
    assert box.closed
    assert budget.used == 0
