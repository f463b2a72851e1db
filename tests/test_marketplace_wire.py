"""The marketplace's requester side on the device wire, on each store backend: a device of the
buyer asks ``service/geri`` over its real websocket session (``compute_request``) and gets the
answer streamed from a provider agent's device (``yggdrasil provider run``, a subprocess) as
``compute_chunk`` frames and one ``compute_done``, charged to its user once; bad requests are
refused with ``compute_fail`` and change nothing; ``yggdrasil device ask`` does it by hand."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from benchmarks._harness import yggdrasil_command
from relay.client import ComputeRefused, Credentials, DeviceClient
from relay.protocol import encode
from tests.clients import User, device, payer, sign_in
from tests.marketplace_helpers import fund, provider_agent, provider_user, register
from yggdrasil.billing import compute_cost, fee
from yggdrasil.server import Running

PROMPT = "the quick brown fox jumps over the lazy dog"


def credentials(running: Running, session: dict[str, Any]) -> Credentials:
    return Credentials(
        api_url=running.api_url,
        gateway_url=running.gateway_url,
        device_id=session["device_id"],
        network_id=session["network_id"],
        access_token=session["access_token"],
        refresh_token=session["refresh_token"],
    )


@asynccontextmanager
async def connected(creds: Credentials) -> AsyncIterator[DeviceClient]:
    client = DeviceClient(creds)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(10):
            await client.wait_connected()
        yield client
        nursery.cancel_scope.cancel()


async def balance(user: User) -> dict[str, Any]:
    response = await user.get("/api/v1/billing/balance")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def seller_and_buyer(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> tuple[User, dict[str, Any], User, dict[str, Any]]:
    seller, provider_session = await provider_user(
        server, http, outbox, "seller@example.org", "gpu-box"
    )
    buyer = await payer(http, outbox, "buyer@example.org")
    await fund(buyer, 1000)
    phone = await sign_in(http, outbox, "buyer@example.org", device_body=device("phone"))
    return seller, provider_session, buyer, phone.session


async def test_a_device_asks_geri_and_gets_the_stream_charged_once(
    server: Running, http: httpx.AsyncClient, outbox: Path, tmp_path: Path
) -> None:
    seller, provider_session, buyer, phone = await seller_and_buyer(server, http, outbox)
    async with provider_agent(server, provider_session, tmp_path, "--model", "echo"):
        registered = await register(seller, "gpu-box", price=100)
        assert registered.status_code == 201, registered.text
        provider = registered.json()
        async with connected(credentials(server, phone)) as client:
            parts, done = await client.ask_all(
                "echo", [("user", PROMPT)], max_cost=50, key="wire-1", max_tokens=100
            )
            assert "".join(parts) == PROMPT
            assert len(parts) == 9  # streamed word by word, not whole
            assert done.state == "COMPLETED"
            assert done.provider_id == provider["provider_id"]
            assert (done.prompt_tokens, done.completion_tokens) == (9, 9)
            cost = compute_cost(18, 100)
            assert done.cost == cost == 2
            # The requester's device learns the opaque provider id and nothing else of it.
            wire = encode(done)
            for secret in (
                seller.session["user_id"],
                provider_session["network_id"],
                b"gpu-box",
                b"seller",
            ):
                assert (secret if isinstance(secret, bytes) else secret.encode()) not in wire

            # The same key and body: the same request, not a second charge.
            again, replayed = await client.ask_all(
                "echo", [("user", PROMPT)], max_cost=50, key="wire-1", max_tokens=100
            )
            assert replayed.request_id == done.request_id
            assert "".join(again) == PROMPT
            # It is the user's request like any other: readable over HTTP.
            seen = await buyer.get(f"/api/v1/marketplace/requests/{done.request_id}")
            assert seen.status_code == 200, seen.text
            assert seen.json()["answer"] == PROMPT

            before = await balance(buyer)
            assert before["balance"] == 1000 - cost
            assert before["held"] == 0

            # Refused before anything is held or written: a frame that says why.
            refusals: list[tuple[dict[str, Any], str]] = [
                ({"messages": [("robot", "hi")]}, "invalid"),
                ({"max_cost": 0}, "invalid"),
                ({"key": "a key with spaces"}, "invalid"),
                ({"max_tokens": 0}, "invalid"),
                ({"model": ""}, "invalid"),
                ({"max_cost": 5000, "key": "too-dear"}, "insufficient_funds"),
                ({"max_cost": 51, "key": "wire-1"}, "idempotency_key_reused"),
            ]
            for change, code in refusals:
                ask: dict[str, Any] = {
                    "model": "echo",
                    "messages": [("user", "hello")],
                    "max_cost": 10,
                    "key": f"bad-{code}",
                    "max_tokens": 100,
                    **change,
                }
                with pytest.raises(ComputeRefused) as refused:
                    await client.ask_all(
                        ask["model"],
                        ask["messages"],
                        max_cost=ask["max_cost"],
                        key=ask["key"],
                        max_tokens=ask["max_tokens"],
                    )
                assert refused.value.code == code, (change, refused.value)
                assert refused.value.message
            # A model nobody serves: the request ends FAILED, its hold released in full.
            parts, failed = await client.ask_all("llama-99", [("user", "hi")], max_cost=10)
            assert (parts, failed.state, failed.cost) == ([], "FAILED", 0)
            assert failed.error
            assert await balance(buyer) == before
            listed = await buyer.get("/api/v1/marketplace/requests/" + failed.request_id)
            assert listed.json()["state"] == "FAILED"

    seller_balance = await balance(seller)
    assert seller_balance["earnings"] == cost - fee(cost, 1000)
    check = await server.services.domain.get().ledger.verify()
    assert check.ok, check


async def test_yggdrasil_device_ask_prints_the_answer_as_it_streams(
    server: Running, http: httpx.AsyncClient, outbox: Path, tmp_path: Path
) -> None:
    seller, provider_session, buyer, phone = await seller_and_buyer(server, http, outbox)
    path = tmp_path / "phone.json"
    path.write_bytes(msgspec.json.encode(credentials(server, phone)))
    command = [*yggdrasil_command(), "device", "ask", "--credentials", str(path)]

    async def ask(*extra: str) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process(
            [*command, *extra], capture_stdout=True, capture_stderr=True, check=False
        )

    async with provider_agent(server, provider_session, tmp_path, "--model", "echo"):
        assert (await register(seller, "gpu-box", price=100)).status_code == 201
        answered = await ask("--model", "echo", "--max-cost", "20", PROMPT)
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.decode() == PROMPT + "\n"
        said = answered.stderr.decode().strip().splitlines()
        assert len(said) == 1, said
        assert "COMPLETED" in said[0], said
        assert "2 cents" in said[0], said
        assert "gpu-box" not in said[0]

        refused = await ask("--max-cost", "0", "hello")
        assert refused.returncode == 1
        line = refused.stderr.decode().strip()
        assert "\n" not in line
        assert "Traceback" not in line
        assert line.startswith("yggdrasil: the marketplace refused the request (invalid)"), line
    assert (await balance(buyer))["balance"] == 1000 - 2
    # What the CLI wrote to the credentials file is still a device's credentials.
    assert json.loads(path.read_text())["device_id"] == "phone"
