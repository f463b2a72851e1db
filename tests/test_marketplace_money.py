"""The money after a mix, with real agents: requests served, a failover, a max-cost cut, a
cancelled request, disputes resolved with a partial and a full refund. The ledger verifies and
requester payments = provider earnings + company fees - refunds, to the cent; the transactions,
disputes and analytics routes say the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.clients import payer, sign_in
from tests.marketplace_helpers import (
    ask,
    balances,
    finished,
    fund,
    market_server,
    provider_agent,
    provider_user,
    register,
)
from yggdrasil.billing import company_account
from yggdrasil.server import Running

PROMPT = "one two three four five six seven eight"


@pytest.fixture
async def server(data_dir: Path, backend: str, asyncio_loop: None) -> AsyncIterator[Running]:
    async with market_server(data_dir, backend, first_token_timeout_s=1.5) as running:
        yield running


async def test_a_mix_of_requests_failures_cuts_cancels_and_refunds_adds_up(
    server: Running, http: httpx.AsyncClient, outbox: Path, tmp_path: Path
) -> None:
    a_user, a_session = await provider_user(server, http, outbox, "a@example.org", "box-a")
    b_user, b_session = await provider_user(
        server, http, outbox, "b@example.org", "box-b", second=True
    )
    buyer = await payer(http, outbox, "buyer@example.org")
    await fund(buyer, 1000)
    models = ["echo", "echo-slow"]
    slow = ("--model", "echo", "--model", "echo-slow", "--delay-first-token", "60")
    async with (
        provider_agent(server, a_session, tmp_path, *slow) as agent_a,
        provider_agent(server, b_session, tmp_path, *slow),
    ):
        a = await register(a_user, "box-a", price=100, models=models)
        b = await register(b_user, "box-b", price=1000, models=models)
        assert (a.status_code, b.status_code) == (201, 201)
        ids = []
        for n in range(3):  # served by A (cheaper)
            ids.append((await ask(buyer, f"ok-{n}", PROMPT, max_cost=50)).json()["request_id"])
            await finished(buyer, ids[-1])
        # Slow on both: times out on A, then on B: FAILED, nothing charged.
        failed = await ask(buyer, "slow", PROMPT, model="echo-slow", max_cost=50)
        assert (await finished(buyer, failed.json()["request_id"]))["state"] == "FAILED"
        # A cancelled request: CANCELLED, hold released, the provider told to stop.
        running = await ask(buyer, "cancel", PROMPT, model="echo-slow", max_cost=50)
        rid = running.json()["request_id"]
        await agent_a.wait_for("job ", count=6)  # test job, 3 served, the slow one, this one
        cancelled = await buyer.post(f"/api/v1/marketplace/requests/{rid}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "CANCELLED"
        assert cancelled.json()["attempts"][-1]["outcome"] == "cancelled"
        await agent_a.wait_for("cancelled ", count=2)
        again = await buyer.post(f"/api/v1/marketplace/requests/{rid}/cancel")
        assert (again.status_code, again.json()["error"]["code"]) == (409, "request_ended")
        # A max-cost cut on B (a cent a token): prompt 8 tokens, 10 cents allow 2 more.
        b_only = await a_user.put(
            f"/api/v1/marketplace/providers/{a.json()['provider_id']}",
            json={"models": models, "price_per_1k": 100, "status": "paused"},
        )
        assert b_only.status_code == 200
        cut = await ask(buyer, "cut", PROMPT, max_cost=10)
        cut_done = await finished(buyer, cut.json()["request_id"])
        assert (cut_done["finish_reason"], cut_done["cost"]) == ("max_cost", 10)

    txns = (await buyer.get("/api/v1/marketplace/transactions")).json()["items"]
    assert len(txns) == 4
    assert {t["role"] for t in txns} == {"requester"}
    seller_view = (await a_user.get("/api/v1/marketplace/transactions")).json()["items"]
    assert len(seller_view) == 3
    assert {t["role"] for t in seller_view} == {"provider"}
    # Nobody else sees them; a provider cannot dispute.
    stranger = await sign_in(http, outbox, "c@example.org")
    # One that A served (which provider served which request depends on the routing's turn),
    # and not the cut one, which gets its own dispute below.
    first = next(
        t["transaction_id"]
        for t in reversed(seller_view)
        if t["request_id"] != cut_done["request_id"]
    )
    assert (await stranger.get(f"/api/v1/marketplace/transactions/{first}")).status_code == 404
    refused = await a_user.post(
        f"/api/v1/marketplace/transactions/{first}/dispute", json={"reason": "x"}
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "dispute_refused")
    # Disputes: a partial refund of the cut (10 -> 4 back) and a full one of a served request.
    await sign_in(http, outbox, "ops@example.org")
    await server.services.domain.get().operators.grant_role("ops@example.org", "operator")
    ops = await sign_in(http, outbox, "ops@example.org")  # a new token carries the role

    async def resolve(dispute_id: str, refund: int) -> httpx.Response:
        return await ops.post(
            f"/api/admin/marketplace/disputes/{dispute_id}/resolve", json={"refund": refund}
        )

    cut_txn = next(t for t in txns if t["request_id"] == cut_done["request_id"])
    d1 = await buyer.post(
        f"/api/v1/marketplace/transactions/{cut_txn['transaction_id']}/dispute",
        json={"reason": "cut short"},
    )
    d2 = await buyer.post(
        f"/api/v1/marketplace/transactions/{first}/dispute", json={"reason": "wrong answer"}
    )
    assert (d1.status_code, d2.status_code) == (201, 201), (d1.text, d2.text)
    twice = await buyer.post(
        f"/api/v1/marketplace/transactions/{first}/dispute", json={"reason": "again"}
    )
    assert twice.status_code == 409
    not_ops = await buyer.post(
        f"/api/admin/marketplace/disputes/{d1.json()['dispute_id']}/resolve", json={"refund": 1}
    )
    assert not_ops.status_code == 403
    too_much = await resolve(d1.json()["dispute_id"], 11)
    assert too_much.status_code == 422, too_much.text
    assert "at most 10" in too_much.text
    partial = await resolve(d1.json()["dispute_id"], 4)
    assert partial.status_code == 200, partial.text
    assert (partial.json()["status"], partial.json()["refund"]) == ("resolved", 4)
    assert (await resolve(d1.json()["dispute_id"], 4)).status_code == 409  # once
    full_cost = next(t["cost"] for t in txns if t["transaction_id"] == first)
    assert (await resolve(d2.json()["dispute_id"], full_cost)).status_code == 200
    refunded = (await buyer.get(f"/api/v1/marketplace/transactions/{first}")).json()
    assert (refunded["status"], refunded["refunded"]) == ("REFUNDED", full_cost)

    # The money, to the cent.
    domain = server.services.domain.get()
    check = await domain.ledger.verify()
    assert check.ok, check
    paid = sum(t["cost"] for t in txns)
    refunds = 4 + full_cost
    buyer_money = await balances(buyer)
    assert (buyer_money["balance"], buyer_money["held"]) == (1000 - paid + refunds, 0)
    earnings = (await balances(a_user))["earnings"] + (await balances(b_user))["earnings"]
    fees = int(
        await domain.store.db.read(
            lambda tx: tx.fetchval(
                "SELECT balance FROM ledger_balances WHERE account = $1", company_account("fees")
            )
        )
        or 0
    )
    assert paid - refunds == earnings + fees
    stats = (await buyer.get("/api/v1/marketplace/analytics/requester")).json()
    assert (stats["cost"], stats["refunded"]) == (paid, refunds)
    assert stats["requests"] == 6
    assert stats["failed"] == 1
    mine = (await a_user.get("/api/v1/marketplace/analytics/provider")).json()
    assert mine["requests"] == 3
    assert mine["earnings"] == sum(t["provider_earnings"] for t in seller_view)
