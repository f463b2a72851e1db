"""Payouts, KYC, netting and spending limits: a user's own, and the operator's KYC decision.

Every route acts on the caller's own money only: another user's payout answers 404 exactly like
a missing one. The manual payout moves money and takes an ``Idempotency-Key`` header.
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

from yggdrasil.billing import AutoTopup, check_cents, check_key

from ._auth import Guard, errors
from ._billing_models import IdempotencyHeader
from ._payouts_models import (
    KycDecisionIn,
    KycIn,
    KycOut,
    LimitsIn,
    LimitsOut,
    NettingIn,
    NettingOut,
    PayoutIn,
    PayoutOut,
    PayoutPage,
    PayoutQuery,
    PayoutSettingsIn,
    PayoutSettingsOut,
)


async def _body() -> dict[str, Any]:
    body: Any = await request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def _cents(body: dict[str, Any], *path: str) -> None:
    """The amount at ``path`` in the raw body, if there and not null, is whole cents as sent
    (quart-schema would have let ``10.0`` or ``"10"`` through as 10)."""
    value: Any = body
    for name in path:
        if not isinstance(value, dict) or value.get(name) is None:
            return
        value = value[name]
    check_cents(value, field=".".join(path))


def install(app: Quart, guard: Guard) -> None:
    # ------------------------------------------------------------------- payouts

    @app.get("/api/v1/payouts")
    @tag(["payouts"])
    @validate_querystring(PayoutQuery)
    @validate_response(PayoutPage, 200)
    @errors(422, 503)
    async def list_payouts(query_args: PayoutQuery) -> PayoutPage:
        """The caller's payouts, newest first; ``available`` is what could be paid out now and
        ``waiting`` says why it is not (KYC, no payout method, the minimum, manual payouts)."""
        principal = guard.principal()
        return await guard.domain().payouts.list(
            principal.user_id, cursor=query_args.cursor, limit=query_args.limit
        )

    @app.post("/api/v1/payouts")
    @tag(["payouts"])
    @validate_headers(IdempotencyHeader)
    @validate_request(PayoutIn)
    @validate_response(PayoutOut, 201)
    @errors(400, 409, 413, 422, 503)
    async def request_payout(data: PayoutIn, headers: IdempotencyHeader) -> tuple[PayoutOut, int]:
        """Pay out ``amount`` cents of the caller's earnings now (all that is available when
        left out). 409 ``kyc_required``, ``payout_method_required``, ``below_minimum`` or
        ``insufficient_funds`` when it cannot be, and nothing changes."""
        principal = guard.principal()
        key = check_key(headers.idempotency_key)
        _cents(await _body(), "amount")
        payout = await guard.domain().payouts.request(
            principal.user_id, key=key, amount=data.amount
        )
        return payout, 201

    @app.get("/api/v1/payouts/settings")
    @tag(["payouts"])
    @validate_response(PayoutSettingsOut, 200)
    @errors(503)
    async def payout_settings() -> PayoutSettingsOut:
        principal = guard.principal()
        return await guard.domain().payouts.settings(principal.user_id)

    @app.put("/api/v1/payouts/settings")
    @tag(["payouts"])
    @validate_request(PayoutSettingsIn)
    @validate_response(PayoutSettingsOut, 200)
    @errors(400, 413, 422, 503)
    async def set_payout_settings(data: PayoutSettingsIn) -> PayoutSettingsOut:
        """Change the frequency, the minimum (at least ``payouts.minimum_floor``), automatic or
        manual payouts, and netting; what is left out stays."""
        principal = guard.principal()
        _cents(await _body(), "minimum")
        return await guard.domain().payouts.set_settings(
            principal.user_id,
            frequency=data.frequency,
            minimum=data.minimum,
            automatic=data.automatic,
            netting=data.netting,
        )

    @app.get("/api/v1/payouts/<payout_id>")
    @tag(["payouts"])
    @validate_response(PayoutOut, 200)
    @errors(404, 503)
    async def get_payout(payout_id: str) -> PayoutOut:
        principal = guard.principal()
        return await guard.domain().payouts.get(principal.user_id, payout_id)

    @app.put("/api/v1/billing/netting")
    @tag(["billing"])
    @validate_request(NettingIn)
    @validate_response(NettingOut, 200)
    @errors(400, 413, 422, 503)
    async def set_netting(data: NettingIn) -> NettingOut:
        """Opt in (or out of) netting: earnings are set against what the caller owes before a
        payout, and only the difference is paid out or charged."""
        principal = guard.principal()
        settings = await guard.domain().payouts.set_settings(
            principal.user_id, netting=data.enabled
        )
        return NettingOut(settings.netting)

    # ------------------------------------------------------------------- KYC

    @app.get("/api/v1/kyc")
    @tag(["payouts"])
    @validate_response(KycOut, 200)
    @errors(503)
    async def get_kyc() -> KycOut:
        """The caller's KYC: whether their region requires it, and its status (``required``,
        ``pending``, ``verified``, ``rejected`` or ``not_required``)."""
        principal = guard.principal()
        return await guard.domain().kyc.get(principal.user_id)

    @app.post("/api/v1/kyc")
    @tag(["payouts"])
    @validate_request(KycIn)
    @validate_response(KycOut, 200)
    @errors(400, 409, 413, 422, 503)
    async def submit_kyc(data: KycIn) -> KycOut:
        """Submit KYC: the caller's region and the reference at the KYC provider (no documents
        are sent here). It stays pending until an operator decides."""
        principal = guard.principal()
        return await guard.domain().kyc.submit(
            principal.user_id, region=data.region, reference=data.reference
        )

    @app.post("/api/admin/users/<user_id>/kyc")
    @tag(["admin"])
    @validate_request(KycDecisionIn)
    @validate_response(KycOut, 200)
    @errors(400, 403, 404, 413, 422, 503)
    async def decide_kyc(user_id: str, data: KycDecisionIn) -> KycOut:
        """Set a user's submitted KYC to verified or rejected (audited); 404 for a user who
        submitted none."""
        principal = guard.principal()
        return await guard.domain().kyc.decide(
            principal.user_id, user_id, data.status, reason=data.reason
        )

    # ------------------------------------------------------------------- limits

    @app.get("/api/v1/billing/limits")
    @tag(["billing"])
    @validate_response(LimitsOut, 200)
    @errors(503)
    async def get_limits() -> LimitsOut:
        """The caller's monthly spending limit, alert thresholds and auto-top-up, with what
        was spent this month and which alerts were sent."""
        principal = guard.principal()
        return await guard.domain().limits.get(principal.user_id)

    @app.put("/api/v1/billing/limits")
    @tag(["billing"])
    @validate_request(LimitsIn)
    @validate_response(LimitsOut, 200)
    @errors(400, 413, 422, 503)
    async def set_limits(data: LimitsIn) -> LimitsOut:
        """Replace the caller's monthly spending limit (past it, holds and charges are refused
        with 402 ``spending_limit``), alert thresholds and auto-top-up."""
        principal = guard.principal()
        body = await _body()
        _cents(body, "monthly_limit")
        _cents(body, "auto_topup", "below")
        _cents(body, "auto_topup", "amount")
        topup = data.auto_topup
        return await guard.domain().limits.set(
            principal.user_id,
            monthly_limit=data.monthly_limit,
            alert_thresholds=data.alert_thresholds,
            auto_topup=(
                None if topup is None else AutoTopup(topup.below, topup.amount, topup.max_per_month)
            ),
        )
