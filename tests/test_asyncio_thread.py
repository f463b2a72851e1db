"""The bridge to asyncio (:class:`yggdrasil.AsyncioThread`): results, errors, bursts of calls,
cancellation, and the running-loop lookup beside trio-asyncio."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio
import trio_asyncio

from yggdrasil import AsyncioThread, open_asyncio_thread


async def test_results_and_errors_come_back_to_their_caller(bridge: AsyncioThread) -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def fail() -> None:
        raise KeyError("lost")

    assert await bridge.run(double, 21) == 42
    with pytest.raises(KeyError, match="lost"):
        await bridge.run(fail)


async def test_a_burst_of_calls_from_many_tasks_all_complete_each_with_its_own_answer(
    bridge: AsyncioThread,
) -> None:
    """Calls queue in one inbox and finished calls return through one hand-off: none may be
    lost or delivered to the wrong task, however they interleave."""
    answers: dict[int, int] = {}

    async def slow_square(x: int) -> int:
        await asyncio.sleep((x % 7) / 1000)
        return x * x

    async def caller(i: int) -> None:
        for round_ in range(20):
            n = i * 100 + round_
            answers[n] = await bridge.run(slow_square, n)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(caller, i)
    assert len(answers) == 1000
    assert all(value == key * key for key, value in answers.items())


async def test_a_cancelled_call_is_cancelled_where_it_runs_and_waited_for(
    bridge: AsyncioThread,
) -> None:
    state: list[str] = []

    async def long() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # cleanup that the trio side must wait for
            state.append("cleaned up")
            raise

    with trio.move_on_after(0.1) as scope:
        await bridge.run(long)
    assert scope.cancelled_caught
    assert state == ["cleaned up"]
    assert await bridge.run(asyncio.sleep, 0, "still serving") == "still serving"  # type: ignore[func-returns-value]


async def test_the_loop_lookup_finds_each_threads_own_loop_beside_trio_asyncio() -> None:
    """trio-asyncio replaces asyncio's running-loop lookup process-wide; the bridge puts a
    cheaper one in front. Both loops must still be found where they run."""
    async with open_asyncio_thread("lookup-test") as bridge, trio_asyncio.open_loop() as loop:

        async def where() -> tuple[asyncio.AbstractEventLoop, str]:
            return asyncio.get_running_loop(), threading.current_thread().name

        found, thread = await bridge.run(where)
        assert found is bridge.loop
        assert thread == "lookup-test"
        assert getattr(asyncio.events._get_running_loop, "_thread_first", False)

        # In trio, through trio-asyncio: its own loop, as before.
        found_here, _ = await trio_asyncio.aio_as_trio(where)()
        assert found_here is loop

        # Where no loop runs at all, still none.
        def outside() -> asyncio.AbstractEventLoop | None:
            return asyncio.events._get_running_loop()

        assert await trio.to_thread.run_sync(outside) is None


async def test_a_stopped_bridge_refuses_calls() -> None:
    async with open_asyncio_thread("stopping") as bridge:
        pass
    with pytest.raises(RuntimeError, match="not running"):
        await bridge.run(asyncio.sleep, 0)
