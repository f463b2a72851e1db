"""Supervision in virtual time: restarts, strategies, intensity, backoff, ordered shutdown."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import trio
import trio.testing

from actors import ChildSpec, Escalated, Restart, Strategy, Supervisor


class Recorder:
    """Children that log their life and crash on demand."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []
        self.crash: dict[str, trio.Event] = {}

    def log(self, what: str) -> None:
        self.events.append((trio.current_time(), what))

    def names(self) -> list[str]:
        return [what for _, what in self.events]

    def spec(self, name: str, **options: Any) -> ChildSpec:
        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            self.crash[name] = trio.Event()
            self.log(f"start {name}")
            task_status.started()
            try:
                await self.crash[name].wait()
            except trio.Cancelled:
                self.log(f"stop {name}")
                raise
            self.log(f"crash {name}")
            raise RuntimeError(f"{name} crashed")

        return ChildSpec(name, run, **options)


def supervisor(children: list[ChildSpec], **options: Any) -> Supervisor:
    options.setdefault("jitter", 0.0)
    return Supervisor("test", children, rng=random.Random(1), **options)


async def test_crashed_child_is_restarted_alone(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sup = supervisor([rec.spec("a"), rec.spec("b")], strategy=Strategy.ONE_FOR_ONE)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert rec.names() == ["start a", "start b"]
        rec.crash["a"].set()
        await trio.sleep(1)
        assert rec.names() == ["start a", "start b", "crash a", "start a"]
        assert {s.id: s.restarts for s in sup.statistics()} == {"a": 1, "b": 0}
        sup.request_stop()
    # Reverse order on shutdown.
    assert rec.names()[-2:] == ["stop b", "stop a"]


async def test_one_for_all_restarts_everyone_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = Recorder()
    sup = supervisor([rec.spec("a"), rec.spec("b"), rec.spec("c")], strategy=Strategy.ONE_FOR_ALL)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        rec.crash["b"].set()
        await trio.sleep(1)
        sup.request_stop()
    assert rec.names()[3:10] == [
        "crash b",
        "stop c",
        "stop a",
        "start a",
        "start b",
        "start c",
        "stop c",
    ]


async def test_rest_for_one_restarts_the_failed_child_and_those_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = Recorder()
    sup = supervisor([rec.spec("a"), rec.spec("b"), rec.spec("c")], strategy=Strategy.REST_FOR_ONE)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        rec.crash["b"].set()
        await trio.sleep(1)
        assert rec.names()[3:] == ["crash b", "stop c", "start b", "start c"]
        sup.request_stop()


async def test_restart_types(autojump_clock: trio.testing.MockClock) -> None:
    runs: dict[str, int] = {"permanent": 0, "transient": 0, "temporary": 0}

    def returning(name: str) -> ChildSpec:
        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            runs[name] += 1
            task_status.started()
            await trio.sleep(10)

        return ChildSpec(name, run, restart=Restart(name))

    sup = supervisor(
        [returning("permanent"), returning("transient"), returning("temporary")],
        max_restarts=100,
        period_s=1.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(35)
        sup.request_stop()
    # A normal return restarts only the permanent child; the others are done and forgotten.
    assert runs["permanent"] == 4
    assert runs["transient"] == 1
    assert runs["temporary"] == 1
    assert [s.id for s in sup.statistics()] == ["permanent"]


async def test_intensity_exceeded_escalates_to_the_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts = 0

    async def always_crashes(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal attempts
        attempts += 1
        task_status.started()
        raise ValueError("boom")

    sup = supervisor([ChildSpec("bad", always_crashes)], max_restarts=3, period_s=10.0)
    with pytest.raises(Escalated, match="more than 3 restarts") as info:
        await sup.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert attempts == 4  # the first run and three restarts


async def test_escalation_reaches_a_grandparent(autojump_clock: trio.testing.MockClock) -> None:
    async def crashes(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        raise ValueError("boom")

    inner = supervisor([ChildSpec("bad", crashes)], max_restarts=1, period_s=10.0)
    outer = Supervisor("outer", [inner.as_child()], max_restarts=0, period_s=10.0)
    with pytest.raises(Escalated, match="supervisor outer") as info:
        await outer.run()
    assert isinstance(info.value.__cause__, Escalated)


async def test_backoff_doubles_between_restarts(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []

    async def crashes(*, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        task_status.started()
        raise ValueError("boom")

    sup = supervisor(
        [ChildSpec("bad", crashes)],
        max_restarts=4,
        period_s=100.0,
        backoff_base_s=1.0,
        backoff_max_s=3.0,
    )
    with pytest.raises(Escalated):
        await sup.run()
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 3.0, 3.0]  # doubling, capped


async def test_jitter_shortens_the_delay_within_bounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    async def crashes(*, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        task_status.started()
        raise ValueError("boom")

    sup = Supervisor(
        "jitter",
        [ChildSpec("bad", crashes)],
        max_restarts=6,
        period_s=1000.0,
        backoff_base_s=8.0,
        backoff_max_s=8.0,
        jitter=0.5,
        rng=random.Random(7),
    )
    with pytest.raises(Escalated):
        await sup.run()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(4.0 <= gap <= 8.0 for gap in gaps)
    assert len(set(gaps)) > 1


async def test_graceful_child_gets_its_grace_then_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, float]] = []

    async def polite(*, stopping: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await stopping.wait()
        await trio.sleep(1)  # finishing in-flight work
        log.append(("polite done", trio.current_time()))

    async def stubborn(*, stopping: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            log.append(("stubborn cancelled", trio.current_time()))

    sup = supervisor(
        [
            ChildSpec("polite", polite, graceful=True, shutdown_s=5),
            ChildSpec("stubborn", stubborn, graceful=True, shutdown_s=2),
        ]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        start = trio.current_time()
        sup.request_stop()
    # Reverse order: stubborn first (cancelled after its 2 s), then polite finishes in 1 s.
    assert log == [("stubborn cancelled", start + 2), ("polite done", start + 3)]


async def test_child_that_fails_to_start_fails_the_supervisor() -> None:
    async def broken(*, task_status: trio.TaskStatus[None]) -> None:
        raise OSError("port in use")

    sup = supervisor([ChildSpec("broken", broken)])
    with pytest.raises(OSError, match="port in use"):
        await sup.run()


async def test_dynamic_children(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sup = supervisor([])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await sup.start_child(rec.spec("x", restart=Restart.TEMPORARY))
        with pytest.raises(ValueError, match="exists"):
            await sup.start_child(rec.spec("x"))
        await sup.terminate_child("x")
        assert rec.names() == ["start x", "stop x"]
        assert sup.statistics() == []
        sup.request_stop()
