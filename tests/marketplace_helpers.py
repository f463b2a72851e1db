"""Marketplace test helpers: a provider agent (``yggdrasil provider run``) as a subprocess, and
users set up as providers and requesters over the real HTTP API."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks._harness import yggdrasil_command
from tests.clients import User, device, sign_in
from yggdrasil.server import Running


class Agent:
    def __init__(self, process: trio.Process, device_id: str) -> None:
        self.process = process
        self.device_id = device_id

    def kill(self) -> None:
        self.process.kill()


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
        yield Agent(process, session["device_id"])
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def provider_user(
    running: Running, http: httpx.AsyncClient, outbox: Path, address: str, device_id: str
) -> tuple[User, dict[str, Any]]:
    """A user with a verified payout method (PayPal sandbox) and a verified KYC (an operator's
    decision), and the session of one of their devices (signed in with that device)."""
    account = await sign_in(http, outbox, address)
    domain = running.services.domain.get()
    user_id = account.session["user_id"]
    await domain.kyc.submit(user_id, region="DE", reference="case-1")
    await domain.kyc.decide("ops", user_id, "verified")
    method = await account.post(
        "/api/v1/payments/methods",
        json={"kind": "paypal", "token": "tok_sandbox_paypal", "purposes": ["payout"]},
    )
    assert method.status_code == 201, method.text
    dev = await sign_in(http, outbox, address, device_body=device(device_id))
    return account, dev.session


async def register(
    account: User, device_id: str, price: int = 100, models: list[str] | None = None
) -> httpx.Response:
    return await account.post(
        "/api/v1/marketplace/providers/register",
        json={"device_id": device_id, "models": models or ["echo"], "price_per_1k": price},
    )


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
