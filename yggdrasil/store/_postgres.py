"""The production backend: PostgreSQL through asyncpg, on the asyncio loop thread.

Each unit of work is one asyncio coroutine on the loop thread (:mod:`.._asyncio_thread`): it
checks out a pooled connection, runs and gives the connection back. A trio cancellation cancels
that coroutine where it runs - asyncpg then asks the server to cancel the statement - and the
caller waits until the connection is back in the pool, so cancellation never leaks a connection
or leaves a query running.

What a unit costs, and why (``docs/performance.md``):

- Reads run without a transaction: every connection starts with
  ``default_transaction_read_only = on``, so a read's implicit transaction cannot write, and at
  PostgreSQL's READ COMMITTED every statement sees its own snapshot, inside a transaction or
  not, so ``BEGIN``/``COMMIT`` around reads bought nothing but two round trips.
- Writes run in one ``BEGIN READ WRITE`` ... ``COMMIT`` each; ``write`` returns after the commit.
- No reset query on release: no code here sets session state (no ``SET``, ``LISTEN``, advisory
  lock or cursor), so asyncpg's ``RESET ALL; UNLISTEN *; ...`` round trip is skipped; an
  unfinished transaction is still rolled back.
- Statements are prepared once per connection (asyncpg's statement cache).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import asyncpg
import trio

from .._asyncio_thread import AsyncioThread
from .._crypto import Vault
from .._errors import ConfigError, StoreUnavailable, UniqueViolation
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


# Answers that no retry changes: the URL names a database or role that is not there, or the
# password is wrong. They are configuration errors, reported at once.
_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.ClientConfigurationError,
)


def _refused(url: str, exc: BaseException) -> ConfigError:
    """``PostgreSQL at postgresql://user@host/db: database "db" does not exist``; never the
    password."""
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError):
        return ConfigError(f"database.url {_redact(url)} is not a valid PostgreSQL URL: {exc}")
    return ConfigError(f"PostgreSQL at {_redact(url)}: {exc}")


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

    def __init__(self, pool: Any, url: str, query_timeout_s: float, bridge: AsyncioThread) -> None:
        self._pool = pool
        self._query_timeout_s = query_timeout_s
        self._bridge = bridge
        self.vault = Vault.ephemeral()
        # The URL without its password, for logs.
        self.description = "postgres:" + _redact(url)

    @classmethod
    async def open(
        cls,
        url: str,
        bridge: AsyncioThread,
        *,
        min_size: int,
        max_size: int,
        query_timeout_s: float,
    ) -> PostgresDatabase:
        """A pool on ``bridge``'s loop; close it (``aclose``) before the bridge stops."""

        async def create() -> Any:
            return await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                command_timeout=query_timeout_s,
                timeout=query_timeout_s,
                reset=_keep_session,
                server_settings={
                    "default_transaction_read_only": "on",
                    "application_name": "yggdrasil",
                },
            )

        try:
            pool = await bridge.run(create)
        except _REFUSED as exc:
            raise _refused(url, exc) from None
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from None
        return cls(pool, url, query_timeout_s, bridge)

    @staticmethod
    async def check_access(url: str, bridge: AsyncioThread, *, timeout_s: float) -> None:
        """One connection, closed at once: :class:`ConfigError` if the server refuses the
        database, role or password of ``url``. An unreachable server passes (opening the
        store retries it)."""

        async def connect() -> None:
            connection = await asyncpg.connect(url, timeout=timeout_s)
            await connection.close(timeout=timeout_s)

        try:
            await bridge.run(connect)
        except _REFUSED as exc:
            raise _refused(url, exc) from None
        except _UNAVAILABLE:
            pass

    async def read(self, work: Work[T]) -> T:
        return await self._run(self._read_unit, work)

    async def write(self, work: Work[T]) -> T:
        return await self._run(self._write_unit, work)

    async def ping(self) -> None:
        async def probe(tx: Any) -> Any:
            return await tx.fetchval("SELECT 1")

        await self.read(probe)

    async def aclose(self) -> None:
        with trio.move_on_after(self._query_timeout_s) as scope:
            scope.shield = True
            try:
                await self._bridge.run(self._pool.close)
            except Exception:  # closing a pool whose server is gone
                log.warning("closing the PostgreSQL pool failed", exc_info=True)
        if scope.cancelled_caught:
            self._pool.terminate()

    # on the loop thread

    async def _read_unit(self, work: Work[T]) -> T:
        async with self._pool.acquire(timeout=self._query_timeout_s) as connection:
            return await work(_PostgresTx(connection))

    async def _write_unit(self, work: Work[T]) -> T:
        async with self._pool.acquire(timeout=self._query_timeout_s) as connection:
            # READ WRITE: the connection's default is read-only (see the module docstring).
            await connection.execute("BEGIN READ WRITE")
            try:
                result = await work(_PostgresTx(connection))
            except BaseException:
                if not connection.is_closed():
                    try:
                        await connection.execute("ROLLBACK")
                    except Exception:  # the pool's release rolls back or drops it
                        log.debug("rollback failed", exc_info=True)
                raise
            await connection.execute("COMMIT")
            return result

    # on the trio thread

    async def _run(self, unit: Any, work: Work[T]) -> T:
        try:
            result: T = await self._bridge.run(unit, work)
        except asyncpg.exceptions.UniqueViolationError:
            raise UniqueViolation() from None
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}") from None
        return result


async def _keep_session(connection: Any) -> None:
    """The pool's reset: nothing beyond the rollback asyncpg always does (no session state is
    ever set here)."""


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}@{host}"
