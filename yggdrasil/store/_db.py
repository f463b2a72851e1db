"""What the store needs from a database backend, and the helpers both backends share.

A *unit of work* is a coroutine function ``work(tx)`` that only awaits the methods of its
:class:`Tx`. It is written once and runs on both backends: on SQLite it is driven synchronously
(its awaits never suspend), on PostgreSQL it runs as one asyncio coroutine on a pooled asyncpg
connection (the trio-asyncio advice: one coroutine per unit of work). It must not await anything
else. SQL uses ``$1``-style placeholders, which the SQLite backend rewrites to ``?1``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Literal, Protocol, TypeVar

from .._crypto import Vault

T = TypeVar("T")
Row = dict[str, Any]


class Tx(Protocol):
    """One database transaction."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; returns the number of rows it changed."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def execute_script(self, script: str) -> None:
        """Run several statements without parameters (migrations)."""


Work = Callable[[Tx], Coroutine[Any, Any, T]]


class Database(Protocol):
    vault: Vault
    """Seals and opens the personal data the rooms store (``_crypto``). Whoever opens the
    database sets the installation's; until then it is a keyring in memory only."""

    @property
    def dialect(self) -> Literal["sqlite", "postgres"]: ...

    @property
    def description(self) -> str:
        """Where the data lives, without secrets, for logs."""

    async def read(self, work: Work[T]) -> T:
        """Run ``work`` read-only. On SQLite it sees one snapshot; on PostgreSQL each statement
        runs on its own (no ``BEGIN``), so a read that must see several tables at one instant
        puts them in one statement."""

    async def write(self, work: Work[T]) -> T:
        """Run ``work`` in a read-write transaction; returns after the commit is durable.

        Raises ``StoreUnavailable`` when the database cannot be reached (nothing was written),
        ``UniqueViolation`` for a duplicate key.
        """

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers."""

    async def aclose(self) -> None: ...


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a unit of work whose awaits never suspend, synchronously, to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a unit of work awaited something other than its transaction")
