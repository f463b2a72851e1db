"""The ledger in a user's data export and account deletion, on both backends: the export has
the user's balances, entries, holds, payouts and KYC; deleting the account (by the user or an
operator) releases open holds, removes the user's choices and pseudonymizes the ledger's rows,
which still add up and verify."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.clients import User, payer, sign_in
from yggdrasil import Tx
from yggdrasil.billing import Posting, user_account
from yggdrasil.server import Running

TABLES = (
    "ledger_transactions",
    "ledger_entries",
    "ledger_holds",
    "ledger_refundables",
    "payouts",
    "payout_runs",
    "kyc",
    "payout_settings",
    "spending_limits",
    "spending_months",
    "payment_methods",
)


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def rows_naming(server: Running, user_id: str) -> dict[str, int]:
    async def read(tx: Tx) -> dict[str, int]:
        found = {}
        for table in TABLES:
            count = await tx.fetchval(f"SELECT COUNT(*) FROM {table} WHERE user_id = $1", user_id)
            if count:
                found[table] = int(count)
        return found

    return await server.services.domain.get().store.db.read(read)


async def provider_with_money(server: Running, http: httpx.AsyncClient, outbox: Path) -> User:
    """ada: a deposit, an open hold, earnings from bob, a payout, KYC, settings and a limit."""
    ada = await payer(http, outbox, "ada@example.org")
    paypal = {"kind": "paypal", "token": "tok_sandbox_paypal", "purposes": ["payout"]}
    assert (await ada.post("/api/v1/payments/methods", json=paypal)).status_code == 201
    bob = await payer(http, outbox, "bob@example.org", "tok_sandbox_mastercard")
    domain = server.services.domain.get()
    ada_id = (await ada.get("/api/v1/users/me")).json()["user_id"]
    bob_id = (await bob.get("/api/v1/users/me")).json()["user_id"]
    for user in (ada, bob):
        await user.request(
            "POST", "/api/v1/payments/process", json={"amount": 5000}, headers=key("p")
        )
    hold = await domain.ledger.hold(bob_id, 3000, key="h")
    legs = [Posting(user_account(ada_id, "earnings"), 3000)]
    capture = await domain.ledger.capture(hold.hold_id, 3000, key="c", to=legs)
    assert (await ada.put("/api/v1/billing/limits", json={"monthly_limit": 4000})).is_success
    await ada.request("POST", "/api/v1/billing/holds", json={"amount": 700}, headers=key("h"))
    await ada.post("/api/v1/kyc", json={"region": "DE", "reference": "case-9"})
    await domain.kyc.decide("ops", ada_id, "verified")
    await ada.put("/api/v1/payouts/settings", json={"frequency": "weekly"})
    payout = await ada.request("POST", "/api/v1/payouts", json={"amount": 2000}, headers=key("o"))
    assert payout.status_code == 201, payout.text
    await domain.ledger.refund(capture.transaction_id, 1500, key="rf")  # ada now owes 500
    return ada


async def test_the_export_has_the_users_money_and_kyc(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    ada = await provider_with_money(server, http, outbox)
    export: dict[str, Any] = (await ada.get("/api/v1/users/me/export")).json()
    billing = export["billing"]
    assert billing["balances"] == {
        "balance": 4300,
        "held": 700,
        "earnings": 0,
        "payable": 0,
        "receivable": 500,
    }
    kinds = [(e["kind"], e["account"], e["amount"]) for e in billing["entries"]]
    assert kinds == [
        ("deposit", "balance", 5000),
        ("capture", "earnings", 3000),
        ("hold", "balance", -700),
        ("hold", "held", 700),
        ("payout", "earnings", -2000),
        ("refund", "earnings", -1000),
        ("refund", "receivable", -500),
    ]
    assert [(h["amount"], h["status"]) for h in billing["holds"]] == [(700, "open")]
    assert [(p["amount"], p["status"]) for p in billing["payouts"]] == [(2000, "paid")]
    assert billing["kyc"]["status"] == "verified"
    methods = billing["payment_methods"]
    assert sorted(m["kind"] for m in methods) == ["card", "paypal"]
    assert all("token" not in m for m in methods)  # the provider's tokens stay with us
    assert billing["kyc"]["reference"] == "case-9"
    assert billing["payout_settings"]["frequency"] == "weekly"
    assert billing["spending_limits"]["monthly_limit"] == 4000
    bob = await sign_in(http, outbox, "bob@example.org")
    theirs = (await bob.get("/api/v1/users/me/export")).json()["billing"]
    assert theirs["payouts"] == []
    assert theirs["kyc"]["status"] == "required"


async def test_deleting_the_account_pseudonymizes_the_ledger_which_still_verifies(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    ada = await provider_with_money(server, http, outbox)
    ada_id = (await ada.get("/api/v1/users/me")).json()["user_id"]
    subscribed = await ada.request(
        "POST", "/api/v1/subscriptions", json={"plan": "premium"}, headers=key("s")
    )
    assert subscribed.status_code == 201, subscribed.text
    ledger = server.services.domain.get().ledger
    before = await rows_naming(server, ada_id)
    assert set(before) >= {"ledger_entries", "ledger_holds", "payouts", "kyc", "spending_months"}
    assert (await ada.delete("/api/v1/users/me")).status_code == 204
    assert await rows_naming(server, ada_id) == {}
    check = await ledger.verify()
    assert check.ok, check
    # The books are the same: ada's accounts keep their balances, her hold gave its money back.
    after = await ledger.balances(ada_id)
    assert (after.balance, after.held, after.receivable) == (5000, 0, 500)
    # No renewal will charge the deleted account; its invoice stays.
    subscriptions = server.services.domain.get().subscriptions
    assert (await subscriptions.current(ada_id)).status == "free"

    async def pseudonyms(tx: Tx) -> list[str]:
        rows = await tx.fetch(
            "SELECT DISTINCT user_id FROM ledger_entries WHERE account LIKE $1",
            f"user:{ada_id}:%",
        )
        return [row["user_id"] for row in rows]

    names = await server.services.domain.get().store.db.read(pseudonyms)
    assert len(names) == 1
    assert names[0].startswith("gone_")


async def test_an_operator_deleting_a_user_forgets_their_billing_data_too(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    ada = await provider_with_money(server, http, outbox)
    ada_id = (await ada.get("/api/v1/users/me")).json()["user_id"]
    await sign_in(http, outbox, "ops@example.org")
    await server.services.domain.get().operators.grant_role("ops@example.org", "operator")
    ops = await sign_in(http, outbox, "ops@example.org")
    assert (await ops.delete(f"/api/admin/users/{ada_id}")).status_code == 204
    assert await rows_naming(server, ada_id) == {}
    assert (await server.services.domain.get().ledger.verify()).ok
