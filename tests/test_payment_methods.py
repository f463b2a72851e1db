"""Payment methods through the real HTTP API, on the embedded sandbox provider, on both backends:
adding, listing, verifying (card check, SEPA micro-deposits, PayPal account check), defaults,
deletion; isolation between users; card numbers and IBANs refused and never stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.clients import User, sign_in
from yggdrasil.billing import MICRO_DEPOSITS_CENTS, card_data_in
from yggdrasil.server import Running

METHODS = "/api/v1/payments/methods"
PAN = "4242424242424242"
IBAN = "DE89370400440532013000"


async def add(user: User, kind: str, token: str, **extra: Any) -> httpx.Response:
    return await user.post(METHODS, json={"kind": kind, "token": token, **extra})


async def listed(user: User) -> list[dict[str, Any]]:
    response = await user.get(METHODS)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_each_kind_is_added_verified_made_default_and_deleted(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    user = await sign_in(http, outbox, "payer@example.org")
    providers = (await user.get("/api/v1/payments/providers")).json()
    assert providers["test_mode"] is True
    assert [p["name"] for p in providers["items"]] == ["sandbox"]

    visa = await add(user, "card", "tok_sandbox_visa", label="my visa")
    assert visa.status_code == 201, visa.text
    card = visa.json()
    assert card["status"] == "verified"
    assert (card["brand"], card["last4"], card["exp_month"], card["exp_year"]) == (
        "visa",
        "4242",
        12,
        2034,
    )
    assert card["default_payer"] is True  # the first verified payer method
    assert card["test_mode"] is True
    assert "token" not in card

    master = (await add(user, "card", "tok_sandbox_mastercard")).json()
    assert master["status"] == "verified"
    assert master["default_payer"] is False
    made = await user.post(f"{METHODS}/{master['method_id']}/default", json={"purpose": "payer"})
    assert made.status_code == 200, made.text
    assert made.json()["default_payer"] is True
    defaults = {m["method_id"]: m["default_payer"] for m in await listed(user)}
    assert defaults == {card["method_id"]: False, master["method_id"]: True}

    sepa = (await add(user, "sepa_debit", "tok_sandbox_sepa", purposes=["payer", "payout"])).json()
    assert sepa["status"] == "pending"
    assert sepa["needs"] == "confirm_micro_deposits"
    assert (sepa["country"], sepa["last4"]) == ("DE", "3000")
    # Not verified yet: it cannot become a default.
    early = await user.post(f"{METHODS}/{sepa['method_id']}/default", json={"purpose": "payout"})
    assert early.status_code == 409
    assert early.json()["error"]["code"] == "not_verified"
    wrong = await user.post(f"{METHODS}/{sepa['method_id']}/verify", json={"amounts_cents": [1, 2]})
    assert wrong.status_code == 422
    assert wrong.json()["error"]["code"] == "micro_deposits_mismatch"
    assert "2 attempts left" in wrong.json()["error"]["message"]
    right = await user.post(
        f"{METHODS}/{sepa['method_id']}/verify",
        json={"amounts_cents": list(reversed(MICRO_DEPOSITS_CENTS))},
    )
    assert right.status_code == 200, right.text
    assert right.json()["status"] == "verified"
    assert right.json()["needs"] is None
    assert right.json()["default_payout"] is True  # the first verified payout method

    paypal = await add(user, "paypal", "tok_sandbox_paypal", purposes=["payout"])
    assert paypal.status_code == 201, paypal.text
    account = paypal.json()
    assert account["status"] == "verified"
    assert account["email"] == "s***@example.org"
    assert account["purposes"] == ["payout"]
    assert account["default_payout"] is False
    # A payout-only method never pays.
    payer = await user.post(f"{METHODS}/{account['method_id']}/default", json={})
    assert payer.status_code == 422
    moved = await user.post(f"{METHODS}/{account['method_id']}/default", json={"purpose": "payout"})
    assert moved.json()["default_payout"] is True

    items = await listed(user)
    assert [m["method_id"] for m in items] == [
        card["method_id"],
        master["method_id"],
        sepa["method_id"],
        account["method_id"],
    ]
    assert [(m["default_payer"], m["default_payout"]) for m in items] == [
        (False, False),
        (True, False),
        (False, False),
        (False, True),
    ]

    gone = await user.delete(f"{METHODS}/{master['method_id']}")
    assert gone.status_code == 204
    assert (await user.get(f"{METHODS}/{master['method_id']}")).status_code == 404
    assert [m["method_id"] for m in await listed(user)] == [
        card["method_id"],
        sepa["method_id"],
        account["method_id"],
    ]
    # The same token again is a conflict, not a second method.
    again = await add(user, "card", "tok_sandbox_visa")
    assert again.status_code == 409


async def test_declined_unavailable_and_unknown_tokens(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    user = await sign_in(http, outbox, "unlucky@example.org")
    declined = (await add(user, "card", "tok_sandbox_declined")).json()
    assert declined["status"] == "failed"
    assert declined["default_payer"] is False
    refused = await user.post(f"{METHODS}/{declined['method_id']}/default", json={})
    assert refused.status_code == 409

    waiting = await add(user, "card", "tok_sandbox_unavailable")
    assert waiting.status_code == 201
    assert waiting.json()["status"] == "pending"
    assert waiting.json()["needs"] == "verify_again"
    retried = await user.post(f"{METHODS}/{waiting.json()['method_id']}/verify", json={})
    assert retried.status_code == 503
    assert retried.json()["error"]["code"] == "payment_provider_unavailable"
    assert retried.headers["Retry-After"] == "5"

    before = await listed(user)
    unknown = await add(user, "card", "tok_made_up")
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "payment_invalid"
    wrong_kind = await add(user, "paypal", "tok_sandbox_visa")
    assert wrong_kind.status_code == 422
    assert await listed(user) == before  # a refused token leaves nothing behind

    # Micro-deposits: the last wrong confirmation fails the account.
    sepa = (await add(user, "sepa_debit", "tok_sandbox_sepa")).json()
    path = f"{METHODS}/{sepa['method_id']}/verify"
    for left in (2, 1):
        answer = await user.post(path, json={"amounts_cents": [10, 11]})
        assert answer.status_code == 422
        assert f"{left} attempts left" in answer.json()["error"]["message"]
    last = await user.post(path, json={"amounts_cents": [10, 11]})
    assert last.status_code == 200
    assert last.json()["status"] == "failed"
    late = await user.post(path, json={"amounts_cents": list(MICRO_DEPOSITS_CENTS)})
    assert late.status_code == 422  # no longer a pending micro-deposit check


async def test_another_users_method_answers_like_a_missing_one(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    alice = await sign_in(http, outbox, "alice@example.org")
    mallory = await sign_in(http, outbox, "mallory@example.org")
    method = (await add(alice, "card", "tok_sandbox_visa")).json()
    sepa = (await add(alice, "sepa_debit", "tok_sandbox_sepa")).json()
    theirs, made_up = method["method_id"], "pm_doesnotexist"
    for method_id in (theirs, sepa["method_id"]):
        for verb, suffix, body in (
            ("GET", "", None),
            ("DELETE", "", None),
            ("POST", "/default", {}),
            ("POST", "/verify", {}),
            ("POST", "/verify", {"amounts_cents": list(MICRO_DEPOSITS_CENTS)}),
        ):
            foreign = await mallory.request(verb, f"{METHODS}/{method_id}{suffix}", json=body)
            missing = await mallory.request(verb, f"{METHODS}/{made_up}{suffix}", json=body)
            assert (foreign.status_code, foreign.content) == (missing.status_code, missing.content)
            assert foreign.status_code == 404
    assert await listed(mallory) == []
    # The same card token cannot be claimed by another account either.
    claimed = await add(mallory, "card", "tok_sandbox_visa")
    assert claimed.status_code == 409
    # Alice's methods are as they were.
    mine = await listed(alice)
    assert [(m["method_id"], m["status"]) for m in mine] == [
        (theirs, "verified"),
        (sepa["method_id"], "pending"),
    ]


async def test_card_numbers_and_ibans_are_refused_and_never_stored(
    http: httpx.AsyncClient, outbox: Path, server: Running, backend: str, data_dir: Path
) -> None:
    user = await sign_in(http, outbox, "careful@example.org")
    await add(user, "card", "tok_sandbox_visa", label="work card")
    before = await listed(user)
    spaced = "4242 4242 4242 4242"
    for body in (
        {"kind": "card", "token": PAN},
        {"kind": "card", "token": "tok_sandbox_mastercard", "label": f"card {spaced}"},
        {"kind": "card", "token": "tok_sandbox_mastercard", "card_number": "5555-5555-5555-4444"},
        {"kind": "card", "token": "tok_sandbox_mastercard", "number": int(PAN)},
        {"kind": "sepa_debit", "token": "tok_sandbox_sepa", "label": "DE89 3704 0044 0532 0130 00"},
        {"kind": "sepa_debit", "token": IBAN},
        {"kind": "card", "token": "x", "nested": {"deep": [{"pan": "4000056655665556"}]}},
    ):
        response = await user.post(METHODS, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "card_data_refused"
        assert PAN not in response.text
        assert IBAN not in response.text
    # Unicode escapes do not smuggle one through.
    escaped = '{"kind": "card", "token": "tok_sandbox_visa", "label": "\\u0034242424242424242"}'
    response = await user.request(
        "POST", METHODS, content=escaped.encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "card_data_refused"
    # Also on the other routes that take a body.
    method_id = before[0]["method_id"]
    leaked = await user.post(f"{METHODS}/{method_id}/verify", json={"note": PAN})
    assert leaked.json()["error"]["code"] == "card_data_refused"
    # Amounts are integer cents: no floats, no text.
    sepa = (await add(user, "sepa_debit", "tok_sandbox_sepa")).json()
    for amounts in ([32.0, 45.0], ["32", "45"], [32], [32, 45, 1], [0, 45], [-32, 45], [True, 45]):
        response = await user.post(
            f"{METHODS}/{sepa['method_id']}/verify", json={"amounts_cents": amounts}
        )
        assert response.status_code == 422, (amounts, response.text)
        assert response.json()["error"]["code"] == "validation_error"
    assert (await user.get(f"{METHODS}/{sepa['method_id']}")).json()["needs"] == (
        "confirm_micro_deposits"
    )
    assert len(await listed(user)) == len(before) + 1

    # Nothing that looks like card data is anywhere in the stored rows...
    db = server.services.domain.get().store.db

    async def rows(tx: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await tx.fetch("SELECT * FROM payment_methods")
        return result

    stored = await db.read(rows)
    assert len(stored) == 2
    for row in stored:
        for value in row.values():  # (timestamps are numbers, and some pass Luhn's check)
            assert not isinstance(value, str) or card_data_in(value) is None, row
    assert {row["token"] for row in stored} == {"tok_sandbox_visa", "tok_sandbox_sepa"}
    # ... nor in the database's files.
    if backend == "sqlite":
        needles = (PAN, spaced, IBAN, "5555-5555-5555-4444", "4000056655665556")
        assert _files_containing(data_dir, "yggdrasil.sqlite3*", needles) == []


def _files_containing(folder: Path, pattern: str, needles: tuple[str, ...]) -> list[str]:
    """``file: needle`` for each needle in a file of ``folder`` matching ``pattern`` (there must
    be at least one such file)."""
    files = list(folder.glob(pattern))
    assert files
    return [
        f"{path.name}: {needle}"
        for path in files
        for needle in needles
        if needle.encode() in path.read_bytes()
    ]
