"""Payouts on both backends: settings, manual payouts with keys, the automatic job exactly once
with two jobs at once, declines reversed, outages retried, refunds after a payout netted from
the next one (never a negative payout), netting with the difference collected, waiting for KYC
and a payout method, over HTTP with isolation, and a Hypothesis state machine."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.billing_helpers import Billing, uid
from tests.clients import payer, sign_in
from yggdrasil import Database, Invalid, NotFound
from yggdrasil.billing import (
    BelowMinimum,
    IdempotencyKeyReused,
    InsufficientFunds,
    KycRequired,
    PayoutDeclined,
    PayoutMethodRequired,
    PayoutUnreachable,
    Posting,
    SandboxDisburser,
    user_account,
)
from yggdrasil.server import Running

DAY_MS = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


async def external(db: Database, provider: str = "sandbox") -> int:
    async def read(tx: Any) -> int:
        value = await tx.fetchval(
            "SELECT balance FROM ledger_balances WHERE account = $1", f"external:{provider}"
        )
        return int(value or 0)

    return await db.read(read)


async def test_settings_have_defaults_and_refuse_a_minimum_below_the_floor(
    database: Database,
) -> None:
    billing = Billing(database)
    user = uid()
    first = await billing.payouts.settings(user)
    assert (first.frequency, first.minimum, first.automatic, first.netting) == (
        "monthly",
        1000,
        True,
        False,
    )
    with pytest.raises(Invalid):
        await billing.payouts.set_settings(user, minimum=99)
    with pytest.raises(Invalid):
        await billing.payouts.set_settings(user, minimum=10.0)  # type: ignore[arg-type]
    changed = await billing.payouts.set_settings(user, frequency="daily", netting=True)
    assert (changed.frequency, changed.minimum, changed.netting) == ("daily", 1000, True)
    later = await billing.payouts.set_settings(user, minimum=2500, automatic=False)
    assert later == await billing.payouts.settings(user)
    assert (later.frequency, later.minimum, later.automatic, later.netting) == (
        "daily",
        2500,
        False,
        True,
    )


async def test_a_manual_payout_is_booked_and_sent_once_per_key(database: Database) -> None:
    billing = Billing(database)
    payer, provider = await billing.funded(10_000), uid()
    await billing.earn(payer, provider, 5000)
    paid = await billing.payouts.request(provider, key="po-1", amount=3000)
    assert (paid.status, paid.amount, paid.trigger, paid.attempts) == ("paid", 3000, "manual", 1)
    assert (paid.reference or "").startswith("sbx_po_")
    assert await billing.payouts.request(provider, key="po-1", amount=3000) == paid
    with pytest.raises(IdempotencyKeyReused):
        await billing.payouts.request(provider, key="po-1", amount=2000)
    with pytest.raises(BelowMinimum):
        await billing.payouts.request(provider, key="po-2", amount=999)
    with pytest.raises(InsufficientFunds):
        await billing.payouts.request(provider, key="po-3", amount=2001)
    everything = await billing.payouts.request(provider, key="po-4")
    assert everything.amount == 2000
    with pytest.raises(BelowMinimum):  # nothing left
        await billing.payouts.request(provider, key="po-5")
    assert billing.disburser.calls == 2
    assert await external(database) == 5000 - 10_000
    assert (await billing.ledger.balances(provider)).earnings == 0
    listed = await billing.payouts.list(provider)
    assert [p.payout_id for p in listed.items] == [everything.payout_id, paid.payout_id]
    assert (listed.available, listed.waiting) == (0, None)
    with pytest.raises(NotFound):
        await billing.payouts.get(payer, paid.payout_id)
    assert (await billing.ledger.verify()).ok


async def test_the_job_pays_each_due_user_exactly_once_with_two_jobs_at_once(
    database: Database,
) -> None:
    one, two = Billing(database), Billing(database)
    shared = SandboxDisburser()
    two.payouts.disburser = one.payouts.disburser = shared
    payer = await one.funded(100_000)
    providers = [uid() for _ in range(6)]
    for n, provider in enumerate(providers):
        await one.earn(payer, provider, 1000 + 100 * n)
    await one.payouts.set_settings(providers[0], automatic=False)  # manual: not paid
    await one.payouts.set_settings(providers[1], minimum=5000)  # below its minimum

    async def job(billing: Billing, now: int) -> None:
        await billing.payouts.run_once(now=now)

    async def both(now: int) -> None:
        async with trio.open_nursery() as nursery:
            for billing in (one, two, one, two):
                nursery.start_soon(job, billing, now)

    await both(T0)
    await both(T0 + 1000)
    paid = providers[2:]
    assert len(shared.sent) == len(paid)
    assert shared.calls == len(paid)  # the lease: one call per payout, not one per job
    for n, provider in enumerate(providers):
        page = await one.payouts.list(provider)
        if provider in paid:
            assert [(p.status, p.amount, p.period) for p in page.items] == [
                ("paid", 1000 + 100 * n, "m:2026-01")
            ]
        else:
            assert page.items == []
    assert (await one.payouts.list(providers[0])).waiting.reason == "manual"  # type: ignore[union-attr]
    assert (await one.payouts.list(providers[1])).waiting.reason == "below_minimum"  # type: ignore[union-attr]
    # More earnings in the same month wait for the next one.
    await one.earn(payer, providers[2], 2000)
    await both(T0 + 10 * DAY_MS)
    assert len(shared.sent) == len(paid)
    await both(T0 + 40 * DAY_MS)
    assert len(shared.sent) == len(paid) + 1
    assert [p.period for p in (await one.payouts.list(providers[2])).items] == [
        "m:2026-02",
        "m:2026-01",
    ]
    assert (await one.ledger.verify()).ok


async def test_a_declined_payout_is_reversed_by_a_new_transaction(database: Database) -> None:
    billing = Billing(database)
    payer, provider = await billing.funded(5000), uid()
    await billing.earn(payer, provider, 3000)
    billing.payouts.disburser = SandboxDisburser(lambda user, amount: PayoutDeclined("closed"))
    failed = await billing.payouts.request(provider, key="k", amount=2000)
    assert (failed.status, failed.failure) == ("failed", "declined: closed")
    assert failed.reversal_id is not None
    assert billing.payouts.outcomes == {"paid": 0, "failed": 1, "retry": 0}  # on /metrics
    assert (await billing.ledger.balances(provider)).earnings == 3000
    assert await external(database) == -5000
    entries = (await billing.ledger.entries(provider, limit=10)).items
    kinds = [(e.kind, e.amount) for e in entries if e.account == "earnings"]
    assert kinds == [("payout_reversal", 2000), ("payout", -2000), ("capture", 3000)]
    assert (await billing.ledger.verify()).ok


async def test_an_unreachable_provider_leaves_the_payout_pending_for_a_retry(
    database: Database,
) -> None:
    billing = Billing(database, max_attempts=3)
    payer, provider = await billing.funded(5000), uid()
    await billing.earn(payer, provider, 3000)
    down = True

    def outage(user: str, amount: int) -> PayoutUnreachable | None:
        return PayoutUnreachable("timed out") if down else None

    disburser = SandboxDisburser(outage)
    billing.payouts.disburser = disburser
    pending = await billing.payouts.request(provider, key="k", amount=1500)
    assert (pending.status, pending.attempts) == ("pending", 1)
    assert await billing.payouts.send_pending() == 0  # its lease has not passed
    later = pending.updated_at + 301_000
    down = False
    assert await billing.payouts.send_pending(now=later) == 1
    paid = await billing.payouts.get(provider, pending.payout_id)
    assert (paid.status, paid.attempts) == ("paid", 2)
    assert list(disburser.sent) == [f"payout:{pending.payout_id}"]
    # Unreachable max_attempts times: failed, and the money is back.
    down = True
    again = await billing.payouts.request(provider, key="k2", amount=1500)
    for n in range(1, 3):
        await billing.payouts.send_pending(now=again.updated_at + n * 301_000)
    gone = await billing.payouts.get(provider, again.payout_id)
    assert (gone.status, gone.attempts) == ("failed", 3)
    assert billing.payouts.outcomes == {"paid": 1, "failed": 1, "retry": 3}  # on /metrics
    assert (await billing.ledger.balances(provider)).earnings == 1500
    assert (await billing.ledger.verify()).ok


async def test_a_refund_after_a_payout_is_netted_from_the_next_payout_by_the_job(
    database: Database,
) -> None:
    billing = Billing(database)
    payer, provider = await billing.funded(10_000), uid()
    await billing.payouts.set_settings(provider, frequency="daily", minimum=500)
    capture = await billing.earn(payer, provider, 1000)
    await billing.payouts.run_once(now=T0)
    await billing.ledger.refund(capture, 600, key="rf")
    owes = await billing.ledger.balances(provider)
    assert (owes.earnings, owes.receivable) == (0, 600)
    await billing.payouts.run_once(now=T0 + DAY_MS)  # nothing to pay: never a negative payout
    await billing.earn(payer, provider, 1500)
    await billing.payouts.run_once(now=T0 + 2 * DAY_MS)
    items = (await billing.payouts.list(provider)).items
    assert [(p.amount, p.settled_receivable, p.status) for p in items] == [
        (900, 600, "paid"),
        (1000, 0, "paid"),
    ]
    after = await billing.ledger.balances(provider)
    assert (after.earnings, after.receivable) == (0, 0)
    assert await external(database) == 1900 - 10_000
    assert (await billing.ledger.verify()).ok


async def test_with_netting_the_job_settles_debt_and_collects_only_the_difference(
    database: Database,
) -> None:
    billing = Billing(database)
    payer, provider = await billing.funded(10_000), uid()
    await billing.payouts.set_settings(provider, frequency="daily", netting=True)
    capture = await billing.earn(payer, provider, 1000)
    await billing.payouts.run_once(now=T0)
    await billing.ledger.refund(capture, 800, key="rf")
    await billing.earn(payer, provider, 300)
    assert (await billing.ledger.balances(provider)).receivable == 800
    await billing.payouts.run_once(now=T0 + DAY_MS)
    await billing.payouts.run_once(now=T0 + DAY_MS + 1)  # the same period: collected once
    after = await billing.ledger.balances(provider)
    assert (after.earnings, after.receivable, after.balance) == (0, 0, 0)
    entries = (await billing.ledger.entries(provider, limit=20)).items
    assert [(e.kind, e.amount) for e in entries if e.account == "receivable"][:2] == [
        ("debt_collection", 500),
        ("netting", 300),
    ]
    assert len((await billing.payouts.list(provider)).items) == 1  # no second payout
    assert await external(database) == 1000 - 500 - 10_000
    assert (await billing.ledger.verify()).ok


async def test_payouts_wait_for_kyc_and_a_payout_method(database: Database) -> None:
    billing = Billing(database, kyc_regions=["DE"])
    payer, provider = await billing.funded(5000), uid()
    await billing.earn(payer, provider, 2000)
    listed = await billing.payouts.list(provider)
    assert listed.waiting is not None
    assert (listed.waiting.reason, listed.waiting.available) == ("kyc_required", 2000)
    with pytest.raises(KycRequired):
        await billing.payouts.request(provider, key="k")
    await billing.kyc.submit(provider, region="DE", reference="case-17")
    assert await billing.payouts.run_due(now=T0) == 0
    assert (await billing.payouts.list(provider)).waiting.reason == "kyc_required"  # type: ignore[union-attr]
    await billing.kyc.decide("ops", provider, "verified")
    billing.methods.without.add(provider)
    assert (await billing.payouts.list(provider)).waiting.reason == "payout_method_required"  # type: ignore[union-attr]
    with pytest.raises(PayoutMethodRequired):
        await billing.payouts.request(provider, key="k")
    assert await billing.payouts.run_due(now=T0) == 0
    billing.methods.without.clear()
    assert await billing.payouts.run_due(now=T0) == 1
    assert (await billing.ledger.balances(provider)).earnings == 0
    assert (await billing.ledger.verify()).ok


# ----------------------------------------------------------------------------- over HTTP


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def test_payouts_over_http_with_isolation(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    ada = await sign_in(http, outbox, "ada@example.org")
    paypal = {"kind": "paypal", "token": "tok_sandbox_paypal", "purposes": ["payout"]}
    assert (await ada.post("/api/v1/payments/methods", json=paypal)).status_code == 201
    bob = await payer(http, outbox, "bob@example.org")
    ada_id = (await ada.get("/api/v1/users/me")).json()["user_id"]
    await bob.request("POST", "/api/v1/payments/process", json={"amount": 5000}, headers=key("p"))
    domain = server.services.domain.get()
    bob_id = (await bob.get("/api/v1/users/me")).json()["user_id"]
    hold = await domain.ledger.hold(bob_id, 4000, key="h")
    legs = [Posting(user_account(ada_id, "earnings"), 4000)]
    await domain.ledger.capture(hold.hold_id, 4000, key="c", to=legs)
    # KYC is required everywhere by default: the payout waits, and the list says why.
    waiting = await ada.request("POST", "/api/v1/payouts", json={"amount": 1500}, headers=key("a"))
    assert (waiting.status_code, waiting.json()["error"]["code"]) == (409, "kyc_required")
    listed = (await ada.get("/api/v1/payouts")).json()
    assert (listed["available"], listed["waiting"]["reason"]) == (4000, "kyc_required")
    await domain.kyc.submit(ada_id, region="DE", reference="case-1")
    await domain.kyc.decide("ops", ada_id, "verified")
    bad: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
        ({"amount": 1500}, {}, 400, "idempotency_key_required"),
        ({"amount": 1500.0}, key("f"), 422, "invalid_amount"),
        ({"amount": "1500"}, key("s"), 422, "invalid_amount"),
        ({"amount": -1}, key("n"), 422, "validation_error"),
        ({"amount": 999}, key("m"), 409, "below_minimum"),
        ({"amount": 4001}, key("i"), 409, "insufficient_funds"),
        ({"amount": 1500, "to": "x"}, key("x"), 422, "validation_error"),
    ]
    for body, headers, status, code in bad:
        response = await ada.request("POST", "/api/v1/payouts", json=body, headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    assert (await ada.get("/api/v1/payouts")).json()["items"] == []
    made = await ada.request("POST", "/api/v1/payouts", json={"amount": 1500}, headers=key("a"))
    assert made.status_code == 201, made.text
    payout = made.json()
    assert (payout["status"], payout["amount"], payout["currency"]) == ("paid", 1500, "EUR")
    again = await ada.request("POST", "/api/v1/payouts", json={"amount": 1500}, headers=key("a"))
    assert (again.status_code, again.json()) == (201, payout)
    path = f"/api/v1/payouts/{payout['payout_id']}"
    assert (await ada.get(path)).json() == payout
    foreign = await bob.get(path)
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (404, "not_found")
    assert (await bob.get("/api/v1/payouts/po_missing")).status_code == 404
    assert (await bob.get("/api/v1/payouts")).json()["items"] == []
    balance = (await ada.get("/api/v1/billing/balance")).json()
    assert balance["earnings"] == 2500
    # Settings and netting.
    assert (await ada.get("/api/v1/payouts/settings")).json() == {
        "frequency": "monthly",
        "minimum": 1000,
        "automatic": True,
        "netting": False,
    }
    for body in ({"minimum": 99}, {"minimum": 1000.5}, {"frequency": "hourly"}, {"x": 1}):
        refused = await ada.put("/api/v1/payouts/settings", json=body)
        assert refused.status_code == 422, body
    changed = await ada.put("/api/v1/payouts/settings", json={"frequency": "weekly"})
    assert changed.json()["frequency"] == "weekly"
    netting = await ada.put("/api/v1/billing/netting", json={"enabled": True})
    assert netting.json() == {"enabled": True}
    assert (await ada.get("/api/v1/payouts/settings")).json()["netting"] is True
    assert (await bob.get("/api/v1/payouts/settings")).json()["frequency"] == "monthly"
    assert (await domain.ledger.verify()).ok


# ----------------------------------------------------------------------------- the state machine


async def test_payouts_refunds_and_netting_never_pay_out_a_negative_amount(
    database: Database,
) -> None:
    """Random earnings, refunds, netting choices and job rounds (one period a day): no payout is
    ever zero or negative, no user owes after a payout, and the ledger adds up after every
    step."""
    token = trio.lowlevel.current_trio_token()

    def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(run, trio_token=token)

    class PayoutMachine(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.billing = Billing(database)
            self.payer = call(self.billing.funded, 10**9)
            self.providers = [uid() for _ in range(2)]
            for provider in self.providers:
                call(self.billing.payouts.set_settings, provider, frequency="daily", minimum=100)
            self.captures: list[tuple[str, int]] = []
            self.day = 0

        @rule(provider=st.integers(0, 1), amount=st.integers(1, 3000))
        def earn(self, provider: int, amount: int) -> None:
            txn = call(self.billing.earn, self.payer, self.providers[provider], amount)
            self.captures.append((txn, amount))

        @rule(data=st.data(), share=st.integers(1, 100))
        def refund(self, data: st.DataObject, share: int) -> None:
            if not self.captures:
                return
            n = data.draw(st.integers(0, len(self.captures) - 1))
            txn, left = self.captures[n]
            amount = max(1, left * share // 100)
            if left == 0:
                return
            call(self.billing.ledger.refund, txn, amount, key=secrets.token_hex(8))
            self.captures[n] = (txn, left - amount)

        @rule(provider=st.integers(0, 1), enabled=st.booleans())
        def netting(self, provider: int, enabled: bool) -> None:
            call(self.billing.payouts.set_settings, self.providers[provider], netting=enabled)

        @rule()
        def job(self) -> None:
            self.day += 1
            call(self.billing.payouts.run_once, now=T0 + self.day * DAY_MS)

        @invariant()
        def books_balance(self) -> None:
            if not hasattr(self, "billing"):
                return
            check = call(self.billing.ledger.verify)
            assert check.ok, check
            for provider in self.providers:
                page = call(self.billing.payouts.list, provider, limit=100)
                assert all(p.amount > 0 for p in page.items)
                assert all(p.status == "paid" for p in page.items)
                have = call(self.billing.ledger.balances, provider)
                assert min(have.earnings, have.payable, have.receivable) >= 0

    await trio.to_thread.run_sync(
        lambda: run_state_machine_as_test(
            PayoutMachine,
            settings=settings(
                max_examples=15,
                stateful_step_count=15,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            ),
        )
    )
