"""The lock table of one network, without I/O: grants, waiters, leases, the wait-for graph.

Sans-IO (STYLE.md rules 4-6): no store, no tasks, no clock. Every call that depends on time
takes ``now`` (milliseconds on the wall clock), and :meth:`LockTable.next_deadline` says when
the driver (the ``locks/<network>`` actor) must call :meth:`LockTable.expire` next. The table
never grants by itself: it tells the driver which waiter is next (:meth:`LockTable.next_grants`);
the driver persists the grant, then :meth:`LockTable.install` makes it true here. So a grant is
in the store before anybody hears of it.

Waiters are served by priority (higher first), then arrival. A lease ends at ``expires_at``; an
ended lease is no grant, whatever the driver has done about it yet.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Grant:
    """A lease on one lock: ``holder`` holds ``name`` until ``expires_at``; ``token`` is its
    fencing token."""

    name: str
    holder: str
    token: int
    priority: int
    granted_at: int
    expires_at: int

    def live(self, now: int) -> bool:
        return now < self.expires_at


@dataclass(eq=False)
class Waiter:
    """An acquire that waits: served by ``priority``, then ``seq`` (arrival), until
    ``deadline``. ``ticket`` is the driver's (the request to answer); the table never reads it."""

    name: str
    holder: str
    priority: int
    lease_ms: int
    deadline: int
    since: int
    seq: int = 0
    ticket: Any = field(default=None, repr=False)
    session: str = ""

    def order(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


@dataclass(frozen=True)
class Deadlock:
    """A cycle in the wait-for graph and the waiter chosen to break it: the lowest priority of
    the cycle's waits, then the youngest. ``locks``: the cycle's locks, sorted."""

    victim: Waiter
    locks: list[str]


class LockTable:
    """Grants and waiters of one network's locks (see the module docstring)."""

    def __init__(self) -> None:
        self.grants: dict[str, Grant] = {}
        self.waiters: dict[str, list[Waiter]] = {}
        self._arrivals = itertools.count(1)

    # ----------------------------------------------------------------- reading

    def grant_of(self, name: str, now: int) -> Grant | None:
        """The live grant on ``name``, if any."""
        grant = self.grants.get(name)
        return grant if grant is not None and grant.live(now) else None

    def waiting(self) -> int:
        return sum(len(queue) for queue in self.waiters.values())

    def names(self) -> set[str]:
        """Every lock that is held or waited for."""
        return set(self.grants) | set(self.waiters)

    def next_deadline(self) -> int | None:
        """When the next lease ends or the next wait runs out; ``None``: nothing pending."""
        times = [g.expires_at for g in self.grants.values()]
        times += [w.deadline for queue in self.waiters.values() for w in queue]
        return min(times, default=None)

    # ----------------------------------------------------------------- changing

    def install(self, grant: Grant) -> None:
        """Make ``grant`` the one on its lock (the driver has persisted it)."""
        self.grants[grant.name] = grant

    def drop(self, name: str, token: int) -> Grant | None:
        """Forget the grant on ``name`` if it is the one with ``token``; it, or ``None``."""
        grant = self.grants.get(name)
        if grant is None or grant.token != token:
            return None
        del self.grants[name]
        return grant

    def enqueue(self, waiter: Waiter) -> None:
        waiter.seq = next(self._arrivals)
        queue = self.waiters.setdefault(waiter.name, [])
        queue.append(waiter)
        queue.sort(key=Waiter.order)

    def remove(self, waiter: Waiter) -> bool:
        queue = self.waiters.get(waiter.name)
        if queue is None or waiter not in queue:
            return False
        queue.remove(waiter)
        if not queue:
            del self.waiters[waiter.name]
        return True

    def remove_holder(
        self, holder: str, name: str | None = None, session: str | None = None
    ) -> list[Waiter]:
        """Every wait of ``holder`` (for ``name`` only, and of ``session`` only, if given),
        removed: it went away. Its grants stay until they end."""
        gone = [
            w
            for queue in self.waiters.values()
            for w in queue
            if w.holder == holder
            and (name is None or w.name == name)
            and (session is None or w.session == session)
        ]
        for waiter in gone:
            self.remove(waiter)
        return gone

    def expire(self, now: int) -> tuple[list[Grant], list[Waiter]]:
        """Remove the leases that ended and the waits that ran out by ``now``; both, in order."""
        ended = sorted(
            (g for g in self.grants.values() if not g.live(now)), key=lambda g: g.expires_at
        )
        for grant in ended:
            del self.grants[grant.name]
        late = sorted(
            (w for queue in self.waiters.values() for w in queue if w.deadline <= now),
            key=lambda w: (w.deadline, w.seq),
        )
        for waiter in late:
            self.remove(waiter)
        return ended, late

    def next_grants(self, now: int) -> list[Waiter]:
        """The first waiter of every lock that is free now: the driver grants each (and
        :meth:`install`\\ s it, and :meth:`remove`\\ s the waiter), in this order."""
        return [
            queue[0]
            for name, queue in sorted(self.waiters.items())
            if queue and self.grant_of(name, now) is None
        ]

    # ----------------------------------------------------------------- deadlocks

    def deadlock(self, now: int) -> Deadlock | None:
        """A cycle of the wait-for graph, if there is one, and its victim.

        An edge runs from a waiter's holder to the holder of the lock it waits for (a waiter
        waits for that grant to end). A holder may wait for several locks at once: each wait
        is an edge. Only live grants count.
        """
        edges: dict[str, list[tuple[str, Waiter]]] = {}
        for name, queue in sorted(self.waiters.items()):
            grant = self.grant_of(name, now)
            if grant is None:
                continue
            for waiter in queue:
                if waiter.holder != grant.holder:
                    edges.setdefault(waiter.holder, []).append((grant.holder, waiter))
        cycle = _find_cycle(edges)
        if cycle is None:
            return None
        victim = min(cycle, key=lambda w: (w.priority, -w.seq))
        return Deadlock(victim, sorted({w.name for w in cycle}))


def _find_cycle(edges: dict[str, list[tuple[str, Waiter]]]) -> list[Waiter] | None:
    """The waits along one cycle of the graph (iterative depth-first search), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path: list[tuple[str, Waiter | None]] = [(start, None)]
        iterators = [iter(edges.get(start, []))]
        state[start] = 1
        while iterators:
            step = next(iterators[-1], None)
            if step is None:
                node, _ = path.pop()
                iterators.pop()
                state[node] = 2
                continue
            target, waiter = step
            seen = state.get(target)
            if seen == 1:
                nodes = [node for node, _ in path]
                begin = nodes.index(target)
                waits = [w for _, w in path[begin + 1 :] if w is not None]
                return [*waits, waiter]
            if seen is None:
                state[target] = 1
                path.append((target, waiter))
                iterators.append(iter(edges.get(target, [])))
    return None
