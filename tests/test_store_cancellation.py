"""Cancelling work on PostgreSQL: the statement stops on the server and the connection goes back
to the pool - for a unit of work cancelled in trio, and for an HTTP request whose client gave up
while its query waited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.clients import device, sign_in
from tests.servers import running_server
from yggdrasil import AsyncioThread, PostgresDatabase, Tx

pytestmark = pytest.mark.postgres


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


@asynccontextmanager
async def admin(bridge: AsyncioThread, url: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection of the test's own, on the bridge."""
    import asyncpg

    connection = await bridge.run(asyncpg.connect, url)
    try:
        yield connection
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run(connection.close)


async def server_side(bridge: AsyncioThread, connection: Any, url: str) -> list[dict[str, Any]]:
    """The server's view of the store's sessions (``application_name`` yggdrasil) in the test's
    database: their state and query."""
    rows = await bridge.run(
        connection.fetch,
        "SELECT state, query, wait_event_type FROM pg_stat_activity"
        " WHERE datname = $1 AND application_name = 'yggdrasil'",
        _database_name(url),
    )
    return [dict(row) for row in rows]


async def until_idle(bridge: AsyncioThread, connection: Any, url: str) -> list[dict[str, Any]]:
    """Wait (at most 5 s) until no store session runs a statement; their final view."""
    with trio.move_on_after(5):
        while True:
            sessions = await server_side(bridge, connection, url)
            if all(s["state"] == "idle" for s in sessions):
                return sessions
            await trio.sleep(0.05)
    return await server_side(bridge, connection, url)


async def test_a_cancelled_unit_stops_its_query_and_frees_its_connection(
    pg_database: str, bridge: AsyncioThread
) -> None:
    db = await PostgresDatabase.open(
        pg_database, bridge, min_size=1, max_size=1, query_timeout_s=30.0
    )
    try:

        async def sleep_long(tx: Tx) -> Any:
            return await tx.fetchval("SELECT pg_sleep(20)")

        async def one(tx: Tx) -> Any:
            return await tx.fetchval("SELECT 1")

        async with admin(bridge, pg_database) as watcher:
            started = trio.current_time()
            with trio.move_on_after(0.5) as waited:
                await db.read(sleep_long)
            assert waited.cancelled_caught
            # The caller got control back once the statement had stopped, not after 20 s.
            assert trio.current_time() - started < 5
            sessions = await until_idle(bridge, watcher, pg_database)
            assert sessions, "the store keeps its connection open"
            assert all(s["state"] == "idle" for s in sessions), sessions
            # The pool has one connection: the next unit gets it at once.
            with trio.fail_after(2):
                assert await db.read(one) == 1
    finally:
        await db.aclose()


async def test_a_cancelled_write_rolls_back(pg_database: str, bridge: AsyncioThread) -> None:
    db = await PostgresDatabase.open(
        pg_database, bridge, min_size=1, max_size=1, query_timeout_s=30.0
    )
    try:

        async def setup(tx: Tx) -> None:
            await tx.execute("CREATE TABLE scratch (n INTEGER)")

        async def insert_then_wait(tx: Tx) -> None:
            await tx.execute("INSERT INTO scratch VALUES (1)")
            await tx.fetchval("SELECT pg_sleep(20)")

        async def count(tx: Tx) -> Any:
            return await tx.fetchval("SELECT count(*) FROM scratch")

        await db.write(setup)
        with trio.move_on_after(0.5):
            await db.write(insert_then_wait)
        with trio.fail_after(2):
            assert await db.read(count) == 0
    finally:
        await db.aclose()


async def test_a_request_abandoned_by_its_client_stops_its_query(
    data_dir: Path, pg_database: str, bridge: AsyncioThread
) -> None:
    # One connection in the pool: if the abandoned request kept it, nothing else would run.
    database = {"url": pg_database, "pool_min": 1, "pool_max": 1}
    async with (
        running_server(data_dir, database=database) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
        admin(bridge, pg_database) as blocker,
        admin(bridge, pg_database) as watcher,
    ):
        user = await sign_in(http, data_dir / "outbox", "ada@example.org")
        assert (await user.post("/api/v1/devices", json=device("laptop"))).status_code == 201

        # Another session holds the devices table: the listing's query waits for the lock.
        await bridge.run(blocker.execute, "BEGIN; LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        async with httpx.AsyncClient(base_url=running.api_url, timeout=1.0) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.get("/api/v1/devices", headers=user.headers)
        # The client is gone: the server cancels the handler, and with it the statement.
        sessions = await until_idle(bridge, watcher, pg_database)
        assert sessions, "the store keeps its connection open"
        assert all(s["state"] == "idle" for s in sessions), sessions
        await bridge.run(blocker.execute, "ROLLBACK")

        # And the pool's only connection serves the next request.
        with trio.fail_after(5):
            listed = await user.get("/api/v1/devices")
        assert listed.status_code == 200
        assert [d["device_id"] for d in listed.json()["items"]] == ["laptop"]
