"""Shared fixtures: the two store backends, and PostgreSQL databases made fresh per test."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio_asyncio

from yggdrasil import (
    AsyncioThread,
    Database,
    PostgresDatabase,
    SqliteDatabase,
    Store,
    migrate,
    open_asyncio_thread,
)
from yggdrasil.server import Running

PG_HOST = os.environ.get("YGG_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("YGG_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("YGG_TEST_PG_USER", "postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"


def postgres_reachable() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    """Skip without PostgreSQL, except in CI, where a missing server is a failure."""
    if postgres_reachable():
        return
    if IN_CI:
        pytest.fail(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} (CI=true)")
    pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}")


def pg_url(database: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


async def _admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(pg_url("postgres"))
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    await trio_asyncio.aio_as_trio(run)()


@pytest.fixture
async def asyncio_loop() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop():
        yield


@pytest.fixture
async def bridge() -> AsyncIterator[AsyncioThread]:
    """The asyncio loop thread that asyncpg and nats-py run on."""
    async with open_asyncio_thread("test-asyncio") as thread:
        yield thread


@pytest.fixture
async def pg_database(asyncio_loop: None) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test; its URL. Dropped afterwards."""
    require_postgres()
    async with fresh_pg_database() as url:
        yield url


@asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    name = f"ygg_test_{secrets.token_hex(6)}"
    await _admin(f"CREATE DATABASE {name}")
    try:
        yield pg_url(name)
    finally:
        with trio.CancelScope(shield=True):
            await _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgres":
        require_postgres()
    return name


@pytest.fixture
async def database(
    backend: str, tmp_path: Path, asyncio_loop: None, bridge: AsyncioThread
) -> AsyncIterator[Database]:
    """A migrated database on each backend."""
    async with AsyncExitStack() as stack:
        db: Database
        if backend == "sqlite":
            db = await SqliteDatabase.open(tmp_path / "store.sqlite3")
        else:
            url = await stack.enter_async_context(fresh_pg_database())
            db = await PostgresDatabase.open(
                url, bridge, min_size=1, max_size=4, query_timeout_s=10.0
            )
        stack.push_async_callback(db.aclose)
        await migrate(db)
        yield db


@pytest.fixture
def store(database: Database) -> Store:
    return Store(database)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def server(data_dir: Path, backend: str, asyncio_loop: None) -> AsyncIterator[Running]:
    """The whole server in this trio run, on each store backend, with relaxed rate limits."""
    from tests.clients import RELAXED_LIMITS
    from tests.servers import running_server

    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
        yield await stack.enter_async_context(
            running_server(data_dir, limits=RELAXED_LIMITS, database=database)
        )


@pytest.fixture
async def http(server: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.api_url, timeout=30) as client:
        yield client


@pytest.fixture
def outbox(data_dir: Path) -> Path:
    return data_dir / "outbox"
