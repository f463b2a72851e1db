"""Tenant isolation, tried by an attacker: every route that takes an id, from the OpenAPI
document, answers a second tenant exactly as it answers a nonexistent id, and changes nothing."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients import RELAXED_LIMITS, count_mail, device, read_code, sign_in, with_test_card
from tests.conftest import fresh_pg_database
from tests.servers import running_server
from yggdrasil.billing import Posting, user_account
from yggdrasil.marketplace._store import MarketStore
from yggdrasil.server import Running

# Path parameters that name tenant data, and which parameters are not tenant data at all.
TENANT_PARAMS = {
    "device_id",
    "dispute_id",
    "hold_id",
    "invoice_id",
    "key_id",
    "method_id",
    "network_id",
    "payout_id",
    "provider_id",
    "request_id",
    "transaction_id",
    "user_id",
}
PUBLIC_PARAMS = {"provider"}  # identity providers are the server's public configuration

# A valid body for every route with an id that takes one: without it the request would stop at
# validation and prove nothing. A new route with a body must be added here (the test says so).
BODIES: dict[tuple[str, str], Any] = {
    ("put", "/api/v1/devices/{device_id}"): {"name": "pwned", "metadata": {"x": 1}},
    ("put", "/api/v1/devices/{device_id}/ddns"): {"label": "pwned"},
    ("post", "/api/v1/networks/{network_id}/enrollment-keys"): {"ttl_s": 600},
    ("put", "/api/v1/networks/{network_id}"): {"name": "pwned"},
    ("put", "/api/admin/networks/{network_id}"): {"name": "pwned"},
    ("post", "/api/v1/payments/methods/{method_id}/default"): {"purpose": "payer"},
    ("post", "/api/v1/payments/methods/{method_id}/verify"): {"amounts_cents": [32, 45]},
    ("post", "/api/v1/billing/holds/{hold_id}/capture"): {"amount": 100},
    ("post", "/api/admin/users/{user_id}/kyc"): {"status": "verified"},
    ("put", "/api/v1/marketplace/providers/{provider_id}"): {
        "models": ["echo"],
        "price_per_1k": 1,
    },
    ("post", "/api/v1/marketplace/requests/{request_id}/feedback"): {"rating": 5},
    ("post", "/api/v1/marketplace/transactions/{transaction_id}/dispute"): {"reason": "wrong"},
    ("post", "/api/admin/marketplace/disputes/{dispute_id}/resolve"): {"refund": 0},
    ("post", "/api/v1/devices/{device_id}/webrtc"): {
        "type": "offer",
        "sdp": "\r\n".join(
            [
                "v=0",
                "o=- 1 1 IN IP4 0.0.0.0",
                "s=-",
                "t=0 0",
                "a=group:BUNDLE 0",
                "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
                "c=IN IP4 0.0.0.0",
                "a=mid:0",
                "a=sctp-port:5000",
                "a=max-message-size:262144",
                "a=ice-ufrag:abcd",
                "a=ice-pwd:abcdefghijklmnopqrstuvwx",
                "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
                "a=setup:actpass",
                "",
            ]
        ),
    },
}
IGNORED_HEADERS = {"date"}


def unsealed(export: dict[str, Any]) -> dict[str, Any]:
    """A data export without the audit entries' place in the chain (the sealer assigns it)."""
    audit = [{k: v for k, v in e.items() if k != "seq"} for e in export["audit_log"]]
    return {**export, "audit_log": audit}


def snapshot(response: httpx.Response) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    headers = tuple(
        sorted((k, v) for k, v in response.headers.items() if k.lower() not in IGNORED_HEADERS)
    )
    return response.status_code, response.content, headers


@pytest.fixture
async def running(data_dir: Path, backend: str, asyncio_loop: None) -> AsyncIterator[Running]:
    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
        yield await stack.enter_async_context(
            running_server(
                data_dir,
                limits=RELAXED_LIMITS,
                database=database,
                payouts={"kyc_regions": []},  # so that Alice can have a payout to look for
            )
        )


