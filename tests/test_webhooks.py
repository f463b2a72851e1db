"""Payment webhooks through the real HTTP API, on both backends: Stripe's signature over the raw
body (good, bad, stale, from the future, tampered), PayPal's through its verify call (against the
fake), deliveries twice, late and out of order, concurrent deliveries to one instance and to two
instances over one database: every event changes the state once."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.clients import RELAXED_LIMITS, User, sign_in
from tests.conftest import fresh_pg_database
from tests.fake_paypal import CLIENT_ID, CLIENT_SECRET, FakePayPal, paypal_headers
from tests.fake_stripe import FakeStripe, stripe_event, stripe_signature
from tests.servers import running_server
from yggdrasil import Tx
from yggdrasil.billing import MAX_WEBHOOK_BYTES, WebhookEvent
from yggdrasil.server import Running

STRIPE_HOOK = "/api/v1/payments/webhooks/stripe"
PAYPAL_HOOK = "/api/v1/payments/webhooks/paypal"
SECRET = "whsec_fixture_secret"
WEBHOOK_ID = "WH-FIXTURE-1"


@dataclass
class World:
    http: httpx.AsyncClient
    running: Running
    stripe: FakeStripe
    paypal: FakePayPal
    payments: dict[str, Any]
    database: dict[str, str]
    dispatched: list[tuple[str, str]]
    """``(kind, event id)`` of each event the handlers saw."""

    def record(self, running: Running) -> None:
        async def handler(tx: Tx, event: WebhookEvent) -> None:
            self.dispatched.append((event.kind or event.type, event.event_id))

        webhooks = running.services.domain.get().payments.webhooks
        for kind in ("payment.succeeded", "payment.canceled", "payment.authorized"):
            webhooks.on(kind, handler)


@pytest.fixture
async def world(
    backend: str, data_dir: Path, asyncio_loop: None, nursery: trio.Nursery
) -> AsyncIterator[World]:
    fake_stripe, fake_paypal = FakeStripe(), FakePayPal()
    await nursery.start(fake_stripe.serve)
    await nursery.start(fake_paypal.serve)
    payments = {
        "stripe_secret_key": "sk_test_fixture",
        "stripe_api_base": fake_stripe.url,
        "stripe_webhook_secret": SECRET,
        "paypal_client_id": CLIENT_ID,
        "paypal_client_secret": CLIENT_SECRET,
        "paypal_api_base": fake_paypal.url,
        "paypal_webhook_id": WEBHOOK_ID,
        "retries": 0,
    }
    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
        running = await stack.enter_async_context(
            running_server(data_dir, limits=RELAXED_LIMITS, database=database, payments=payments)
        )
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=running.api_url, timeout=30)
        )
        world = World(http, running, fake_stripe, fake_paypal, payments, database, [])
        world.record(running)
        yield world


def intent(intent_id: str, status: str) -> dict[str, Any]:
    return {"id": intent_id, "object": "payment_intent", "status": status, "amount": 5000}


async def deliver(
    http: httpx.AsyncClient,
    body: bytes,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    signature: str | None = None,
) -> httpx.Response:
    header = signature if signature is not None else stripe_signature(body, secret, timestamp)
    return await http.post(
        STRIPE_HOOK,
        content=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


async def test_stripe_signatures_over_the_raw_body_within_the_tolerance(world: World) -> None:
    http = world.http
    body = stripe_event("payment_intent.succeeded", intent("pi_a", "succeeded"), event_id="evt_a")
    now = int(time.time())
    refusals = [
        await deliver(http, body, secret="whsec_wrong"),
        await deliver(http, body, timestamp=now - 301),
        await deliver(http, body, timestamp=now + 301),  # the package alone would accept it
        await deliver(http, body, signature=""),
        await deliver(http, body, signature="t=abc,v1=zzz"),
        await deliver(http, body, signature="v1=" + "0" * 64),
        # Signed, then changed on the way: one space more, another amount.
        await deliver(http, body + b" ", signature=stripe_signature(body, SECRET)),
        await deliver(
            http,
            body.replace(b'"amount": 5000', b'"amount": 1'),
            signature=stripe_signature(body, SECRET),
        ),
    ]
    for response in refusals:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "webhook_refused"
    missing = await http.post(STRIPE_HOOK, content=body)
    assert missing.status_code == 400
    assert world.dispatched == []  # nothing refused was recorded or dispatched

    for timestamp in (now - 250, now + 250):  # both sides of now, within 300 s
        fresh = stripe_event(
            "payment_intent.succeeded",
            intent(f"pi_{timestamp}", "succeeded"),
            event_id=f"evt_{timestamp}",
        )
        accepted = await deliver(http, fresh, timestamp=timestamp)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["result"] == "processed"
    good = await deliver(http, body)
    assert good.json() == {"event_id": "evt_a", "result": "processed"}
    assert len(world.dispatched) == 3

    huge = b'{"pad": "' + b"x" * MAX_WEBHOOK_BYTES + b'"}'
    too_big = await deliver(http, huge)
    assert too_big.status_code == 413


async def test_twice_late_and_out_of_order_change_the_state_once(world: World) -> None:
    http = world.http
    now = int(time.time())
    canceled = stripe_event(
        "payment_intent.canceled", intent("pi_1", "canceled"), event_id="evt_1", created=now - 20
    )
    first = await deliver(http, canceled)
    assert first.json()["result"] == "processed"
    again = await deliver(http, canceled)  # Stripe delivers again (its answer got lost)
    assert again.json()["result"] == "duplicate"
    # A success that arrives after the cancellation, even one made later, does not resurrect.
    late = stripe_event(
        "payment_intent.succeeded", intent("pi_1", "succeeded"), event_id="evt_2", created=now
    )
    assert (await deliver(http, late)).json()["result"] == "stale"
    assert (await deliver(http, late)).json()["result"] == "duplicate"

    # Out of order: the newer state first, then an older one, which changes nothing.
    newer = stripe_event(
        "payment_intent.amount_capturable_updated",
        intent("pi_2", "requires_capture"),
        event_id="evt_3",
        created=now - 5,
    )
    older = stripe_event(
        "payment_intent.processing",
        intent("pi_2", "processing"),
        event_id="evt_4",
        created=now - 10,
    )
    done = stripe_event(
        "payment_intent.succeeded", intent("pi_2", "succeeded"), event_id="evt_5", created=now
    )
    results = [(await deliver(http, body)).json()["result"] for body in (newer, older, done)]
    assert results == ["processed", "stale", "processed"]
    assert world.dispatched == [
        ("payment.canceled", "evt_1"),
        ("payment.authorized", "evt_3"),
        ("payment.succeeded", "evt_5"),
    ]


async def sepa_pending(world: World, address: str) -> tuple[User, dict[str, Any]]:
    user = await sign_in(world.http, _outbox(world), address)
    added = await user.post(
        "/api/v1/payments/methods",
        json={"kind": "sepa_debit", "token": "pm_sepa_debit", "purposes": ["payer"]},
    )
    assert added.status_code == 201, added.text
    method = added.json()
    assert (method["provider"], method["status"], method["needs"]) == (
        "stripe",
        "pending",
        "confirm_micro_deposits",
    )
    assert method["test_mode"] is True  # a test key
    return user, method


def _outbox(world: World) -> Path:
    return Path(world.running.services.config.server.data_dir) / "outbox"


def setup_succeeded(world: World, event_id: str) -> bytes:
    (reference,) = world.stripe.setup_intents  # the one the method's check made
    obj = {"id": reference, "object": "setup_intent", "status": "succeeded"}
    return stripe_event("setup_intent.succeeded", obj, event_id=event_id)


async def verified_entries(running: Running, method_id: str) -> int:
    """Audit entries of the method's verification, sealed or not: one statement, so that the
    sealer moving an entry between the two tables cannot hide it (PostgreSQL reads each
    statement on its own)."""
    where = "WHERE action = 'payment_method.verified' AND subject = $1"

    async def work(tx: Tx) -> int:
        count: int = await tx.fetchval(
            f"SELECT (SELECT COUNT(*) FROM audit_log {where})"
            f" + (SELECT COUNT(*) FROM audit_pending {where})",
            method_id,
        )
        return count

    return await running.services.domain.get().store.db.read(work)


async def test_concurrent_deliveries_verify_a_method_once(world: World) -> None:
    user, method = await sepa_pending(world, "sepa@example.org")
    body = setup_succeeded(world, "evt_seti")
    results: list[str] = []

    async def one() -> None:
        response = await deliver(world.http, body)
        assert response.status_code == 200, response.text
        results.append(response.json()["result"])

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    assert sorted(results) == ["duplicate"] * 7 + ["processed"]
    now = (await user.get(f"/api/v1/payments/methods/{method['method_id']}")).json()
    assert (now["status"], now["needs"], now["default_payer"]) == ("verified", None, True)
    assert await verified_entries(world.running, method["method_id"]) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])  # instances share PostgreSQL, not a file
async def test_two_instances_over_one_database_process_an_event_once(
    world: World, tmp_path: Path, data_dir: Path
) -> None:
    assert world.database
    user, method = await sepa_pending(world, "cluster@example.org")
    body = setup_succeeded(world, "evt_cluster")
    async with (
        running_server(
            tmp_path / "second",
            limits=RELAXED_LIMITS,
            database=world.database,
            payments=world.payments,
            # Instances of one database share its data keyring (docs/cluster.md).
            encryption={"key_file": str(data_dir / "secrets" / "data-keyring.json")},
        ) as second,
        httpx.AsyncClient(base_url=second.api_url, timeout=30) as other,
    ):
        results: list[str] = []

        async def one(http: httpx.AsyncClient) -> None:
            response = await deliver(http, body)
            assert response.status_code == 200, response.text
            results.append(response.json()["result"])

        async with trio.open_nursery() as nursery:
            for http in (world.http, other) * 3:
                nursery.start_soon(one, http)
    assert sorted(results) == ["duplicate"] * 5 + ["processed"]
    assert await verified_entries(world.running, method["method_id"]) == 1
    now = (await user.get(f"/api/v1/payments/methods/{method['method_id']}")).json()
    assert now["status"] == "verified"


def paypal_event(event_id: str, event_type: str, resource: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "event_version": "1.0",
            "create_time": datetime.datetime.now(datetime.UTC).isoformat(),
            "resource_type": "capture",
            "event_type": event_type,
            "resource": resource,
        }
    ).encode()


async def test_paypal_webhooks_are_checked_by_paypal_over_the_raw_body(world: World) -> None:
    http = world.http
    body = paypal_event(
        "WH-EVT-1", "PAYMENT.CAPTURE.COMPLETED", {"id": "CAPTURE-9", "status": "COMPLETED"}
    )
    headers = paypal_headers(body, WEBHOOK_ID, transmission_id="t-1")
    good = await http.post(PAYPAL_HOOK, content=body, headers=headers)
    assert good.status_code == 200, good.text
    assert good.json() == {"event_id": "WH-EVT-1", "result": "processed"}
    assert (await http.post(PAYPAL_HOOK, content=body, headers=headers)).json()["result"] == (
        "duplicate"
    )
    assert world.dispatched == [("payment.succeeded", "WH-EVT-1")]

    other = paypal_event(
        "WH-EVT-2", "PAYMENT.CAPTURE.DENIED", {"id": "CAPTURE-8", "status": "DENIED"}
    )
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=400)
    ahead = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=400)
    signed = paypal_headers(other, WEBHOOK_ID, transmission_id="t-2")
    for content, sent_headers in (
        (other, paypal_headers(other, "WH-SOMEONE-ELSE", transmission_id="t-2")),
        (other.replace(b"DENIED", b"COMPLETED"), signed),  # tampered after signing
        (other + b"\n", signed),
        (other, paypal_headers(other, WEBHOOK_ID, transmission_id="t-2", sent=old)),
        (other, paypal_headers(other, WEBHOOK_ID, transmission_id="t-2", sent=ahead)),
        (other, {k: v for k, v in signed.items() if k != "PayPal-Transmission-Sig"}),
        (other, {}),
    ):
        refused = await http.post(PAYPAL_HOOK, content=content, headers=sent_headers)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "webhook_refused"
    assert world.dispatched == [("payment.succeeded", "WH-EVT-1")]


async def test_webhooks_answer_404_until_configured(http: httpx.AsyncClient) -> None:
    body = stripe_event("payment_intent.succeeded", intent("pi_x", "succeeded"), event_id="evt_x")
    for path in (STRIPE_HOOK, PAYPAL_HOOK):
        response = await http.post(
            path, content=body, headers={"Stripe-Signature": stripe_signature(body, SECRET)}
        )
        assert response.status_code == 404


async def test_methods_go_to_stripe_and_paypal_once_they_are_configured(world: World) -> None:
    user = await sign_in(world.http, _outbox(world), "real@example.org")
    providers = (await user.get("/api/v1/payments/providers")).json()
    assert [p["name"] for p in providers["items"]] == ["sandbox", "stripe", "paypal"]
    card = await user.post(
        "/api/v1/payments/methods", json={"kind": "card", "token": "pm_card_visa"}
    )
    assert card.status_code == 201, card.text
    assert (card.json()["provider"], card.json()["status"], card.json()["last4"]) == (
        "stripe",
        "verified",
        "4242",
    )
    declined = await user.post(
        "/api/v1/payments/methods", json={"kind": "card", "token": "pm_card_chargeDeclined"}
    )
    assert (declined.status_code, declined.json()["status"]) == (201, "failed")
    account = await user.post(
        "/api/v1/payments/methods",
        json={"kind": "paypal", "token": "PAYPAL-VERIFIED", "purposes": ["payout"]},
    )
    assert account.status_code == 201, account.text
    assert (account.json()["provider"], account.json()["status"], account.json()["email"]) == (
        "paypal",
        "verified",
        "b***@example.com",
    )
    # The keys the providers saw are derived from the method ids.
    assert world.stripe.keyed("/v1/setup_intents") == [
        f"{card.json()['method_id']}-verify",
        f"{declined.json()['method_id']}-verify",
    ]
    sandbox = await user.post(
        "/api/v1/payments/methods",
        json={"kind": "card", "token": "tok_sandbox_visa", "provider": "sandbox"},
    )
    assert sandbox.json()["provider"] == "sandbox"
