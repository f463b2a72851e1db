"""``yggdrasil serve`` killed with SIGKILL while clients settle money: after the restart every
acknowledged operation is there exactly once, nothing is half done, and no hold is left holding
money (the start-up reconciliation released the expired ones)."""

from __future__ import annotations

import contextlib
import itertools
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.clients import User, payer
from tests.conftest import fresh_pg_database
from tests.servers import ServerProcess, server_process
from yggdrasil import AsyncioThread, Database, PostgresDatabase, SqliteDatabase
from yggdrasil._config import LedgerConfig
from yggdrasil.billing import Ledger

pytestmark = pytest.mark.slow

HOLD_TTL_S = 2
ENV = {
    **{
        f"YGG_LIMITS_{name}": "100000"
        for name in (
            "PER_CLIENT_RATE",
            "PER_CLIENT_BURST",
            "PER_PRINCIPAL_RATE",
            "PER_PRINCIPAL_BURST",
            "AUTH_PER_CLIENT_RATE",
            "AUTH_PER_CLIENT_BURST",
        )
    },
    "YGG_LEDGER_HOLD_TTL_S": str(HOLD_TTL_S),
}
ACKNOWLEDGED_BEFORE_KILL = 150


@pytest.fixture
async def database_url(backend: str, asyncio_loop: None) -> AsyncIterator[str]:
    """Empty for SQLite (in the data directory), else a fresh PostgreSQL database."""
    if backend == "sqlite":
        yield ""
        return
    async with fresh_pg_database() as url:
        yield url


class Request:
    """One money-moving request: sent with its key, perhaps answered."""

    def __init__(self, user: User, path: str, body: dict[str, Any] | None, key: str) -> None:
        self.user, self.path, self.body, self.key = user, path, body, key
        self.answer: tuple[int, Any] | None = None

    async def send(self) -> tuple[int, Any]:
        response = await self.user.request(
            "POST", self.path, json=self.body, headers={"Idempotency-Key": self.key}
        )
        return response.status_code, response.json()


async def settle(users: list[User], server: ServerProcess) -> list[Request]:
    """Clients deposit, hold, capture part and release or leave holds open, until the server is
    killed under them; every request they sent."""
    sent: list[Request] = []
    acknowledged = 0
    killed = trio.Event()
    numbers = itertools.count()

    async def call(user: User, path: str, body: dict[str, Any] | None) -> Any:
        nonlocal acknowledged
        request = Request(user, path, body, f"k{next(numbers)}")
        sent.append(request)
        request.answer = await request.send()
        status, answer = request.answer
        assert status in (200, 201), answer
        acknowledged += 1
        if acknowledged >= ACKNOWLEDGED_BEFORE_KILL and not killed.is_set():
            server.process.send_signal(signal.SIGKILL)
            killed.set()
        return answer

    async def client(user: User, n: int) -> None:
        with contextlib.suppress(httpx.TransportError):
            for i in itertools.count():
                await call(user, "/api/v1/payments/process", {"amount": 500})
                hold = await call(user, "/api/v1/billing/holds", {"amount": 300})
                path = f"/api/v1/billing/holds/{hold['hold_id']}"
                await call(user, f"{path}/capture", {"amount": 100 + n})
                if i % 2:
                    await call(user, f"{path}/release", None)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for user in users:
                for n in range(3):
                    nursery.start_soon(client, user, n)
    assert killed.is_set()
    return sent


async def all_entries(user: User) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = (await user.get("/api/v1/billing/entries", params=params)).json()
        found += page["items"]
        if page["next_cursor"] is None:
            return found
        params["cursor"] = page["next_cursor"]


async def test_sigkill_during_settlements_loses_and_doubles_nothing(
    tmp_path: Path, backend: str, database_url: str, bridge: AsyncioThread
) -> None:
    data_dir = tmp_path / "data"
    extra = ("--database-url", database_url) if database_url else ()
    with contextlib.ExitStack() as stack:
        server = await trio.to_thread.run_sync(
            stack.enter_context, server_process(data_dir, *extra, env=ENV)
        )
        async with httpx.AsyncClient(base_url=server.api_url, timeout=30) as http:
            users = [
                await payer(http, data_dir / "outbox", f"payer{n}@example.org", token)
                for n, token in enumerate(("tok_sandbox_visa", "tok_sandbox_mastercard"))
            ]
            sent = await settle(users, server)
        await trio.to_thread.run_sync(server.process.wait)
    acknowledged = [r for r in sent if r.answer is not None]
    in_flight = [r for r in sent if r.answer is None]
    assert len(acknowledged) >= ACKNOWLEDGED_BEFORE_KILL
    await trio.sleep(HOLD_TTL_S + 0.5)  # every hold placed before the kill has expired

    with contextlib.ExitStack() as stack:
        server = await trio.to_thread.run_sync(
            stack.enter_context, server_process(data_dir, *extra, env=ENV)
        )
        async with httpx.AsyncClient(base_url=server.api_url, timeout=30) as http:
            for user in users:
                user.http = http
                balance = (await user.get("/api/v1/billing/balance")).json()
                assert balance["held"] == 0, "start-up released every expired hold"
            # Every acknowledged request, sent again, answers exactly as before and books nothing.
            before = {id(u): await all_entries(u) for u in users}
            for request in acknowledged:
                request.user.http = http
                assert await request.send() == request.answer, request.path
            assert {id(u): await all_entries(u) for u in users} == before
            # What was in flight is all there or not at all: sent again, it completes once.
            for request in in_flight:
                request.user.http = http
                request.answer = await request.send()
            holds = {
                r.answer[1]["hold_id"]
                for r in sent
                if r.path.endswith("/holds") and r.answer is not None and r.answer[0] == 201
            }
            for hold_id in holds:  # a hold booked only now is released now
                for user in users:
                    await user.request(
                        "POST",
                        f"/api/v1/billing/holds/{hold_id}/release",
                        headers={"Idempotency-Key": f"end-{hold_id}"},
                    )
            for user in users:
                entries = await all_entries(user)
                done = [
                    (r.path, r.answer[1])
                    for r in sent
                    if r.user is user and r.answer is not None and r.answer[0] in (200, 201)
                ]
                deposits = {a["transaction_id"] for path, a in done if "process" in path}
                captures = {a["transaction_id"] for path, a in done if "capture" in path}
                booked = {e["transaction_id"] for e in entries}
                assert deposits <= booked
                assert captures <= booked
                kinds = [e["kind"] for e in entries if e["account"] == "balance"]
                assert kinds.count("deposit") == len(deposits)
                assert [e["kind"] for e in entries if e["account"] == "held"].count(
                    "capture"
                ) == len(captures)
                balance = (await user.get("/api/v1/billing/balance")).json()
                assert balance["held"] == 0
                paid = sum(a["amount"] for path, a in done if "process" in path)
                spent = sum(a["amount"] for path, a in done if "capture" in path)
                assert balance["balance"] == paid - spent
        await trio.to_thread.run_sync(server.terminate)

    db: Database
    if database_url:
        db = await PostgresDatabase.open(
            database_url, bridge, min_size=1, max_size=2, query_timeout_s=10
        )
    else:
        db = await SqliteDatabase.open(data_dir / "yggdrasil.sqlite3")
    try:
        check = await Ledger(db, LedgerConfig()).verify()
    finally:
        await db.aclose()
    assert check.ok, check
