"""The embedded backend: stdlib sqlite3 in WAL mode.

Writes run on a worker thread, one at a time (SQLite has one writer), on their own connection, so
a commit never blocks the event loop. Reads run on the event loop thread on a second, read-only
connection: an indexed read costs less than the thread hop (PERFORMANCE.md), and WAL lets it read a
consistent snapshot while a write commits. ``synchronous=NORMAL`` in WAL mode survives a process
crash (kill -9) without losing a committed transaction.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from pathlib import Path
from typing import Any, Literal

import trio

from .._errors import StoreUnavailable, UniqueViolation
from ._db import Row, T, Work, drive

_PLACEHOLDER = re.compile(r"\$(\d+)")


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


class SqliteDatabase:
    dialect: Literal["sqlite"] = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"sqlite:{path}"
        self._writer = _connect(path, readonly=False)
        self._reader = _connect(path, readonly=True)
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False

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
        self._check_open()
        # Not abandoned on cancellation: once started, a write finishes (commit or rollback) and
        # the caller learns which.
        return await trio.to_thread.run_sync(
            self._in_transaction, self._writer, "BEGIN IMMEDIATE", work, limiter=self._limiter
        )

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
    def _in_transaction(connection: sqlite3.Connection, begin: str, work: Work[T]) -> T:
        try:
            connection.execute(begin)
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from None
        try:
            result = drive(work(_SqliteTx(connection)))
            connection.execute("COMMIT")
            return result
        except sqlite3.IntegrityError as exc:
            connection.execute("ROLLBACK")
            if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
                raise UniqueViolation() from None
            raise
        except sqlite3.OperationalError as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if _unavailable(exc):
                raise StoreUnavailable(str(exc)) from None
            raise
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
