from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from actors import Mailbox, Overflow, Overloaded, Unreachable


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
