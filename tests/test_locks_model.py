"""A Hypothesis state machine of random acquire, renew, release, expire (time passing) and crash
steps against a network's lock manager on a real SQLite store, in virtual time: no two holders
ever believe they hold one lock at the same time, and each lock's fencing tokens grow in the
order its grants are heard of.

A holder believes it holds a lock from the moment it hears the grant (or a renewal) until the
lease it was told of ends, or until it sends the release. A crash ends the whole instance at
once, mid-request; the next instance starts from the store.
"""

from __future__ import annotations

import itertools
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from yggdrasil.locks import Granted, LockFailed, Released

from .locks_harness import Instance, acquire, instance, new_network, open_inline, release, renew
from .locks_harness import wall_ms as now

HOLDERS = ["user:a", "user:b", "user:c", "device:d"]
LOCKS = ["x", "y"]
LEASES = [500, 2_000, 8_000]
NEVER = 2**62
"""The token of a renewal or release by a holder that believes it holds nothing: never one the
store hands out, so such a request can only be refused."""

holder = st.sampled_from(HOLDERS)
lock = st.sampled_from(LOCKS)
acquires = st.tuples(
    st.just("acquire"),
    holder,
    lock,
    st.sampled_from(LEASES),
    st.sampled_from([0, 0, 1_000, 6_000]),
    st.integers(-2, 2),
)
renewals = st.tuples(st.just("renew"), holder, lock, st.sampled_from(LEASES))
releases = st.tuples(st.just("release"), holder, lock)
time_passes = st.tuples(st.just("advance"), st.sampled_from([1, 250, 1_200, 5_000]))
crashes = st.tuples(st.just("crash"))
step = st.one_of(
    acquires, acquires, acquires, renewals, releases, releases, time_passes, time_passes, crashes
)


@dataclass
class Belief:
    """What one holder was told about one grant: when it believed it held it."""

    lock: str
    holder: str
    token: int
    heard_at: int
    segments: list[list[int]] = field(default_factory=list)
    released: bool = False
    """The holder sent its release: whatever it hears of this grant later, it is done with it."""

    def holds(self, at: int) -> bool:
        return any(start <= at < end for start, end in self.segments)

    def release(self, at: int) -> None:
        self.released = True
        for segment in self.segments:
            segment[1] = min(segment[1], at)


class World:
    def __init__(self, network: str) -> None:
        self.network = network
        self.beliefs: dict[tuple[str, int], Belief] = {}
        self.node: Instance | None = None
        self.grants = 0

    def held_by(self, who: str, name: str) -> Belief | None:
        at = now()
        for belief in self.beliefs.values():
            if belief.holder == who and belief.lock == name and belief.holds(at):
                return belief
        return None

    def heard(self, who: str, answer: Any) -> None:
        if not isinstance(answer, Granted):
            assert isinstance(answer, (LockFailed, Released, Exception)), answer
            return
        at = now()
        key = (answer.name, answer.token)
        belief = self.beliefs.get(key)
        if belief is None:
            belief = self.beliefs[key] = Belief(answer.name, who, answer.token, at)
            self.grants += 1
        assert belief.holder == who, "one token, two holders"
        if at < answer.expires_at and not belief.released:
            belief.segments.append([at, answer.expires_at])

    async def ask(self, who: str, body: Any) -> None:
        node = self.node
        assert node is not None
        self.heard(who, await node.ask(self.network, body, timeout_s=30))


def check(world: World) -> None:
    by_lock: dict[str, list[Belief]] = {}
    for belief in world.beliefs.values():
        by_lock.setdefault(belief.lock, []).append(belief)
    for name, beliefs in by_lock.items():
        spans = sorted(
            (start, end, b.token, b.holder) for b in beliefs for start, end in b.segments
        )
        for (_, e1, t1, h1), (s2, _, t2, h2) in itertools.pairwise(spans):
            if t1 != t2:
                assert e1 <= s2, f"{name}: {h1} (token {t1}) and {h2} (token {t2}) overlap"
        heard = sorted(beliefs, key=lambda b: (b.heard_at, b.token))
        tokens = [b.token for b in heard]
        assert tokens == sorted(tokens), f"{name}: tokens heard out of order {tokens}"


async def run_steps(steps: list[tuple[Any, ...]]) -> World:
    with tempfile.TemporaryDirectory() as folder:
        db = await open_inline(Path(folder) / "locks.sqlite3")
        try:
            world = World(await new_network(db))
            async with trio.open_nursery() as clients, AsyncExitStack() as running:
                world.node = await running.enter_async_context(instance(db))
                for kind, *args in steps:
                    match kind:
                        case "acquire":
                            who, name, lease, wait, priority = args
                            body = acquire(name, who, lease, priority=priority, wait_ms=wait)
                            clients.start_soon(world.ask, who, body)
                        case "renew":
                            who, name, lease = args
                            belief = world.held_by(who, name)
                            token = belief.token if belief is not None else NEVER
                            clients.start_soon(world.ask, who, renew(name, who, token, lease))
                        case "release":
                            who, name = args
                            belief = world.held_by(who, name)
                            if belief is not None:
                                belief.release(now())  # it stops believing as it asks
                            token = belief.token if belief is not None else NEVER
                            clients.start_soon(world.ask, who, release(name, who, token))
                        case "advance":
                            await trio.sleep(args[0] / 1000)
                        case "crash":
                            world.node.crash()
                            await running.aclose()
                            world.node = await running.enter_async_context(instance(db))
                    await trio.lowlevel.checkpoint()
                # Every lease has ended by now: each lock is free, for a token larger than any.
                await trio.sleep(max(LEASES) / 1000 + 40)
                for name in LOCKS:
                    answer = await world.node.ask(world.network, acquire(name, "user:last"))
                    assert isinstance(answer, Granted), answer
                    world.heard("user:last", answer)
                    seen = [b.token for b in world.beliefs.values() if b.lock == name]
                    assert answer.token == max(seen)
                clients.cancel_scope.cancel()
            return world
        finally:
            await db.aclose()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=5, max_size=40))
def test_no_lock_ever_has_two_holders(steps: list[tuple[Any, ...]]) -> None:
    world = trio.run(run_steps, steps, clock=trio.testing.MockClock(autojump_threshold=0))
    check(world)
    target(float(world.grants))  # lean towards runs with many grants
    STATS.append((len(steps), world.grants, sum(s[0] == "crash" for s in steps)))
    assert world.grants >= len(LOCKS)  # the final acquires at least: the run made progress


STATS: list[tuple[int, int, int]] = []


def test_the_checker_sees_two_holders() -> None:
    """The invariant this file checks can fail: two overlapping beliefs on one lock."""
    world = World("n")
    world.beliefs[("x", 1)] = Belief("x", "user:a", 1, 0, [[0, 100]])
    world.beliefs[("x", 2)] = Belief("x", "user:b", 2, 50, [[50, 150]])
    with pytest.raises(AssertionError, match="overlap"):
        check(world)
