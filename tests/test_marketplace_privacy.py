"""The marketplace in a user's data export and account deletion, on both backends, with a real
provider agent: the requester's export has their requests with prompts and answers and their
disputes; the provider's has their registration and what they served, without the requester's
prompt, answer or id. Deleting either account removes the registration and pseudonymizes the
requests and disputes (what the user wrote is erased); the amounts stay for the books."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients import payer
from tests.marketplace_helpers import (
    ask,
    finished,
    fund,
    market_server,
    provider_agent,
    provider_user,
    register,
)
from yggdrasil import Tx
from yggdrasil.server import Running

PROMPT = "my very private prompt about seven kittens"


@pytest.fixture
async def server(data_dir: Path, backend: str, asyncio_loop: None) -> AsyncIterator[Running]:
    async with market_server(data_dir, backend) as running:
        yield running


async def rows(server: Running, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def read(tx: Tx) -> list[dict[str, Any]]:
        return await tx.fetch(sql, *args)

    return await server.services.domain.get().store.db.read(read)


async def test_export_and_deletion_cover_the_marketplace(
    server: Running, http: httpx.AsyncClient, outbox: Path, tmp_path: Path
) -> None:
    seller, session = await provider_user(server, http, outbox, "seller@example.org", "box")
    buyer = await payer(http, outbox, "buyer@example.org")
    await fund(buyer, 1000)
    seller_id, buyer_id = seller.session["user_id"], buyer.session["user_id"]
    async with provider_agent(server, session, tmp_path):
        registered = await register(seller, "box")
        assert registered.status_code == 201, registered.text
        request_id = (await ask(buyer, "k1", PROMPT)).json()["request_id"]
        done = await finished(buyer, request_id)
    assert done["state"] == "COMPLETED"
    txn = (await buyer.get("/api/v1/marketplace/transactions")).json()["items"][0]
    disputed = await buyer.post(
        f"/api/v1/marketplace/transactions/{txn['transaction_id']}/dispute",
        json={"reason": "the kittens were wrong"},
    )
    assert disputed.status_code in (200, 201), disputed.text

    mine = (await buyer.get("/api/v1/users/me/export")).json()["marketplace"]
    assert [r["request_id"] for r in mine["requests"]] == [request_id]
    assert mine["requests"][0]["messages"][0]["content"] == PROMPT
    assert mine["requests"][0]["answer"] == done["answer"]
    assert mine["providers"] == []
    assert mine["served"] == []
    assert [(d["role"], d["reason"]) for d in mine["disputes"]] == [
        ("requester", "the kittens were wrong")
    ]
    assert seller_id not in json.dumps(mine)

    theirs = (await seller.get("/api/v1/users/me/export")).json()["marketplace"]
    assert [p["provider_id"] for p in theirs["providers"]] == [registered.json()["provider_id"]]
    assert theirs["providers"][0]["models"] == ["echo"]
    assert [r["request_id"] for r in theirs["served"]] == [request_id]
    assert theirs["served"][0]["earnings"] == txn["provider_earnings"]
    assert theirs["requests"] == []
    assert [d["role"] for d in theirs["disputes"]] == ["provider"]
    text = json.dumps(theirs)
    assert buyer_id not in text
    assert PROMPT not in text
    assert "messages" not in theirs["served"][0]
    assert "answer" not in theirs["served"][0]

    # The requester goes: their requests and disputes stay for the books, pseudonymized.
    assert (await buyer.delete("/api/v1/users/me")).status_code == 204
    request = (
        await rows(server, "SELECT * FROM marketplace_requests WHERE request_id = $1", request_id)
    )[0]
    assert request["user_id"] != buyer_id
    assert request["user_id"].startswith("gone_")
    assert (request["messages"], request["answer"], request["fingerprint"]) == ("[]", "", "")
    assert request["cost"] == txn["cost"]
    assert request["provider_user_id"] == seller_id
    dispute = (await rows(server, "SELECT * FROM marketplace_disputes"))[0]
    assert (dispute["user_id"], dispute["reason"]) == (request["user_id"], "")
    for table in ("marketplace_requests", "marketplace_disputes"):
        found = await rows(server, f"SELECT 1 FROM {table} WHERE user_id = $1", buyer_id)
        assert found == []
    # the seller still has their side
    served = (await seller.get("/api/v1/users/me/export")).json()["marketplace"]["served"]
    assert [r["request_id"] for r in served] == [request_id]

    # The provider goes: the registration is removed, their side pseudonymized.
    assert (await seller.delete("/api/v1/users/me")).status_code == 204
    found = await rows(server, "SELECT 1 FROM marketplace_providers WHERE user_id = $1", seller_id)
    assert found == []
    for table in ("marketplace_requests", "marketplace_disputes"):
        found = await rows(server, f"SELECT 1 FROM {table} WHERE provider_user_id = $1", seller_id)
        assert found == []
    left = await rows(server, "SELECT cost, earnings FROM marketplace_requests")
    assert left == [{"cost": txn["cost"], "earnings": txn["provider_earnings"]}]
