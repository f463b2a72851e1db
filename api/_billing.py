"""The ledger's routes: a user's own balances, entries and holds, and ``payments/process``.

Every route acts on the caller's own money only: another user's hold answers 404 exactly like a
missing one. Every money-moving route takes an ``Idempotency-Key`` header (``IdempotencyHeader``).
"""

from __future__ import annotations

from typing import Any

from quart import Quart, request
from quart_schema import (
    tag,
    validate_headers,
    validate_querystring,
    validate_request,
    validate_response,
)

from yggdrasil.billing import check_cents, check_key

from ._auth import Guard, errors
from ._billing_models import (
    BalancesOut,
    CaptureIn,
    CaptureOut,
    EntryPage,
    EntryQuery,
    HoldIn,
    HoldOut,
    IdempotencyHeader,
    PaymentOut,
    ProcessIn,
)


async def _amount() -> int:
    """The body's ``amount`` as it was sent: a whole number, not a float or a string."""
    body: Any = await request.get_json(silent=True)
    return check_cents(body.get("amount") if isinstance(body, dict) else None)


def install(app: Quart, guard: Guard) -> None:
    @app.get("/api/v1/billing/balance")
    @tag(["billing"])
    @validate_response(BalancesOut, 200)
    @errors(503)
    async def balance() -> BalancesOut:
        """The caller's balances in cents: available, held by open holds, earnings, set aside
        for payout, and owed (``receivable``)."""
        principal = guard.principal()
        return await guard.domain().ledger.balances(principal.user_id)

    @app.get("/api/v1/billing/entries")
    @tag(["billing"])
    @validate_querystring(EntryQuery)
    @validate_response(EntryPage, 200)
    @errors(422, 503)
    async def entries(query_args: EntryQuery) -> EntryPage:
        """The entries of the caller's own accounts, newest first."""
        principal = guard.principal()
        page = await guard.domain().ledger.entries(
            principal.user_id, cursor=query_args.cursor, limit=query_args.limit
        )
        return EntryPage(page.items, page.next_cursor)

    @app.post("/api/v1/billing/holds")
    @tag(["billing"])
    @validate_headers(IdempotencyHeader)
    @validate_request(HoldIn)
    @validate_response(HoldOut, 201)
    @errors(400, 409, 413, 422, 503)
    async def create_hold(data: HoldIn, headers: IdempotencyHeader) -> tuple[HoldOut, int]:
        """Pre-authorize an amount of the caller's balance (409 ``insufficient_funds`` when it is
        short). It stays held until captured, released or expired (``ledger.hold_ttl_s``)."""
        principal = guard.principal()
        key = check_key(headers.idempotency_key)
        hold = await guard.domain().ledger.hold(
            principal.user_id, await _amount(), key=key, purpose=data.purpose
        )
        return hold, 201

    @app.get("/api/v1/billing/holds/<hold_id>")
    @tag(["billing"])
    @validate_response(HoldOut, 200)
    @errors(404, 503)
    async def get_hold(hold_id: str) -> HoldOut:
        principal = guard.principal()
        return await guard.domain().ledger.get_hold(principal.user_id, hold_id)

    @app.post("/api/v1/billing/holds/<hold_id>/capture")
    @tag(["billing"])
    @validate_headers(IdempotencyHeader)
    @validate_request(CaptureIn)
    @validate_response(CaptureOut, 200)
    @errors(400, 404, 409, 413, 422, 503)
    async def capture_hold(hold_id: str, data: CaptureIn, headers: IdempotencyHeader) -> CaptureOut:
        """Capture part or all of one of the caller's holds (409 ``exceeds_hold`` beyond what it
        has left, ``hold_closed`` once it is closed or expired)."""
        principal = guard.principal()
        key = check_key(headers.idempotency_key)
        return await guard.domain().ledger.capture(
            hold_id, await _amount(), key=key, user_id=principal.user_id
        )

    @app.post("/api/v1/billing/holds/<hold_id>/release")
    @tag(["billing"])
    @validate_headers(IdempotencyHeader)
    @validate_response(HoldOut, 200)
    @errors(400, 404, 409, 422, 503)
    async def release_hold(hold_id: str, headers: IdempotencyHeader) -> HoldOut:
        """Give back what one of the caller's holds has not captured, and close it."""
        principal = guard.principal()
        key = check_key(headers.idempotency_key)
        return await guard.domain().ledger.release(hold_id, key=key, user_id=principal.user_id)

    @app.post("/api/v1/payments/process")
    @tag(["payments"])
    @validate_headers(IdempotencyHeader)
    @validate_request(ProcessIn)
    @validate_response(PaymentOut, 201)
    @errors(400, 402, 413, 422, 503)
    async def process_payment(
        data: ProcessIn, headers: IdempotencyHeader
    ) -> tuple[PaymentOut, int]:
        """Process a payment: collect ``amount`` cents through the payment provider and add them
        to the caller's balance. On a fresh server the provider is the sandbox (test mode, no
        real money; ``test_mode`` says so)."""
        principal = guard.principal()
        key = check_key(headers.idempotency_key)
        domain = guard.domain()
        ledger = domain.ledger
        deposit = await ledger.process(
            principal.user_id,
            await _amount(),
            key=key,
            collector=domain.collector,
            currency=data.currency or ledger.config.currency,
        )
        return deposit, 201
