"""The ledger's HTTP routes on both backends: idempotency keys, bad amounts, parallel captures and
duplicates, and every user seeing only their own money."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.clients import User, device, payer, sign_in
from yggdrasil.server import Running


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def money(user: User) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    balance = (await user.get("/api/v1/billing/balance")).json()
    entries = (await user.get("/api/v1/billing/entries", params={"limit": 100})).json()["items"]
    return balance, entries


async def test_process_books_a_payment_once_per_key(http: httpx.AsyncClient, outbox: Path) -> None:
    ada = await payer(http, outbox, "ada@example.org")
    first = await ada.request(
        "POST", "/api/v1/payments/process", json={"amount": 2500}, headers=key("pay-1")
    )
    assert first.status_code == 201, first.text
    payment = first.json()
    assert (payment["amount"], payment["currency"], payment["provider"]) == (2500, "EUR", "sandbox")
    assert payment["test_mode"] is True
    again = await ada.request(
        "POST", "/api/v1/payments/process", json={"amount": 2500}, headers=key("pay-1")
    )
    assert (again.status_code, again.json()) == (201, payment)
    balance, entries = await money(ada)
    assert balance == {
        "currency": "EUR",
        "balance": 2500,
        "held": 0,
        "earnings": 0,
        "payable": 0,
        "receivable": 0,
    }
    assert [(e["kind"], e["account"], e["amount"]) for e in entries] == [
        ("deposit", "balance", 2500)
    ]


async def test_bad_requests_get_clear_errors_and_change_nothing(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    ada = await payer(http, outbox, "ada@example.org")
    ok = await ada.request(
        "POST", "/api/v1/payments/process", json={"amount": 1000}, headers=key("k")
    )
    assert ok.status_code == 201
    before = await money(ada)
    cases: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
        ({"amount": 999}, key("k"), 422, "idempotency_key_reused"),
        ({"amount": 1000}, {}, 400, "idempotency_key_required"),
        ({"amount": 1000}, key(""), 400, "idempotency_key_required"),
        ({"amount": 1000}, key("x" * 256), 400, "idempotency_key_required"),
        ({"amount": 10.0}, key("f1"), 422, "invalid_amount"),
        ({"amount": 10.5}, key("f2"), 422, "validation_error"),
        ({"amount": "10"}, key("s"), 422, "invalid_amount"),
        ({"amount": True}, key("b"), 422, "validation_error"),
        ({"amount": 0}, key("z"), 422, "validation_error"),
        ({"amount": -5}, key("n"), 422, "validation_error"),
        ({"amount": 2**63}, key("o"), 422, "validation_error"),
        ({"amount": 100, "currency": "USD"}, key("c"), 422, "invalid_amount"),
        ({"amount": 100, "extra": 1}, key("e"), 422, "validation_error"),
    ]
    for body, headers, status, code in cases:
        response = await ada.request("POST", "/api/v1/payments/process", json=body, headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    too_much = await ada.request(
        "POST", "/api/v1/billing/holds", json={"amount": 1001}, headers=key("h")
    )
    assert (too_much.status_code, too_much.json()["error"]["code"]) == (409, "insufficient_funds")
    assert await money(ada) == before


async def test_holds_capture_and_release_over_http(http: httpx.AsyncClient, outbox: Path) -> None:
    ada = await payer(http, outbox, "ada@example.org")
    await ada.request("POST", "/api/v1/payments/process", json={"amount": 1000}, headers=key("p"))
    body = {"amount": 400, "purpose": "compute"}
    created = await ada.request("POST", "/api/v1/billing/holds", json=body, headers=key("h"))
    assert created.status_code == 201, created.text
    hold = created.json()
    path = f"/api/v1/billing/holds/{hold['hold_id']}"
    captured = await ada.request("POST", f"{path}/capture", json={"amount": 150}, headers=key("c"))
    assert captured.status_code == 200, captured.text
    assert (captured.json()["captured"], captured.json()["remaining"]) == (150, 250)
    over = await ada.request("POST", f"{path}/capture", json={"amount": 251}, headers=key("c2"))
    assert (over.status_code, over.json()["error"]["code"]) == (409, "exceeds_hold")
    released = await ada.request("POST", f"{path}/release", headers=key("r"))
    assert released.status_code == 200
    assert (released.json()["status"], released.json()["released"]) == ("released", 250)
    again = await ada.request("POST", f"{path}/release", headers=key("r2"))
    assert (again.status_code, again.json()["error"]["code"]) == (409, "hold_closed")
    assert (await ada.get(path)).json()["status"] == "released"
    balance, _ = await money(ada)
    assert (balance["balance"], balance["held"]) == (850, 0)


async def test_a_hundred_parallel_captures_over_http_capture_once(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    ada = await payer(http, outbox, "ada@example.org")
    await ada.request("POST", "/api/v1/payments/process", json={"amount": 700}, headers=key("p"))
    hold = (
        await ada.request("POST", "/api/v1/billing/holds", json={"amount": 700}, headers=key("h"))
    ).json()
    path = f"/api/v1/billing/holds/{hold['hold_id']}/capture"
    statuses: list[tuple[int, str]] = []

    async def capture(n: int) -> None:
        response = await ada.request("POST", path, json={"amount": 700}, headers=key(f"c{n}"))
        body = response.json()
        statuses.append((response.status_code, body.get("status") or body["error"]["code"]))

    async with trio.open_nursery() as nursery:
        for n in range(100):
            nursery.start_soon(capture, n)
    assert statuses.count((200, "captured")) == 1, statuses
    assert {code for status, code in statuses if status != 200} <= {"exceeds_hold", "hold_closed"}
    assert len(statuses) == 100
    balance, entries = await money(ada)
    assert (balance["balance"], balance["held"]) == (0, 0)
    assert [e["kind"] for e in entries].count("capture") == 1
    assert (await server.services.domain.get().ledger.verify()).ok


async def test_a_hundred_parallel_duplicates_over_http_execute_once(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    ada = await payer(http, outbox, "ada@example.org")
    answers: list[tuple[int, bytes]] = []

    async def pay() -> None:
        response = await ada.request(
            "POST", "/api/v1/payments/process", json={"amount": 1234}, headers=key("once")
        )
        answers.append((response.status_code, response.content))

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(pay)
    assert len(answers) == 100
    assert len(set(answers)) == 1, set(answers)
    assert answers[0][0] == 201
    balance, entries = await money(ada)
    assert balance["balance"] == 1234
    assert len(entries) == 1
    assert (await server.services.domain.get().ledger.verify()).ok


async def test_users_see_only_their_own_money(http: httpx.AsyncClient, outbox: Path) -> None:
    ada = await payer(http, outbox, "ada@example.org")
    bob = await payer(http, outbox, "bob@example.org", "tok_sandbox_mastercard")
    await ada.request("POST", "/api/v1/payments/process", json={"amount": 900}, headers=key("p"))
    hold = (
        await ada.request("POST", "/api/v1/billing/holds", json={"amount": 300}, headers=key("h"))
    ).json()
    # Bob uses the very same keys: they are his own, and name nothing of Ada's.
    for hold_id in (hold["hold_id"], "hd_does_not_exist"):
        path = f"/api/v1/billing/holds/{hold_id}"
        answers = [
            await bob.get(path),
            await bob.request("POST", f"{path}/capture", json={"amount": 1}, headers=key("h")),
            await bob.request("POST", f"{path}/release", headers=key("h")),
        ]
        assert [(a.status_code, a.json()) for a in answers] == [
            (404, {"error": {"code": "not_found", "message": "not found"}})
        ] * 3
    balance, entries = await money(bob)
    assert (balance["balance"], balance["held"], entries) == (0, 0, [])
    mine, _ = await money(ada)
    assert (mine["balance"], mine["held"]) == (600, 300)
    # A device's token reaches no money at all.
    phone = await sign_in(http, outbox, "ada@example.org", device_body=device("phone"))
    refused = await phone.get("/api/v1/billing/balance")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "insufficient_scope")
