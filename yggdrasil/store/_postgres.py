"""The production backend: PostgreSQL through asyncpg, on trio-asyncio.

Each unit of work is one asyncio coroutine: it checks out a pooled connection, runs the whole
transaction and gives the connection back. trio cancels it as one piece, and asyncpg's pool
releases (or terminates) the connection on the way out, so cancellation never leaks a connection.
Requires a running trio-asyncio loop (``trio_asyncio.open_loop()``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import asyncpg
import trio
import trio_asyncio

from .._errors import StoreUnavailable, UniqueViolation
from ._db import Row, T, Work

log = logging.getLogger(__name__)

# Errors that mean "the database is not there", as opposed to "your statement is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
)


class _PostgresTx:
    def __init__(self, connection: Any) -> None:
        self._c = connection

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._c.execute(sql, *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(record) for record in await self._c.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        record = await self._c.fetchrow(sql, *args)
        return None if record is None else dict(record)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._c.fetchval(sql, *args)

    async def execute_script(self, script: str) -> None:
        await self._c.execute(script)


class PostgresDatabase:
    dialect: Literal["postgres"] = "postgres"

    def __init__(self, pool: Any, url: str, query_timeout_s: float) -> None:
        self._pool = pool
        self._query_timeout_s = query_timeout_s
        # The URL without its password, for logs.
        self.description = "postgres:" + _redact(url)

    @classmethod
    async def open(
        cls, url: str, *, min_size: int, max_size: int, query_timeout_s: float
    ) -> PostgresDatabase:
        async def create() -> Any:
            return await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                command_timeout=query_timeout_s,
                timeout=query_timeout_s,
            )

        try:
            pool = await trio_asyncio.aio_as_trio(create)()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from None
        return cls(pool, url, query_timeout_s)

    async def read(self, work: Work[T]) -> T:
        return await self._run(work, readonly=True)

    async def write(self, work: Work[T]) -> T:
        return await self._run(work, readonly=False)

    async def ping(self) -> None:
        async def probe(tx: Any) -> Any:
            return await tx.fetchval("SELECT 1")

        await self._run(probe, readonly=True)

    async def aclose(self) -> None:
        with trio.move_on_after(self._query_timeout_s) as scope:
            scope.shield = True
            try:
                await trio_asyncio.aio_as_trio(self._pool.close)()
            except Exception:  # closing a pool whose server is gone
                log.warning("closing the PostgreSQL pool failed", exc_info=True)
        if scope.cancelled_caught:
            self._pool.terminate()

    async def _run(self, work: Work[T], *, readonly: bool) -> T:
        async def unit() -> T:
            async with (
                self._pool.acquire(timeout=self._query_timeout_s) as connection,
                connection.transaction(readonly=readonly),
            ):
                return await work(_PostgresTx(connection))

        try:
            result: T = await trio_asyncio.aio_as_trio(unit)()
        except asyncpg.exceptions.UniqueViolationError:
            raise UniqueViolation() from None
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}") from None
        return result


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}@{host}"
