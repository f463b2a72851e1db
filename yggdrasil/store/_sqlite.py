"""The embedded backend: stdlib sqlite3 in WAL mode.

Reads run on the event loop thread on a read-only connection: an indexed read costs less than the
thread hop (PERFORMANCE.md), and WAL lets it read a consistent snapshot while a write commits.

Writes run on a worker thread on their own connection (SQLite has one writer), so a commit never
blocks the event loop, and they are batched where they queue (group commit): the writes waiting
when the thread is free go together into one transaction, each in a savepoint of its own, so
one that fails is rolled back alone and the others still commit. Nobody hears of their write
before that transaction has committed. A batch is run by one of its writers (the first to
arrive leads; when it is done, the next waiting writer takes over), so no task outlives its
callers. ``synchronous=NORMAL`` in WAL mode survives a process crash (kill -9) without losing a
committed transaction.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections import deque
from pathlib import Path
from typing import Any, Generic, Literal

import outcome
import trio

from .._crypto import Vault
from .._errors import StoreUnavailable, UniqueViolation
from ._db import Row, T, Work, drive

_PLACEHOLDER = re.compile(r"\$(\d+)")
_BATCH = 128


@functools.lru_cache(maxsize=1024)
def _translate(sql: str) -> str:
    return _PLACEHOLDER.sub(r"?\1", sql)


def _dict_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, values, strict=True)}


class _SqliteTx:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._c = connection

    async def execute(self, sql: str, *args: Any) -> int:
        return self._c.execute(_translate(sql), args).rowcount

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return self._c.execute(_translate(sql), args).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = self._c.execute(_translate(sql), args).fetchone()
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = self._c.execute(_translate(sql), args).fetchone()
        return None if row is None else next(iter(row.values()))

    async def execute_script(self, script: str) -> None:
        statement = ""
        for line in script.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                self._c.execute(statement)
                statement = ""
        if statement.strip():
            raise ValueError("script ends inside an unfinished statement")


def _mapped(exc: Exception) -> Exception:
    """A duplicate key becomes :class:`UniqueViolation`; anything else stays itself."""
    if isinstance(exc, sqlite3.IntegrityError) and (
        "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc)
    ):
        return UniqueViolation()
    return exc


def _unavailable(exc: sqlite3.OperationalError) -> bool:
    """Whether the error is about reaching the database rather than about the statement."""
    text = str(exc).lower()
    return any(word in text for word in ("locked", "disk", "unable to open", "readonly", "busy"))


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    connection.row_factory = _dict_row
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA busy_timeout = 5000")
    if readonly:
        connection.execute("PRAGMA query_only = ON")
    else:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
    return connection


class _Write(Generic[T]):
    """One queued write and the task waiting for it."""

    __slots__ = ("lead", "result", "taken", "task", "work")

    def __init__(self, work: Work[T]) -> None:
        self.work = work
        self.task = trio.lowlevel.current_task()
        self.taken = False
        """In a batch that has started: it will finish, whatever happens to its caller."""
        self.lead = False
        self.result: outcome.Outcome[T] | None = None


class SqliteDatabase:
    dialect: Literal["sqlite"] = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"sqlite:{path}"
        self._writer = _connect(path, readonly=False)
        self._reader = _connect(path, readonly=True)
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False
        self.vault = Vault.ephemeral()
        self._queue: deque[_Write[Any]] = deque()
        self._leading = False
        self.stats = {"writes": 0, "batches": 0}
        """Writes run, and the transactions they took (fewer when writes queue)."""

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        try:
            return await trio.to_thread.run_sync(cls, path)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {path}: {exc}") from None

    async def read(self, work: Work[T]) -> T:
        self._check_open()
        return self._in_transaction(self._reader, "BEGIN", work)

    async def write(self, work: Work[T]) -> T:
        """Cancellation: a write still queued is dropped; one whose batch has started finishes
        (commit or rollback), the caller gets its result, and the cancellation takes effect at
        its next checkpoint."""
        self._check_open()
        mine = _Write(work)
        self._queue.append(mine)
        if self._leading:

            def abort(_: object) -> trio.lowlevel.Abort:
                if mine.taken or mine.lead:
                    return trio.lowlevel.Abort.FAILED  # rescheduled when it is done
                self._queue.remove(mine)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            self._leading = True
            mine.lead = True
        if mine.lead:
            await self._lead(mine)
        assert mine.result is not None
        return mine.result.unwrap()

    async def _lead(self, mine: _Write[Any]) -> None:
        """Run batches from the queue until ``mine`` is done; then hand the lead on."""
        try:
            while mine.result is None:
                batch: list[_Write[Any]] = []
                while self._queue and len(batch) < _BATCH:
                    item = self._queue.popleft()
                    item.taken = True
                    batch.append(item)
                # Shielded: the batch holds other callers' writes, and once SQLite has them
                # they finish anyway.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._run_batch, batch, limiter=self._limiter)
                self.stats["writes"] += len(batch)
                self.stats["batches"] += 1
                for item in batch:
                    if item is not mine:
                        trio.lowlevel.reschedule(item.task)
        finally:
            if self._queue:
                successor = self._queue[0]
                successor.lead = True
                trio.lowlevel.reschedule(successor.task)
            else:
                self._leading = False

    def _run_batch(self, batch: list[_Write[Any]]) -> None:
        """On the worker thread: every write of ``batch`` in one transaction, each in a
        savepoint; every one gets its outcome."""
        connection = self._writer
        try:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            self._begin(connection, "BEGIN IMMEDIATE")
            committed: list[tuple[_Write[Any], Any]] = []
            try:
                for item in batch:
                    connection.execute("SAVEPOINT unit")
                    try:
                        value = drive(item.work(_SqliteTx(connection)))
                    except sqlite3.OperationalError as exc:
                        if _unavailable(exc):
                            raise StoreUnavailable(str(exc)) from None
                        connection.execute("ROLLBACK TO unit")
                        connection.execute("RELEASE unit")
                        item.result = outcome.Error(exc)
                    except Exception as exc:
                        connection.execute("ROLLBACK TO unit")
                        connection.execute("RELEASE unit")
                        item.result = outcome.Error(_mapped(exc))
                    else:
                        connection.execute("RELEASE unit")
                        committed.append((item, value))
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            for item, value in committed:
                item.result = outcome.Value(value)
        except sqlite3.OperationalError as exc:
            failure: BaseException = StoreUnavailable(str(exc)) if _unavailable(exc) else exc
            for item in batch:
                item.result = outcome.Error(failure)
        except BaseException as exc:  # the whole transaction failed: none of it was written
            for item in batch:
                item.result = outcome.Error(exc)

    async def ping(self) -> None:
        self._check_open()
        try:
            self._reader.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._limiter:
            self._reader.close()
            self._writer.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the store is closed")

    @staticmethod
    def _begin(connection: sqlite3.Connection, begin: str) -> None:
        try:
            connection.execute(begin)
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from None

    @classmethod
    def _in_transaction(cls, connection: sqlite3.Connection, begin: str, work: Work[T]) -> T:
        cls._begin(connection, begin)
        try:
            result = drive(work(_SqliteTx(connection)))
            connection.execute("COMMIT")
            return result
        except sqlite3.OperationalError as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if _unavailable(exc):
                raise StoreUnavailable(str(exc)) from None
            raise
        except Exception as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            mapped = _mapped(exc)
            if mapped is exc:
                raise
            raise mapped from None
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
