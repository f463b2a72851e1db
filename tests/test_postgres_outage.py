"""Losing PostgreSQL under a running server: 503, never a silent drop, and recovery after."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import PG_HOST, PG_PORT
from tests.servers import running_server

pytestmark = pytest.mark.postgres


class Proxy:
    """A TCP proxy to PostgreSQL that can cut every connection and refuse new ones."""

    def __init__(self) -> None:
        self.up = True
        self.port = 0
        self._scopes: set[trio.CancelScope] = set()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    def cut(self) -> None:
        self.up = False
        for scope in list(self._scopes):
            scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        if not self.up:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                upstream = await trio.open_tcp_stream(PG_HOST, PG_PORT)
            except OSError:
                upstream = None
            if upstream is not None:
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
        self._scopes.discard(scope)
        await trio.aclose_forcefully(client)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, both: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        both.cancel()  # one side is done: close both


async def test_lost_database_gives_503_and_recovers(data_dir: Path, pg_database: str) -> None:
    proxy = Proxy()
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        url = pg_database.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")
        async with (
            running_server(data_dir, database={"url": url, "query_timeout_s": 2.0}) as running,
            httpx.AsyncClient(base_url=running.api_url, timeout=10) as http,
        ):
            assert (await http.get("/readyz")).json() == {"status": "ready", "store": "postgres"}
            proxy.cut()
            for _ in range(3):
                down = await http.get("/readyz")
                assert down.status_code == 503
                assert down.json()["error"]["code"] == "store_unavailable"
            proxy.up = True
            for _ in range(100):  # the pool reconnects by itself
                if (await http.get("/readyz")).status_code == 200:
                    break
                await trio.sleep(0.1)
            else:
                pytest.fail("the store did not come back after the database did")
        nursery.cancel_scope.cancel()
