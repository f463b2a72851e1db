"""Spending limits, budget alerts and auto-top-up on both backends: holds and charges refused
past the month's limit (nothing written), releases and refunds counted back, concurrent holds
never together past it, alerts mailed once per threshold and month, auto-top-up at most N
times a month; over HTTP with the outbox."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.billing_helpers import Billing
from tests.clients import payer, sign_in
from yggdrasil import Database, Invalid
from yggdrasil.billing import AutoTopup, InvalidAmount, SpendingLimitReached
from yggdrasil.server import Running


async def test_holds_and_charges_stop_at_the_monthly_limit(database: Database) -> None:
    billing = Billing(database)
    ledger, limits = billing.ledger, billing.limits
    user = await billing.funded(10_000)
    await limits.set(user, monthly_limit=1000, alert_thresholds=None, auto_topup=None)
    hold = await ledger.hold(user, 600, key="h1")
    before = await ledger.balances(user)
    with pytest.raises(SpendingLimitReached) as refused:
        await ledger.charge(user, 401, key="c1")
    assert (refused.value.status, refused.value.code) == (402, "spending_limit")
    assert "400 cents are left" in str(refused.value)
    assert await ledger.balances(user) == before
    assert (await limits.get(user)).spent == 600
    charge = await ledger.charge(user, 400, key="c2")
    with pytest.raises(SpendingLimitReached):
        await ledger.hold(user, 1, key="h2")
    await ledger.capture(hold.hold_id, 100, key="cap")
    await ledger.release(hold.hold_id, key="rel")  # 500 not spent after all
    await ledger.refund(charge.transaction_id, 150, key="rf")
    assert (await limits.get(user)).spent == 350
    await ledger.hold(user, 650, key="h3")
    with pytest.raises(SpendingLimitReached):
        await ledger.hold(user, 1, key="h4")
    await limits.set(user, monthly_limit=None, alert_thresholds=None, auto_topup=None)
    await ledger.hold(user, 1, key="h4")
    assert (await ledger.verify()).ok


async def test_concurrent_holds_never_pass_the_limit_together(database: Database) -> None:
    billing = Billing(database)
    user = await billing.funded(10_000)
    await billing.limits.set(user, monthly_limit=1000, alert_thresholds=[], auto_topup=None)
    outcomes: list[str] = []

    async def hold(n: int) -> None:
        try:
            await billing.ledger.hold(user, 300, key=f"h{n}")
            outcomes.append("held")
        except SpendingLimitReached:
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(hold, n)
    assert sorted(outcomes) == ["held"] * 3 + ["refused"] * 7
    assert (await billing.ledger.balances(user)).held == 900
    assert (await billing.limits.get(user)).spent == 900


async def test_limits_are_checked(database: Database) -> None:
    limits = Billing(database).limits
    half: Any = 10.5
    with pytest.raises(InvalidAmount):
        await limits.set("u_x", monthly_limit=half, alert_thresholds=None, auto_topup=None)
    for thresholds in ([0], [1001], [50.0], list(range(1, 12))):
        with pytest.raises(Invalid):
            await limits.set(
                "u_x",
                monthly_limit=100,
                alert_thresholds=thresholds,  # type: ignore[arg-type]
                auto_topup=None,
            )
    with pytest.raises(Invalid):
        await limits.set(
            "u_x", monthly_limit=None, alert_thresholds=None, auto_topup=AutoTopup(1, 1, 11)
        )
    with pytest.raises(InvalidAmount):
        await limits.set(
            "u_x", monthly_limit=None, alert_thresholds=None, auto_topup=AutoTopup(0, 1, 1)
        )
    assert (await limits.get("u_x")).monthly_limit is None


def alerts(outbox: Path, address: str) -> list[str]:
    found = []
    for path in sorted(outbox.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"] == address and str(message["Subject"]).startswith("Budget alert"):
            found.append(str(message["Subject"]))
    return found


async def wait_for(outbox: Path, address: str, count: int) -> list[str]:
    with trio.fail_after(10):
        while True:
            if len(alerts(outbox, address)) >= count:
                break
            await trio.sleep(0.02)
    await trio.sleep(0.1)  # and no more than that
    return alerts(outbox, address)


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def test_limits_alerts_and_auto_topup_over_http(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    ada = await payer(http, outbox, "ada@example.org")
    bob = await sign_in(http, outbox, "bob@example.org")
    await ada.request("POST", "/api/v1/payments/process", json={"amount": 5000}, headers=key("p"))
    first = (await ada.get("/api/v1/billing/limits")).json()
    assert (first["monthly_limit"], first["alert_thresholds"], first["spent"]) == (
        None,
        [50, 80, 100],
        0,
    )
    for body in (
        {"monthly_limit": 10.5},
        {"monthly_limit": 1000.0},
        {"monthly_limit": -1},
        {"alert_thresholds": [0]},
        {"auto_topup": {"below": 100, "amount": "100", "max_per_month": 1}},
        {"auto_topup": {"below": 100, "amount": 100, "max_per_month": 11}},
        {"other": 1},
    ):
        refused = await ada.put("/api/v1/billing/limits", json=body)
        assert refused.status_code == 422, body
    assert (await ada.get("/api/v1/billing/limits")).json() == first
    choice: dict[str, Any] = {
        "monthly_limit": 2000,
        "alert_thresholds": [50, 100],
        "auto_topup": {"below": 3500, "amount": 1000, "max_per_month": 2},
    }
    chosen = await ada.put("/api/v1/billing/limits", json=choice)
    assert chosen.status_code == 200, chosen.text
    assert (await bob.get("/api/v1/billing/limits")).json()["monthly_limit"] is None
    holds = "/api/v1/billing/holds"
    assert (await ada.request("POST", holds, json={"amount": 900}, headers=key("h1"))).is_success
    assert alerts(outbox, "ada@example.org") == []
    assert (await ada.request("POST", holds, json={"amount": 200}, headers=key("h2"))).is_success
    assert await wait_for(outbox, "ada@example.org", 1) == [
        "Budget alert: 50 % of your monthly spending limit"
    ]
    # Balance 3900 - the hold of 500 leaves 3400 < 3500: one top-up of 1000.
    assert (await ada.request("POST", holds, json={"amount": 500}, headers=key("h3"))).is_success
    assert (await ada.get("/api/v1/billing/balance")).json()["balance"] == 4400
    over = await ada.request("POST", holds, json={"amount": 401}, headers=key("h4"))
    assert (over.status_code, over.json()["error"]["code"]) == (402, "spending_limit")
    assert (await ada.request("POST", holds, json={"amount": 400}, headers=key("h5"))).is_success
    assert len(await wait_for(outbox, "ada@example.org", 2)) == 2
    now = (await ada.get("/api/v1/billing/limits")).json()
    assert (now["spent"], now["alerts_sent"], now["topups_this_month"]) == (2000, [50, 100], 1)
    # The second hold below the threshold tops up again; a third would be one too many.
    balance = (await ada.get("/api/v1/billing/balance")).json()["balance"]
    assert balance == 4000
    await ada.put("/api/v1/billing/limits", json={**choice, "monthly_limit": 100_000})
    await ada.request("POST", holds, json={"amount": 600}, headers=key("h6"))
    await ada.request("POST", holds, json={"amount": 2000}, headers=key("h7"))
    assert (await ada.get("/api/v1/billing/balance")).json()["balance"] == 4000 - 600 + 1000 - 2000
    assert (await ada.get("/api/v1/billing/limits")).json()["topups_this_month"] == 2
    assert len(alerts(outbox, "ada@example.org")) == 2
    assert (await server.services.domain.get().ledger.verify()).ok
