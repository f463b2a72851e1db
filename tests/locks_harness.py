"""A network's lock manager on a real store, for tests: started under its supervisor by the
router on first use (as in the server), reached only through the router, and crashed with its
whole instance on demand."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from actors import Address, Codec, InProcessHub, Placement, RequestTimeout, Router, Unreachable
from yggdrasil import Database, SqliteDatabase, Store, migrate, tenant_rule
from yggdrasil._config import LocksConfig
from yggdrasil.locks import (
    LOCK_MESSAGES,
    Abandon,
    Acquire,
    Granted,
    LockFailed,
    LockView,
    Release,
    Released,
    Renew,
    ViewLocks,
    WallClock,
    lock_managers,
    locks_address,
)
from yggdrasil.store import Tx

T = TypeVar("T")


class InlineSqlite(SqliteDatabase):
    """The real SQL on a real SQLite file, with writes run on the trio thread (reads already
    are): under an autojumping ``MockClock`` virtual time cannot move while a write runs."""

    async def write(self, work: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        self._check_open()
        result = self._in_transaction(self._writer, "BEGIN IMMEDIATE", work)
        await trio.lowlevel.checkpoint()
        return result


async def open_inline(path: Path) -> InlineSqlite:
    db = InlineSqlite(path)
    await migrate(db)
    return db


async def new_network(db: Database, email: str = "ada@example.org") -> str:
    """A user's home network (lock grants belong to a network that exists)."""
    _, home = await Store(db).create_user(email)
    return home.network_id


CODEC = Codec(*LOCK_MESSAGES)
_instances = itertools.count(1)
_clock: tuple[object, WallClock] | None = None


class Instance:
    """One instance's router with the ``locks`` kind; requests come from ``service/test``."""

    def __init__(self, router: Router, nursery: trio.Nursery) -> None:
        self.router = router
        self.nursery = nursery
        self.me = Address.of("service", "test")

    async def ask(self, network_id: str, body: Any, *, timeout_s: float = 30.0) -> Any:
        try:
            return await self.router.request(
                self.me, locks_address(network_id), body, timeout_s=timeout_s
            )
        except (RequestTimeout, Unreachable) as exc:
            return exc

    def crash(self) -> None:
        """The instance dies: its lock managers end at once, mid-whatever."""
        self.nursery.cancel_scope.cancel()


def wall_ms() -> int:
    """The wall clock the instances of this test run read (as they read it)."""
    global _clock
    if _clock is None or _clock[0] is not trio.lowlevel.current_root_task():
        _clock = (trio.lowlevel.current_root_task(), WallClock())
    return _clock[1]()


@asynccontextmanager
async def instance(
    db: Database, config: LocksConfig | None = None, hub: InProcessHub | None = None
) -> AsyncIterator[Instance]:
    """An instance with lock managers over ``db``; crashed (cancelled) on the way out. Every
    instance of a test run reads one wall clock (that moves with a ``MockClock``)."""
    wall_ms()
    assert _clock is not None
    store = Store(db)
    hub = hub or InProcessHub(CODEC)
    router = Router(f"i{next(_instances)}", hub.bus(), rule=tenant_rule)
    router.define("service", placement=Placement.INSTANCE)
    supervisor = lock_managers(
        router, "locks", lambda: store.locks, config or LocksConfig(), clock=_clock[1]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(router.bus.serve)
        await nursery.start(supervisor.run)
        yield Instance(router, nursery)
        nursery.cancel_scope.cancel()


def acquire(
    name: str, holder: str, lease_ms: int = 10_000, *, priority: int = 0, wait_ms: int = 0
) -> Acquire:
    return Acquire(name, lease_ms, priority, wait_ms, holder)


def renew(name: str, holder: str, token: int, lease_ms: int = 10_000) -> Renew:
    return Renew(name, token, lease_ms, holder)


def release(name: str, holder: str, token: int) -> Release:
    return Release(name, token, holder)


__all__ = [
    "Abandon",
    "Granted",
    "InlineSqlite",
    "Instance",
    "LockFailed",
    "LockView",
    "Released",
    "ViewLocks",
    "acquire",
    "instance",
    "new_network",
    "open_inline",
    "release",
    "renew",
]
