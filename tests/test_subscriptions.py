"""Subscriptions: the journey of a new user through the real HTTP API on both backends, the
proration rule, calendar periods, the state rules and the idempotency of requests."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.clients import User, payer, sign_in, with_test_card
from yggdrasil import Invalid, Store, load_config
from yggdrasil.billing import SandboxCharger, Subscriptions, add_months, prorate
from yggdrasil.billing._subscription_requests import IdempotencyKeyReused
from yggdrasil.billing._subscriptions import (
    AlreadySubscribed,
    CancelPending,
    NotCanceled,
    NotSubscribed,
    PaymentDeclined,
    SamePlan,
)
from yggdrasil.server import Running

CONFIG = load_config().subscriptions


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


async def send(
    user: User, method: str, path: str, key: str | None, body: Any = None
) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await user.request(method, path, headers=headers, json=body)


# --------------------------------------------------------------------- the journey, over HTTP


async def test_a_new_user_subscribes_sees_the_invoice_upgrades_and_cancels(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    plans = (await http.get("/api/v1/plans")).json()["plans"]  # public: a pricing page
    by_id = {plan["id"]: plan for plan in plans}
    assert [p["id"] for p in plans] == ["free", "premium", "pro", "enterprise", "pay_per_token"]
    assert (by_id["premium"]["price_cents"], by_id["premium"]["tokens"]) == (3000, 400_000)
    assert (by_id["pro"]["price_cents"], by_id["pro"]["tokens"]) == (12000, 1_700_000)
    assert (by_id["enterprise"]["price_cents"], by_id["enterprise"]["tokens"]) == (
        25000,
        3_500_000,
    )
    assert by_id["pay_per_token"]["metered"]
    assert by_id["pay_per_token"]["price_cents"] == 0
    assert "relay" in by_id["free"]["features"]
    assert "cloud_llm" not in by_id["free"]["features"]

    ada = await sign_in(http, outbox, "ada@example.org")
    # Without a payment method a paid plan is refused (declined: 402), nothing changes.
    refused = await send(ada, "POST", "/api/v1/subscriptions", "sub-0", {"plan": "premium"})
    assert refused.status_code == 402, refused.text
    await with_test_card(ada)  # a sandbox card: test mode, no money moves
    start = (await ada.get("/api/v1/subscriptions")).json()
    assert start["subscription"]["status"] == "free"
    assert start["usage"]["tokens_included"] == 0

    # Subscribe to Premium: a key is required; the first month is charged in test mode.
    missing = await send(ada, "POST", "/api/v1/subscriptions", None, {"plan": "premium"})
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "idempotency_key_required"
    subscribed = await send(ada, "POST", "/api/v1/subscriptions", "sub-1", {"plan": "premium"})
    assert subscribed.status_code == 201, subscribed.text
    body = subscribed.json()
    assert body["charged_cents"] == 3000
    assert body["subscription"]["plan"] == "premium"
    assert body["subscription"]["status"] == "active"
    period_start = body["subscription"]["period_start"]
    period_end = body["subscription"]["period_end"]
    assert period_end == add_months(period_start, 1)
    assert body["subscription"]["renews_at"] == period_end
    # The same key and body: the same answer, nothing charged again.
    again = await send(ada, "POST", "/api/v1/subscriptions", "sub-1", {"plan": "premium"})
    assert (again.status_code, again.json()) == (201, body)
    reused = await send(ada, "POST", "/api/v1/subscriptions", "sub-1", {"plan": "pro"})
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"

    # See the invoice: JSON and the printable page.
    invoice = (await ada.get(f"/api/v1/invoices/{body['invoice_id']}")).json()
    assert invoice["total_cents"] == 3000
    assert invoice["currency"] == "EUR"
    assert invoice["test_mode"] is True
    assert invoice["payment_provider"] == "sandbox"
    assert [line["kind"] for line in invoice["lines"]] == ["subscription"]
    year = datetime.fromtimestamp(invoice["issued_at"] / 1000, UTC).year
    assert invoice["number"].startswith(f"YGG-{year}-")
    page = await ada.get(f"/api/v1/invoices/{body['invoice_id']}?format=html")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.startswith("<!DOCTYPE html>")
    assert invoice["number"] in page.text
    assert "TEST MODE" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    same = await ada.get(f"/api/v1/invoices/{body['invoice_id']}.html")
    assert same.text == page.text

    # Upgrade to Pro: first the preview (nothing changes), then the change.
    preview = await ada.put("/api/v1/subscriptions?preview=true", json={"plan": "pro"})
    assert preview.status_code == 200, preview.text
    stated = preview.json()
    assert stated["preview"] is True
    assert stated["invoice_id"] is None
    assert stated["before"] == {"plan": "premium", "plan_name": "Premium", "price_cents": 3000}
    assert stated["after"] == {"plan": "pro", "plan_name": "Pro", "price_cents": 12000}
    assert (await ada.get("/api/v1/subscriptions")).json()["subscription"]["plan"] == "premium"
    changed = await send(ada, "PUT", "/api/v1/subscriptions", "up-1", {"plan": "pro"})
    assert changed.status_code == 200, changed.text
    change = changed.json()
    proration = change["proration"]
    assert change["preview"] is False
    assert change["before"]["plan"] == "premium"
    assert change["after"]["plan"] == "pro"
    assert 0 < proration["credit_cents"] <= 3000
    assert 0 < proration["charge_cents"] <= 12000
    assert proration["due_cents"] == proration["charge_cents"] - proration["credit_cents"]
    assert proration["credited_cents"] == 0
    assert proration["period_end"] == period_end  # the period stays
    assert change["subscription"]["plan"] == "pro"
    upgrade = (await ada.get(f"/api/v1/invoices/{change['invoice_id']}")).json()
    assert upgrade["total_cents"] == proration["due_cents"]
    assert [(line["kind"], line["amount_cents"]) for line in upgrade["lines"]] == [
        ("proration_credit", -proration["credit_cents"]),
        ("proration_charge", proration["charge_cents"]),
    ]
    listed = (await ada.get("/api/v1/invoices")).json()["items"]
    assert [i["invoice_id"] for i in listed] == [change["invoice_id"], body["invoice_id"]]

    # Tokens consumed (by the server's own callers) show up for the user.
    domain = server.services.domain.get()
    await domain.usage.consume_tokens(ada.session["user_id"], 1234, key="llm-1")
    usage = (await ada.get("/api/v1/usage")).json()
    assert usage["current"]["tokens_used"] == 1234
    assert usage["current"]["tokens_remaining"] == 1_700_000 - 1234
    assert usage["periods"][0]["tokens_used"] == 1234

    # Cancel: at the period's end; it stays Pro until then.
    canceled = await send(ada, "DELETE", "/api/v1/subscriptions", "cancel-1")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled_at_period_end"
    assert canceled.json()["ends_at"] == period_end
    assert canceled.json()["renews_at"] is None
    assert (await ada.get("/api/v1/subscriptions")).json()["subscription"]["plan"] == "pro"
    resumed = await send(ada, "POST", "/api/v1/subscriptions/resume", "resume-1")
    assert resumed.json()["status"] == "active"
    assert (await send(ada, "DELETE", "/api/v1/subscriptions", "cancel-2")).status_code == 200

    # Another user sees none of it: ada's invoice is not found, exactly like a missing one.
    # The money is in the ledger: collected through the card, charged to the revenue.
    entries = (await ada.get("/api/v1/billing/entries", params={"limit": 100})).json()["items"]
    assert (
        sum(e["amount"] for e in entries if e["kind"] == "deposit") == 3000 + proration["due_cents"]
    )
    assert (await ada.get("/api/v1/billing/balance")).json()["balance"] == 0

    bob = await payer(http, outbox, "bob@example.org", "tok_sandbox_mastercard")
    for path in (f"/api/v1/invoices/{body['invoice_id']}", "/api/v1/invoices/inv_missing"):
        foreign = await bob.get(path)
        assert foreign.status_code == 404
        assert foreign.json()["error"]["code"] == "not_found"
    assert (await bob.get(f"/api/v1/invoices/{body['invoice_id']}.html")).status_code == 404
    assert (await bob.get("/api/v1/invoices")).json()["items"] == []
    assert (await bob.get("/api/v1/subscriptions")).json()["subscription"]["status"] == "free"
    assert (await bob.get("/api/v1/usage")).json()["periods"] == []
    # bob's key of the same name is his own: it does not replay ada's answer.
    bobs = await send(bob, "POST", "/api/v1/subscriptions", "sub-1", {"plan": "premium"})
    assert bobs.status_code == 201
    assert bobs.json()["invoice_id"] != body["invoice_id"]


async def test_bad_subscription_requests_are_refused_and_change_nothing(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    ada = await sign_in(http, outbox, "ada@example.org")
    refused = [
        ("POST", {"plan": 5}, 422, "validation_error"),
        ("POST", {"plan": "premium", "extra": 1}, 422, "validation_error"),
        ("POST", {"plan": "gold"}, 404, "unknown_plan"),
        ("POST", {"plan": "free"}, 422, "free_plan"),
        ("PUT", {"plan": "pro"}, 409, "not_subscribed"),
        ("DELETE", None, 409, "not_subscribed"),
    ]
    for n, (method, body, status, code) in enumerate(refused):
        answer = await send(ada, method, "/api/v1/subscriptions", f"bad-{n}", body)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), body
    bad_key = await send(ada, "POST", "/api/v1/subscriptions", "no spaces", {"plan": "pro"})
    assert bad_key.status_code == 400
    resume = await send(ada, "POST", "/api/v1/subscriptions/resume", "r")
    assert resume.json()["error"]["code"] == "not_subscribed"
    assert (await ada.get("/api/v1/invoices?cursor=%%%")).status_code == 422
    current = (await ada.get("/api/v1/subscriptions")).json()["subscription"]
    assert current["status"] == "free"
    assert (await ada.get("/api/v1/invoices")).json()["items"] == []
    entries = (await ada.get("/api/v1/billing/entries")).json()["items"]
    assert entries == []


# --------------------------------------------------------------------- arithmetic


@given(
    old=st.integers(0, 10**9),
    new=st.integers(0, 10**9),
    start=st.integers(0, 4 * 10**12),
    length=st.integers(1, 10**11),
    offset=st.integers(-(10**11), 2 * 10**11),
)
def test_proration_is_whole_cents_never_negative_and_consistent(
    old: int, new: int, start: int, length: int, offset: int
) -> None:
    end = start + length
    p = prorate(old, new, start, end, start + offset)
    for value in (p.credit_cents, p.charge_cents, p.due_cents, p.credited_cents):
        assert isinstance(value, int)
        assert value >= 0
    assert p.credit_cents <= old
    assert p.charge_cents <= new
    assert p.due_cents - p.credited_cents == p.charge_cents - p.credit_cents
    assert p.due_cents == 0 or p.credited_cents == 0
    remaining = Fraction(end - p.at, length)
    assert start <= p.at <= end
    # Rounded down: never more than the exact share, less by under a cent.
    assert 0 <= old * remaining - p.credit_cents < 1
    assert 0 <= new * remaining - p.charge_cents < 1
    if new >= old:
        assert p.credited_cents == 0
    if new <= old:
        assert p.due_cents == 0


def test_proration_examples() -> None:
    start, end = ms(2025, 3, 1), ms(2025, 4, 1)
    half = start + (end - start) // 2
    up = prorate(3000, 12000, start, end, half)
    assert (up.credit_cents, up.charge_cents, up.due_cents) == (1500, 6000, 4500)
    down = prorate(12000, 3000, start, end, half)
    assert (down.due_cents, down.credited_cents) == (0, 4500)
    assert prorate(3000, 12000, start, end, start).due_cents == 9000
    assert prorate(3000, 12000, start, end, end).due_cents == 0
    with pytest.raises(Invalid):
        prorate(100, 200, end, start, start)


def test_periods_are_calendar_months_anchored_on_the_day() -> None:
    anchor = ms(2024, 1, 31, 10, 30)
    ends = [add_months(anchor, n) for n in range(1, 5)]
    assert ends == [
        ms(2024, 2, 29, 10, 30),
        ms(2024, 3, 31, 10, 30),
        ms(2024, 4, 30, 10, 30),
        ms(2024, 5, 31, 10, 30),
    ]
    assert add_months(ms(2025, 12, 15), 1) == ms(2026, 1, 15)
    assert add_months(ms(2025, 1, 31), 1) == ms(2025, 2, 28)


@given(st.integers(0, 4 * 10**12), st.integers(0, 240))
def test_periods_never_drift(anchor: int, n: int) -> None:
    moved = datetime.fromtimestamp(add_months(anchor, n) / 1000, UTC)
    base = datetime.fromtimestamp(anchor / 1000, UTC)
    assert (moved.year * 12 + moved.month) - (base.year * 12 + base.month) == n
    assert moved.day == base.day or moved.day < base.day  # the month's last day when shorter
    assert moved.time() == base.time()
    assert add_months(anchor, n + 1) > add_months(anchor, n)


# --------------------------------------------------------------------- state rules, in the store


async def user(store: Store, name: str) -> str:
    created, _ = await store.create_user(f"{name}@example.org")
    return created.user_id


async def test_the_state_rules_of_a_subscription(store: Store) -> None:
    subs = Subscriptions.build(store.db, CONFIG)
    ada = await user(store, "ada")
    with pytest.raises(NotSubscribed):
        await subs.cancel(ada, key="c0")
    await subs.subscribe(ada, "premium", key="s1")
    with pytest.raises(AlreadySubscribed):
        await subs.subscribe(ada, "pro", key="s2")
    with pytest.raises(SamePlan):
        await subs.change(ada, "premium", key="c1")
    with pytest.raises(NotCanceled):
        await subs.resume(ada, key="r0")
    await subs.cancel(ada, key="c2")
    with pytest.raises(CancelPending):
        await subs.change(ada, "pro", key="c3")
    await subs.resume(ada, key="r1")
    down = await subs.change(ada, "pay_per_token", key="c4")
    assert down.proration.due_cents == 0
    assert down.proration.credited_cents > 0
    assert down.subscription.plan == "pay_per_token"
    charger = subs.charger
    assert isinstance(charger, SandboxCharger)
    kinds = [(c["kind"], c["amount_cents"]) for c in await charger.charges(ada)]
    assert kinds == [("charge", 3000), ("credit", down.proration.credited_cents)]
    history = await subs.history(ada)
    assert [h.plan for h in history] == ["pay_per_token"]


async def test_a_declined_payment_changes_nothing(store: Store) -> None:
    charger = SandboxCharger(store.db, script=["declined"])
    subs = Subscriptions.build(store.db, CONFIG, charger)
    ada = await user(store, "ada")
    with pytest.raises(PaymentDeclined):
        await subs.subscribe(ada, "premium", key="k1")
    assert (await subs.current(ada)).status == "free"
    assert (await subs.invoices.list(ada)).items == []
    # The provider answers a repeated key with its first answer; a new key is a new attempt.
    with pytest.raises(PaymentDeclined):
        await subs.subscribe(ada, "premium", key="k1")
    done = await subs.subscribe(ada, "premium", key="k2")
    assert done.subscription.status == "active"
    assert [c["outcome"] for c in await charger.charges(ada)] == ["declined", "ok"]


async def test_concurrent_duplicates_execute_once(store: Store) -> None:
    charger = SandboxCharger(store.db, delay_s=0.2)
    subs = Subscriptions.build(store.db, CONFIG, charger)
    ada = await user(store, "ada")
    answers: list[object] = []
    errors: list[str] = []

    async def attempt(key: str) -> None:
        try:
            answers.append(await subs.subscribe(ada, "premium", key=key))
        except AlreadySubscribed as exc:
            errors.append(exc.code)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(attempt, "same")
    assert len(answers) == 10
    assert all(a == answers[0] for a in answers)
    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(attempt, f"other-{n}")
    assert errors == ["already_subscribed"] * 5
    assert len(await charger.charges(ada)) == 1
    assert len((await subs.invoices.list(ada)).items) == 1
    with pytest.raises(IdempotencyKeyReused):
        await subs.subscribe(ada, "pro", key="same")
