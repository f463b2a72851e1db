"""The lock manager of one network: a virtual actor at ``locks/<network>``.

The first envelope to ``locks/<network>`` starts it wherever that lands in the cluster, and the
directory keeps it single; it stops after ``locks.idle_s`` with no grant and no waiter. It drives
a :class:`LockTable` (the decisions) and a :class:`LockStore` (the truth):

- on start it loads the network's live grants from the store, so a restarted or moved manager
  never grants a lock that is still held (grants live until their lease ends);
- a grant is written to the store (compare-and-set, with the network's next fencing token)
  before the table or anybody else hears of it, so tokens only grow and one lock never has two
  holders, whichever instance writes;
- a side task wakes at the table's next deadline: ended leases are reclaimed (the device that
  held one hears ``LockLost``), waits that ran out are answered ``timeout``, free locks go to
  their next waiter, and cycles of waits are broken (``deadlock``).

Waiting acquires live only in this actor's memory: when it dies or moves, their requests time
out at the requester (the session or the API answers ``timeout``), and the requester may ask
again. Everything that changes the table runs under one lock, in arrival order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Callable

import trio

from actors import Actor, Address, Envelope, Overloaded, Router, Supervisor, Unreachable

from .._addresses import DEVICE, SERVICE, device_address
from .._config import LocksConfig
from .._errors import NotFound, StoreUnavailable
from ._messages import (
    Abandon,
    Acquire,
    FailureCode,
    Granted,
    LockFailed,
    LockInfo,
    LockLost,
    LockView,
    Release,
    Released,
    Renew,
    ViewLocks,
    WaiterInfo,
)
from ._store import LockStore
from ._table import Grant, LockTable, Waiter

log = logging.getLogger(__name__)

LOCK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
"""A lock's name: 1-128 characters, letters, digits and ``._:/-``, not starting with a sign."""
MIN_LEASE_MS = 100
MAX_PRIORITY = 1000
"""Priorities run from ``-MAX_PRIORITY`` to ``MAX_PRIORITY``; higher is served first."""
_RETRY_MS = 500
"""After the store refused a grant for being unreachable, try again this much later."""


class WallClock:
    """Milliseconds on the wall clock that move with trio's clock: the store's times mean the
    same on every instance, and a test's ``MockClock`` drives leases."""

    def __init__(self) -> None:
        self._offset = time.time() - trio.current_time()

    def __call__(self) -> int:
        return int((trio.current_time() + self._offset) * 1000)


def holder_of(src: Address, network_id: str, claimed: str) -> str | None:
    """Who is asking: a device of the network acts as ``device:<id>`` (its body cannot say
    otherwise); a service names the holder it checked; anybody else is nobody."""
    if src.kind == DEVICE:
        segments = src.segments
        if len(segments) == 2 and segments[0] == network_id:
            return f"device:{segments[1]}"
        return None
    if src.kind == SERVICE and claimed:
        return claimed
    return None


