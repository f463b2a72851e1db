"""Marketplace test helpers: a provider agent (``yggdrasil provider run``) as a subprocess, and
users set up as providers and requesters over the real HTTP API."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks._harness import yggdrasil_command
from tests.clients import User, device, sign_in
from yggdrasil.server import Running


class Agent:
    def __init__(self, process: trio.Process, device_id: str, seen: bytes) -> None:
        self.process = process
        self.device_id = device_id
        self.seen = seen
        """What the agent printed so far (read by :meth:`wait_for`)."""

    def kill(self) -> None:
        """SIGKILL: the agent dies at once, mid-job or not."""
        self.process.kill()

    async def wait_for(self, text: str, count: int = 1, timeout_s: float = 20) -> str:
        """Read the agent's output until ``text`` was printed ``count`` times; all of it."""
        assert self.process.stdout is not None
        with trio.fail_after(timeout_s):
            while self.seen.decode().count(text) < count:
                data = await self.process.stdout.receive_some(4096)
                assert data, f"the agent ended: {self.seen!r}"
                self.seen += data
        return self.seen.decode()


@asynccontextmanager
async def provider_agent(
    running: Running, session: dict[str, Any], where: Path, *extra: str
) -> AsyncIterator[Agent]:
    """``yggdrasil provider run`` for the device ``session`` signed in; waits until it says it
    is connected. Killed on the way out."""
    credentials = where / f"{session['device_id']}.json"
    credentials.write_text(
        json.dumps(
            {
                "api_url": running.api_url,
                "gateway_url": running.gateway_url,
                "device_id": session["device_id"],
                "network_id": session["network_id"],
                "access_token": session["access_token"],
                "refresh_token": session["refresh_token"],
            }
        )
    )
    command = [*yggdrasil_command(), "provider", "run", "--credentials", str(credentials), *extra]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        seen = b""
        with trio.fail_after(20):
            while b"connected" not in seen:
                data = await process.stdout.receive_some(4096)
                assert data, f"the agent ended: {seen!r}"
                seen += data
        yield Agent(process, session["device_id"], seen)
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def provider_user(
    running: Running,
    http: httpx.AsyncClient,
    outbox: Path,
    address: str,
    device_id: str,
    *,
    second: bool = False,
) -> tuple[User, dict[str, Any]]:
    """A user with a verified payout method (PayPal sandbox; with ``second``, a sandbox card,
    since a sandbox method belongs to one user) and a verified KYC (an operator's decision), and
    the session of one of their devices (signed in with that device)."""
    account = await sign_in(http, outbox, address)
    domain = running.services.domain.get()
    user_id = account.session["user_id"]
    await domain.kyc.submit(user_id, region="DE", reference="case-1")
    await domain.kyc.decide("ops", user_id, "verified")
    kind, token = ("card", "tok_sandbox_mastercard") if second else ("paypal", "tok_sandbox_paypal")
    method = await account.post(
        "/api/v1/payments/methods", json={"kind": kind, "token": token, "purposes": ["payout"]}
    )
    assert method.status_code == 201, method.text
    dev = await sign_in(http, outbox, address, device_body=device(device_id))
    return account, dev.session


async def register(
    account: User,
    device_id: str,
    price: int = 100,
    models: list[str] | None = None,
    **more: Any,
) -> httpx.Response:
    return await account.post(
        "/api/v1/marketplace/providers/register",
        json={"device_id": device_id, "models": models or ["echo"], "price_per_1k": price, **more},
    )


async def ask(
    user: User, key: str, content: str, *, model: str = "echo", max_cost: int = 50, **more: Any
) -> httpx.Response:
    """A request (JSON, 202) with this idempotency key."""
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return await user.request(
        "POST",
        "/api/v1/marketplace/requests",
        json={**body, "max_cost": max_cost, **more},
        headers={"Idempotency-Key": key},
    )


async def finished(user: User, request_id: str, timeout_s: float = 30) -> dict[str, Any]:
    """The request once it has ended (polled)."""
    with trio.fail_after(timeout_s):
        while True:
            found = await user.get(f"/api/v1/marketplace/requests/{request_id}")
            assert found.status_code == 200, found.text
            body: dict[str, Any] = found.json()
            if body["state"] not in ("PENDING", "PROCESSING"):
                return body
            await trio.sleep(0.05)


async def fund(user: User, amount: int) -> None:
    paid = await user.request(
        "POST",
        "/api/v1/payments/process",
        json={"amount": amount},
        headers={"Idempotency-Key": f"fund-{amount}"},
    )
    assert paid.status_code == 201, paid.text


def sse(text: str) -> list[tuple[str, Any]]:
    """The events of a server-sent event stream: (event, decoded data)."""
    events = []
    for block in text.split("\n\n"):
        kind, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        if data:
            events.append((kind, json.loads(data) if data != "[DONE]" else data))
    return events


@asynccontextmanager
async def market_server(data_dir: Path, backend: str, **marketplace: Any) -> AsyncIterator[Running]:
    """A whole server (this trio run) on ``backend`` with these ``[marketplace]`` settings."""
    from tests.clients import RELAXED_LIMITS
    from tests.conftest import fresh_pg_database
    from tests.servers import running_server

    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
        yield await stack.enter_async_context(
            running_server(
                data_dir, limits=RELAXED_LIMITS, database=database, marketplace=marketplace
            )
        )


async def balances(user: User) -> dict[str, Any]:
    found = await user.get("/api/v1/billing/balance")
    assert found.status_code == 200, found.text
    body: dict[str, Any] = found.json()
    return body