@pytest.fixture
async def world(running: Running, data_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    async with httpx.AsyncClient(base_url=running.api_url, timeout=30) as http:
        yield http, data_dir / "outbox"


async def test_foreign_ids_look_exactly_like_nonexistent_ones(
    world: tuple[httpx.AsyncClient, Path], running: Running
) -> None:
    http, outbox = world
    alice = await sign_in(http, outbox, "alice@example.org")
    alice_home = (await alice.get("/api/v1/users/me")).json()["home_network_id"]
    method = await alice.post(
        "/api/v1/payments/methods", json={"kind": "sepa_debit", "token": "tok_sandbox_sepa"}
    )
    assert (await alice.post("/api/v1/devices", json=device("laptop"))).status_code == 201
    await with_test_card(alice)
    paid = await alice.request(
        "POST", "/api/v1/payments/process", json={"amount": 3000}, headers={"Idempotency-Key": "p"}
    )
    assert paid.status_code == 201, paid.text
    hold = await alice.request(
        "POST", "/api/v1/billing/holds", json={"amount": 500}, headers={"Idempotency-Key": "h"}
    )
    assert hold.status_code == 201, hold.text
    # Earnings (as the marketplace will book them) and a payout of them to her PayPal account.
    paypal = {"kind": "paypal", "token": "tok_sandbox_paypal", "purposes": ["payout"]}
    assert (await alice.post("/api/v1/payments/methods", json=paypal)).status_code == 201
    ledger = running.services.domain.get().ledger
    alice_id = alice.session["user_id"]
    earned = await ledger.hold(alice_id, 1500, key="earn")
    to_earnings = [Posting(user_account(alice_id, "earnings"), 1500)]
    await ledger.capture(earned.hold_id, 1500, key="earned", to=to_earnings)
    payout = await alice.request(
        "POST", "/api/v1/payouts", json={"amount": 1000}, headers={"Idempotency-Key": "o"}
    )
    assert payout.status_code == 201, payout.text
    subscribed = await alice.request(
        "POST", "/api/v1/subscriptions", json={"plan": "premium"}, headers={"Idempotency-Key": "s"}
    )
    assert subscribed.status_code == 201, subscribed.text
    lab = (await alice.post("/api/v1/networks", json={"name": "Alice's secret lab"})).json()
    await alice.post(f"/api/v1/networks/{lab['network_id']}/enrollment-keys", json={"ttl_s": 600})
    key = await alice.post(f"/api/v1/networks/{alice_home}/enrollment-keys", json={"ttl_s": 600})
    # A provider of hers (as the marketplace stores one that passed its test) and a request.
    market = MarketStore(running.services.domain.get().store.db)
    provider = await market.add_provider(
        {
            "provider_id": "pv_alices",
            "user_id": alice_id,
            "network_id": alice_home,
            "device_id": "laptop",
            "models": '["echo"]',
            "hardware": "{}",
            "price_per_1k": 10,
            "max_concurrent": 1,
            "tokens_per_minute": 100,
            "schedule": "[]",
            "quality": "{}",
            "status": "paused",
            "test_latency_ms": 1,
            "test_tokens_per_s": 1,
            "created_at": 1,
            "updated_at": 1,
        }
    )
    asked = await alice.request(
        "POST",
        "/api/v1/marketplace/requests",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_cost": 5},
        headers={"Idempotency-Key": "m"},
    )
    assert asked.status_code == 202, asked.text
    # A settled request of hers (a transaction, as the marketplace stores one) and its dispute.
    await market.add_request(
        {
            "request_id": "mr_alices",
            "user_id": alice_id,
            "idempotency_key": "settled",
            "fingerprint": "{}",
            "model": "echo",
            "messages": "[]",
            "max_cost": 5,
            "max_tokens": 5,
            "state": "COMPLETED",
            "provider_id": provider.provider_id,
            "provider_user_id": alice_id,
            "price_per_1k": 10,
            "attempts": "[]",
            "answer": "hi",
            "cost": 1,
            "capture_txn": "tx_alices",
            "created_at": 1,
        }
    )
    dispute = await market.add_dispute(
        {
            "dispute_id": "md_alices",
            "request_id": "mr_alices",
            "user_id": alice_id,
            "provider_user_id": alice_id,
            "reason": "wrong",
            "created_at": 1,
        }
    )
    alice_ids = {
        "transaction_id": "tx_alices",
        "dispute_id": dispute["dispute_id"],
        "provider_id": provider.provider_id,
        "request_id": asked.json()["request_id"],
        "device_id": "laptop",
        "hold_id": hold.json()["hold_id"],
        "invoice_id": subscribed.json()["invoice_id"],
        "key_id": key.json()["key_id"],
        "method_id": method.json()["method_id"],
        "payout_id": payout.json()["payout_id"],
        "network_id": alice_home,
        "user_id": alice.session["user_id"],
    }
    bob = await sign_in(http, outbox, "bob@example.org")
    bob_device = await sign_in(http, outbox, "bob@example.org", device_body=device("bobs-phone"))
    await bob.post("/api/v1/devices", json=device("laptop"))  # same id, his own network

    before = (await alice.get("/api/v1/users/me/export")).json()
    spec = (await http.get("/openapi.json")).json()
    checked = 0
    for template, operations in spec["paths"].items():
        params = set(re.findall(r"{(\w+)}", template))
        unknown = params - TENANT_PARAMS - PUBLIC_PARAMS
        assert not unknown, f"{template}: classify the parameter(s) {unknown} in this test"
        if not params & TENANT_PARAMS:
            continue
        for method, operation in operations.items():
            body = BODIES.get((method, template))
            if "requestBody" in operation:
                assert body is not None, f"add a valid body for {method.upper()} {template}"
            query_names = {
                p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"
            }
            for attacker in (bob, bob_device):
                foreign = template
                missing = template
                for name in params & TENANT_PARAMS:
                    foreign = foreign.replace(f"{{{name}}}", alice_ids[name])
                    missing = missing.replace(f"{{{name}}}", f"x{secrets.token_hex(8)}")
                # Device ids are unique per network only, so the network travels in the query:
                # Alice's real device in her real network against a made-up device in a
                # made-up network, and against a made-up device in her real network.
                own: dict[str, str] = {}
                made_up: dict[str, str] = {}
                if "network_id" in query_names:
                    own = {"network_id": alice_home}
                    made_up = {"network_id": f"n_{secrets.token_hex(8)}"}
                variants = [(foreign, missing, own, made_up)]
                if own:
                    variants.append((foreign, missing, own, own))
                for foreign_path, missing_path, foreign_query, missing_query in variants:
                    answers = []
                    for path, query in (
                        (foreign_path, foreign_query),
                        (missing_path, missing_query),
                    ):
                        # Money-moving routes need a key to reach their tenant check.
                        idem = {"Idempotency-Key": f"k{secrets.token_hex(8)}"}
                        response = await attacker.request(
                            method.upper(), path, params=query, json=body, headers=idem
                        )
                        answers.append(snapshot(response))
                    assert answers[0] == answers[1], (method, template, answers)
                    assert answers[0][0] in (403, 404), (method, template, answers[0])
                    checked += 1
    assert checked >= 20  # the harness really ran over the routes with ids

    after = (await alice.get("/api/v1/users/me/export")).json()
    assert unsealed(after) == unsealed(before)
    listed = (await alice.get("/api/v1/devices")).json()["items"]
    assert [(d["device_id"], d["name"]) for d in listed] == [("laptop", "device laptop")]


async def test_network_names_and_counts_never_leak(world: tuple[httpx.AsyncClient, Path]) -> None:
    http, outbox = world
    alice = await sign_in(http, outbox, "alice2@example.org")
    await alice.post("/api/v1/networks", json={"name": "Project Nightingale"})
    bob = await sign_in(http, outbox, "bob2@example.org")
    seen: list[str] = []
    for path in (
        "/api/v1/networks",
        "/api/v1/devices",
        "/api/v1/users/me",
        "/api/v1/users/me/export",
    ):
        seen.append((await bob.get(path)).text)
    blob = "\n".join(seen)
    assert "Nightingale" not in blob
    assert alice.session["user_id"] not in blob
    assert "alice2@example.org" not in blob
    assert len((await bob.get("/api/v1/networks")).json()["items"]) == 1


async def test_a_user_can_not_pick_a_foreign_network_at_sign_in(
    world: tuple[httpx.AsyncClient, Path],
) -> None:
    http, outbox = world
    alice = await sign_in(http, outbox, "alice3@example.org")
    alice_home = (await alice.get("/api/v1/users/me")).json()["home_network_id"]
    answers = []
    for network_id in (alice_home, "n_made_up"):
        seen = count_mail(outbox, "mallory@example.org")
        await http.post("/api/v1/users/login", json={"email": "mallory@example.org"})
        code = await read_code(outbox, "mallory@example.org", seen=seen)
        response = await http.post(
            "/api/v1/users/verify",
            json={
                "email": "mallory@example.org",
                "code": code,
                "device": device("spy"),
                "network_id": network_id,
            },
        )
        answers.append(snapshot(response))
    assert answers[0] == answers[1]
    assert answers[0][0] == 404
    assert (await alice.get("/api/v1/devices")).json()["items"] == []


async def test_a_foreign_network_in_the_query_looks_like_a_missing_one(
    world: tuple[httpx.AsyncClient, Path],
) -> None:
    """``GET /api/v1/devices?network_id=`` once answered 200 with an empty list for another
    user's network (and 404 for a made-up one): the existence of a network leaked."""
    http, outbox = world
    alice = await sign_in(http, outbox, "alice4@example.org")
    alice_home = (await alice.get("/api/v1/users/me")).json()["home_network_id"]
    bob = await sign_in(http, outbox, "bob4@example.org")
    bob_phone = await sign_in(http, outbox, "bob4@example.org", device_body=device("phone"))
    for attacker in (bob, bob_phone):
        answers = [
            snapshot(await attacker.get("/api/v1/devices", params={"network_id": network_id}))
            for network_id in (alice_home, f"n_{secrets.token_hex(8)}")
        ]
        assert answers[0] == answers[1]
        assert answers[0][0] == 404


async def test_another_users_networks_and_keys_look_like_missing_ones(
    world: tuple[httpx.AsyncClient, Path],
) -> None:
    """Renaming or deleting another user's network, listing its keys, or revoking their key -
    even through one's own network - answers exactly as for ids that do not exist, and changes
    nothing."""
    http, outbox = world
    alice = await sign_in(http, outbox, "alice5@example.org")
    lab = (await alice.post("/api/v1/networks", json={"name": "Observatory"})).json()["network_id"]
    created = await alice.post(f"/api/v1/networks/{lab}/enrollment-keys", json={"ttl_s": 600})
    key_id = created.json()["key_id"]
    before = (await alice.get("/api/v1/users/me/export")).json()
    bob = await sign_in(http, outbox, "bob5@example.org")
    bob_home = (await bob.get("/api/v1/users/me")).json()["home_network_id"]
    bob_lab = (await bob.post("/api/v1/networks", json={"name": "b"})).json()["network_id"]
    made_up_network, made_up_key = f"n_{secrets.token_hex(8)}", f"ek_{secrets.token_hex(8)}"
    for method, foreign, missing, body in (
        ("PUT", f"/api/v1/networks/{lab}", f"/api/v1/networks/{made_up_network}", {"name": "x"}),
        ("DELETE", f"/api/v1/networks/{lab}", f"/api/v1/networks/{made_up_network}", None),
        (
            "GET",
            f"/api/v1/networks/{lab}/enrollment-keys",
            f"/api/v1/networks/{made_up_network}/enrollment-keys",
            None,
        ),
        (
            "DELETE",
            f"/api/v1/networks/{lab}/enrollment-keys/{key_id}",
            f"/api/v1/networks/{made_up_network}/enrollment-keys/{made_up_key}",
            None,
        ),
        # Her key through his own networks: the key's id does not reach across.
        (
            "DELETE",
            f"/api/v1/networks/{bob_home}/enrollment-keys/{key_id}",
            f"/api/v1/networks/{bob_home}/enrollment-keys/{made_up_key}",
            None,
        ),
        (
            "DELETE",
            f"/api/v1/networks/{bob_lab}/enrollment-keys/{key_id}",
            f"/api/v1/networks/{bob_lab}/enrollment-keys/{made_up_key}",
            None,
        ),
    ):
        answers = [
            snapshot(await bob.request(method, path, json=body)) for path in (foreign, missing)
        ]
        assert answers[0] == answers[1], (method, foreign, answers)
        assert answers[0][0] == 404, (method, foreign, answers)
    listed = (await bob.get(f"/api/v1/networks/{bob_home}/enrollment-keys")).json()
    assert listed == {"items": [], "next_cursor": None}
    after = (await alice.get("/api/v1/users/me/export")).json()
    assert unsealed(after) == unsealed(before)
    keys = (await alice.get(f"/api/v1/networks/{lab}/enrollment-keys")).json()["items"]
    assert [(k["key_id"], k["status"]) for k in keys] == [(key_id, "usable")]
    assert (await alice.get(f"/api/v1/networks/{lab}")).json()["name"] == "Observatory"