class LockManager(Actor):
    mailbox_capacity = 1024

    def __init__(
        self,
        address: Address,
        stores: Callable[[], LockStore],
        config: LocksConfig,
        clock: Callable[[], int] | None = None,
    ) -> None:
        """``stores()``: the lock store of the running store (raises ``StoreUnavailable``
        while it restarts). ``clock()``: wall-clock milliseconds; by default a
        :class:`WallClock` made when the manager starts."""
        super().__init__(address)
        self.network_id = address.key
        self.idle_timeout_s = config.idle_s
        self.config = config
        self.table = LockTable()
        self._stores = stores
        self._state = trio.Lock()
        self._wake = trio.Event()
        self._retry = False
        self._given_clock = clock
        self._clock: Callable[[], int] = clock or (lambda: int(time.time() * 1000))

    def idle(self) -> bool:
        return not self.table.grants and not self.table.waiters

    def now(self) -> int:
        return self._clock()

    async def on_start(self) -> None:
        self._clock = self._given_clock or WallClock()
        # Without the grants of the store nothing may be granted: a manager that cannot read
        # them does not start (its senders see it unreachable, and ask again).
        store = self._stores()
        for grant in await store.live_grants(self.network_id, self.now()):
            self.table.install(grant)
        await store.forget_ended(self.network_id, self.now())  # left by a manager that died
        log.debug("locks=%s started with %d grants", self.network_id, len(self.table.grants))
        self.nursery.start_soon(self._timers)

    async def handle(self, envelope: Envelope) -> None:
        async with self._state:
            match envelope.body:
                case Acquire() as acquire:
                    await self._acquire(envelope, acquire)
                case Renew() as renew:
                    await self._renew(envelope, renew)
                case Release() as release:
                    await self._release(envelope, release)
                case Abandon(holder=claimed, name=name, session=session):
                    holder = holder_of(envelope.src, self.network_id, claimed)
                    if holder is not None:
                        gone = self.table.remove_holder(holder, name or None, session or None)
                        for waiter in gone:
                            await self._fail(waiter.ticket, waiter.name, "timeout", "abandoned")
                case ViewLocks(after=after, limit=limit):
                    if envelope.src.kind == SERVICE:
                        await self._answer(envelope, self._view(after, limit))
                case _:
                    log.warning(
                        "locks=%s ignored %s", self.network_id, type(envelope.body).__name__
                    )
            await self._sweep()
        self._wake.set()

    # ----------------------------------------------------------------- requests

    def _invalid(self, name: str, lease_ms: int | None, priority: int, wait_ms: int) -> str | None:
        if not LOCK_NAME.match(name):
            return "a lock name is 1-128 letters, digits and ._:/- (not starting with a sign)"
        if lease_ms is not None and not MIN_LEASE_MS <= lease_ms <= self.config.max_lease_ms:
            return f"lease_ms must be from {MIN_LEASE_MS} to {self.config.max_lease_ms}"
        if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            return f"priority must be from {-MAX_PRIORITY} to {MAX_PRIORITY}"
        if not 0 <= wait_ms <= self.config.max_wait_ms:
            return f"wait_ms must be from 0 to {self.config.max_wait_ms}"
        return None

    async def _acquire(self, envelope: Envelope, body: Acquire) -> None:
        name = body.name
        holder = holder_of(envelope.src, self.network_id, body.holder)
        if holder is None:
            return
        problem = self._invalid(name, body.lease_ms, body.priority, body.wait_ms)
        if problem is not None:
            await self._fail(envelope, name, "invalid", problem)
            return
        now = self.now()
        current = self.table.grant_of(name, now)
        if current is not None and current.holder == holder:
            await self._answer(envelope, _granted(current, now))  # asked again: the same grant
            return
        known = name in self.table.names()
        if not known and len(self.table.names()) >= self.config.max_locks:
            await self._fail(envelope, name, "overloaded", "too many locks in this network")
            return
        if current is None and not self.table.waiters.get(name):
            try:
                grant = await self._grant(name, holder, body.priority, body.lease_ms)
            except StoreUnavailable:
                await self._fail(envelope, name, "unavailable", "the store is unavailable")
                return
            except NotFound:
                await self._fail(envelope, name, "not_found", "not found")
                return
            if grant is not None:
                await self._answer(envelope, _granted(grant, self.now()))
                return
        if body.wait_ms == 0:
            await self._fail(envelope, name, "busy", f"{name} is held")
            return
        if self.table.waiting() >= self.config.max_waiters:
            await self._fail(envelope, name, "overloaded", "too many waiters in this network")
            return
        self.table.enqueue(
            Waiter(
                name=name,
                holder=holder,
                priority=body.priority,
                lease_ms=body.lease_ms,
                deadline=now + body.wait_ms,
                since=now,
                ticket=envelope,
                session=body.session,
            )
        )

    async def _renew(self, envelope: Envelope, body: Renew) -> None:
        name = body.name
        holder = holder_of(envelope.src, self.network_id, body.holder)
        if holder is None:
            return
        problem = self._invalid(name, body.lease_ms, 0, 0)
        if problem is not None:
            await self._fail(envelope, name, "invalid", problem)
            return
        now = self.now()
        current = self.table.grant_of(name, now)
        if current is None or current.holder != holder or current.token != body.token:
            await self._fail(envelope, name, "not_held", f"no live grant {body.token} on {name}")
            return
        try:
            renewed = await self._stores().renew(
                self.network_id, name, body.token, now, body.lease_ms
            )
        except StoreUnavailable:
            await self._fail(envelope, name, "unavailable", "the store is unavailable")
            return
        if not renewed:
            await self._reload(name)
            await self._fail(envelope, name, "not_held", f"no live grant {body.token} on {name}")
            return
        grant = Grant(
            name, holder, current.token, current.priority, current.granted_at, now + body.lease_ms
        )
        self.table.install(grant)
        await self._answer(envelope, _granted(grant, now))

    async def _release(self, envelope: Envelope, body: Release) -> None:
        name = body.name
        holder = holder_of(envelope.src, self.network_id, body.holder)
        if holder is None:
            return
        if not LOCK_NAME.match(name):
            await self._fail(envelope, name, "invalid", "not a lock name")
            return
        current = self.table.grant_of(name, self.now())
        if current is None or current.holder != holder or current.token != body.token:
            await self._fail(envelope, name, "not_held", f"no live grant {body.token} on {name}")
            return
        try:
            released = await self._stores().release(self.network_id, name, body.token)
        except StoreUnavailable:
            await self._fail(envelope, name, "unavailable", "the store is unavailable")
            return
        if not released:
            await self._reload(name)
            await self._fail(envelope, name, "not_held", f"no live grant {body.token} on {name}")
            return
        self.table.drop(name, body.token)
        await self._answer(envelope, Released(name, body.token))

    def _view(self, after: str | None, limit: int) -> LockView:
        now = self.now()
        limit = max(1, min(limit, 100))
        items: list[LockInfo] = []
        names = sorted(n for n in self.table.names() if after is None or n > after)
        for name in names[: limit + 1]:
            grant = self.table.grant_of(name, now)
            waiters = [
                WaiterInfo(w.holder, w.priority, now - w.since, max(0, w.deadline - now))
                for w in self.table.waiters.get(name, [])
            ]
            items.append(
                LockInfo(
                    name=name,
                    holder=None if grant is None else grant.holder,
                    token=None if grant is None else grant.token,
                    priority=None if grant is None else grant.priority,
                    age_ms=None if grant is None else now - grant.granted_at,
                    expires_in_ms=None if grant is None else grant.expires_at - now,
                    waiters=waiters,
                )
            )
        more = len(items) > limit
        return LockView(items[:limit], items[limit - 1].name if more else None)

    # ----------------------------------------------------------------- the table's upkeep

    async def _grant(self, name: str, holder: str, priority: int, lease_ms: int) -> Grant | None:
        """Write a grant to the store and the table; ``None`` if the store says the lock is
        held (by a grant this manager did not know: it learns it now)."""
        store = self._stores()
        grant = await store.grant(self.network_id, name, holder, priority, self.now(), lease_ms)
        if grant is None:
            await self._reload(name)
            return None
        self.table.install(grant)
        return grant

    async def _reload(self, name: str) -> None:
        """Take the store's word for one lock."""
        with contextlib.suppress(StoreUnavailable):
            row = await self._stores().current(self.network_id, name)
            known = self.table.grants.get(name)
            if row is not None and row.live(self.now()):
                self.table.install(row)
            elif known is not None:
                self.table.drop(name, known.token)

    async def _sweep(self) -> None:
        """Reclaim ended leases, answer waits that ran out, grant free locks to their next
        waiter, and break cycles of waits."""
        self._retry = False
        ended, late = self.table.expire(self.now())
        for waiter in late:
            await self._fail(waiter.ticket, waiter.name, "timeout", f"{waiter.name} stayed held")
        for grant in ended:
            log.debug("locks=%s lease on %s ended", self.network_id, grant.name)
            if grant.holder.startswith("device:"):
                device = device_address(self.network_id, grant.holder.removeprefix("device:"))
                with contextlib.suppress(Unreachable, Overloaded):
                    await self.router.send(
                        Envelope(self.address, device, LockLost(grant.name, grant.token)),
                        activate=False,
                    )
        if ended:
            with contextlib.suppress(StoreUnavailable):
                await self._stores().forget(self.network_id, ended)
        for waiter in self.table.next_grants(self.now()):
            try:
                given = await self._grant(
                    waiter.name, waiter.holder, waiter.priority, waiter.lease_ms
                )
            except StoreUnavailable:
                self._retry = True
                continue
            except NotFound:
                self.table.remove(waiter)
                await self._fail(waiter.ticket, waiter.name, "not_found", "not found")
                continue
            if given is not None:
                self.table.remove(waiter)
                await self._answer(waiter.ticket, _granted(given, self.now()))
        while (found := self.table.deadlock(self.now())) is not None:
            victim = found.victim
            self.table.remove(victim)
            log.info(
                "locks=%s deadlock through %s: the wait of %s for %s fails",
                self.network_id,
                ", ".join(found.locks),
                victim.holder,
                victim.name,
            )
            message = f"waiting for {victim.name} closes a cycle of waits through " + ", ".join(
                found.locks
            )
            await self._fail(victim.ticket, victim.name, "deadlock", message, found.locks)

    async def _timers(self) -> None:
        """Sweep at the table's next deadline (or soon, after the store refused a grant); a
        handled envelope wakes it to look again."""
        while True:
            self._wake = trio.Event()
            deadline: float = self.table.next_deadline() or math.inf
            if self._retry:
                deadline = min(deadline, self.now() + _RETRY_MS)
            delay = (deadline - self.now()) / 1000
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._wake.wait()
                continue
            async with self._state:
                await self._sweep()

    # ----------------------------------------------------------------- answers

    async def _answer(self, request: Envelope, body: Granted | Released | LockView) -> None:
        with contextlib.suppress(Unreachable, Overloaded):  # the requester has gone
            await self.reply(request, body)

    async def _fail(
        self,
        request: Envelope,
        name: str,
        code: FailureCode,
        message: str,
        locks: list[str] | None = None,
    ) -> None:
        with contextlib.suppress(Unreachable, Overloaded):
            await self.reply(request, LockFailed(name, code, message, locks or []))


def _granted(grant: Grant, now: int) -> Granted:
    return Granted(grant.name, grant.token, max(0, grant.expires_at - now), grant.expires_at)


def lock_managers(
    router: Router,
    kind: str,
    stores: Callable[[], LockStore],
    config: LocksConfig,
    *,
    clock: Callable[[], int] | None = None,
) -> Supervisor:
    """The ``locks`` supervisor, and ``router``'s virtual kind ``kind`` that runs under it: the
    first envelope to ``<kind>/<network>`` starts that network's lock manager (``stores`` and
    ``clock`` as in :class:`LockManager`). Put :meth:`Supervisor.as_child` in the tree."""
    managers = Supervisor("locks", max_restarts=20, period_s=10.0)

    def make(address: Address) -> LockManager:
        return LockManager(address, stores, config, clock)

    router.define(kind, factory=make, supervisor=managers, shutdown_s=1.0)
    return managers
