"""Stripe, through the ``stripe`` package's async client on httpx (which runs on trio).

One :class:`stripe.HTTPXClient` per provider, closed by :meth:`StripeProvider.aclose`. Retries
are explicit (``max_network_retries``; the client's default is none) and reuse the idempotency
key we pass, so a timed-out call repeated by the client or by us acts once. The client's timeout
is per attempt; :func:`trio.fail_after` bounds the whole call. Pre-authorizations are
PaymentIntents with ``capture_method=manual``; card and SEPA checks are SetupIntents; payouts are
Connect transfers to the user's connected account.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import stripe
import trio

from ._providers import (
    ChargeStatus,
    MethodCheck,
    MethodKind,
    PaymentDeclined,
    PaymentError,
    PaymentInvalid,
    PaymentProviderUnavailable,
    ProviderCharge,
    ProviderName,
    ProviderPayout,
    ProviderRefund,
    VerificationStatus,
    check_amount,
    check_key,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_CHARGE_STATUS: dict[str, ChargeStatus] = {
    "requires_capture": "authorized",
    "succeeded": "succeeded",
    "canceled": "canceled",
    "processing": "pending",
    "requires_payment_method": "failed",
    "requires_action": "failed",
    "requires_confirmation": "failed",
}
_MISMATCH = "payment_method_microdeposit_verification_amounts_mismatch"


class StripeProvider:
    """Stripe with the secret key ``secret_key`` at ``api_base``.

    ``http_client``: the HTTPXClient to use (tests pass one without backoff); by default one is
    made with ``timeout_s`` per attempt. Either way :meth:`aclose` closes it.
    """

    kinds: frozenset[MethodKind] = frozenset({"card", "sepa_debit"})

    def __init__(
        self,
        secret_key: str,
        *,
        api_base: str = "https://api.stripe.com",
        timeout_s: float = 20.0,
        deadline_s: float = 60.0,
        retries: int = 2,
        http_client: stripe.HTTPXClient | None = None,
    ) -> None:
        self._http = (
            http_client if http_client is not None else stripe.HTTPXClient(timeout=timeout_s)
        )
        self._client = stripe.StripeClient(
            secret_key,
            http_client=self._http,
            max_network_retries=retries,
            base_addresses={"api": api_base.rstrip("/")},
        )
        self._deadline_s = deadline_s
        self._test_mode = secret_key.startswith(("sk_test_", "rk_test_"))

    @property
    def name(self) -> ProviderName:
        return "stripe"

    @property
    def test_mode(self) -> bool:
        return self._test_mode

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` within the deadline, Stripe's errors as ours."""
        try:
            with trio.fail_after(self._deadline_s):
                return await call()
        except trio.TooSlowError:
            raise PaymentProviderUnavailable(f"Stripe did not answer {what} in time") from None
        except stripe.CardError as exc:
            raise PaymentDeclined(exc.user_message or "the card was declined") from None
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError) as exc:
            log.warning("stripe: %s failed: %s", what, type(exc).__name__)
            raise PaymentProviderUnavailable() from None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            log.error("stripe: %s refused our API key: %s", what, type(exc).__name__)
            raise PaymentProviderUnavailable("the payment provider is misconfigured") from None
        except stripe.IdempotencyError:
            raise PaymentInvalid("one operation was sent twice with different details") from None
        except stripe.InvalidRequestError as exc:
            raise PaymentInvalid(exc.user_message or f"Stripe refused {what}") from None
        except stripe.StripeError as exc:
            log.warning("stripe: %s failed: %s", what, type(exc).__name__)
            raise PaymentError(f"Stripe refused {what}") from None

    # ----------------------------------------------------------------- payment methods

    async def verify_method(self, kind: MethodKind, token: str, *, key: str) -> MethodCheck:
        check_key(key)
        if kind not in self.kinds:
            raise PaymentInvalid(f"Stripe does not take {kind} here")
        params: dict[str, Any] = {
            "payment_method": token,
            "payment_method_types": [kind],
            "confirm": True,
            "usage": "off_session",
        }
        if kind == "sepa_debit":
            params["mandate_data"] = {"customer_acceptance": {"type": "offline"}}
        try:
            intent = await self._call(
                "a payment method check",
                lambda: self._client.v1.setup_intents.create_async(
                    params,  # type: ignore[arg-type]
                    {"idempotency_key": key},
                ),
            )
        except PaymentDeclined:  # a card the issuer refuses: Stripe answers 402 card_error
            return MethodCheck(status="failed", reason="card_declined", test_mode=self._test_mode)
        method = await self._call(
            "a payment method lookup",
            lambda: self._client.v1.payment_methods.retrieve_async(token),
        )
        shown = _display(method.to_dict())
        next_action = intent.next_action.type if intent.next_action is not None else None
        status: VerificationStatus
        if intent.status == "succeeded":
            status = "verified"
        elif intent.status == "processing" or next_action == "verify_with_microdeposits":
            status = "pending"
        else:
            status = "failed"
        error = intent.last_setup_error
        return MethodCheck(
            status=status,
            reference=intent.id,
            reason=(error.code if error is not None else None) if status == "failed" else None,
            test_mode=self._test_mode,
            **shown,
        )

    async def confirm_micro_deposits(
        self, reference: str, amounts_cents: tuple[int, int], *, key: str
    ) -> MethodCheck:
        check_key(key)

        async def confirm() -> stripe.SetupIntent | None:
            try:
                return await self._client.v1.setup_intents.verify_microdeposits_async(
                    reference, {"amounts": list(amounts_cents)}, {"idempotency_key": key}
                )
            except stripe.InvalidRequestError as exc:
                if exc.code == _MISMATCH:
                    return None
                raise

        intent = await self._call("a micro-deposit confirmation", confirm)
        if intent is None:
            return MethodCheck(
                status="failed", reason="amounts_mismatch", test_mode=self._test_mode
            )
        status: VerificationStatus = "verified" if intent.status == "succeeded" else "pending"
        if intent.status in ("canceled", "requires_payment_method"):
            status = "failed"
        return MethodCheck(status=status, reference=reference, test_mode=self._test_mode)

    # ----------------------------------------------------------------- payments

    def _charge(self, intent: stripe.PaymentIntent) -> ProviderCharge:
        return ProviderCharge(
            reference=intent.id,
            refund_reference=intent.id,
            status=_CHARGE_STATUS.get(intent.status, "failed"),
            amount_cents=intent.amount,
            captured_cents=intent.amount_received or 0,
            currency=intent.currency,
            test_mode=self._test_mode,
        )

    async def authorize(
        self, token: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderCharge:
        return await self._create(token, amount_cents, currency, "manual", key=key)

    async def charge(
        self, token: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderCharge:
        return await self._create(token, amount_cents, currency, "automatic", key=key)

    async def _create(
        self, token: str, amount_cents: int, currency: str, capture: str, *, key: str
    ) -> ProviderCharge:
        check_amount(amount_cents)
        check_key(key)
        params: dict[str, Any] = {
            "amount": amount_cents,
            "currency": currency,
            "payment_method": token,
            "capture_method": capture,
            "confirm": True,
        }
        intent = await self._call(
            "a payment",
            lambda: self._client.v1.payment_intents.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": key},
            ),
        )
        return self._charge(intent)

    async def capture(self, reference: str, amount_cents: int, *, key: str) -> ProviderCharge:
        check_amount(amount_cents)
        check_key(key)
        intent = await self._call(
            "a capture",
            lambda: self._client.v1.payment_intents.capture_async(
                reference, {"amount_to_capture": amount_cents}, {"idempotency_key": key}
            ),
        )
        return self._charge(intent)

    async def cancel(self, reference: str, *, key: str) -> ProviderCharge:
        check_key(key)
        intent = await self._call(
            "a cancellation",
            lambda: self._client.v1.payment_intents.cancel_async(
                reference, {}, {"idempotency_key": key}
            ),
        )
        return self._charge(intent)

    async def refund(self, reference: str, amount_cents: int, *, key: str) -> ProviderRefund:
        check_amount(amount_cents)
        check_key(key)
        refund = await self._call(
            "a refund",
            lambda: self._client.v1.refunds.create_async(
                {"payment_intent": reference, "amount": amount_cents}, {"idempotency_key": key}
            ),
        )
        status = refund.status if refund.status in ("succeeded", "pending") else "failed"
        return ProviderRefund(
            reference=refund.id,
            status=status,  # type: ignore[arg-type]
            amount_cents=refund.amount,
            currency=refund.currency,
            test_mode=self._test_mode,
        )

    async def payout(
        self, destination: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderPayout:
        check_amount(amount_cents)
        check_key(key)
        transfer = await self._call(
            "a payout",
            lambda: self._client.v1.transfers.create_async(
                {"amount": amount_cents, "currency": currency, "destination": destination},
                {"idempotency_key": key},
            ),
        )
        return ProviderPayout(
            reference=transfer.id,
            status="failed" if transfer.reversed else "paid",
            amount_cents=transfer.amount,
            currency=transfer.currency,
            test_mode=self._test_mode,
        )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self._http.close_async()  # type: ignore[no-untyped-call]


def _display(method: dict[str, Any]) -> dict[str, Any]:
    """The display data of a Stripe PaymentMethod: never more than brand, last 4, expiry and
    country."""
    card = method.get("card") or {}
    sepa = method.get("sepa_debit") or {}
    shown: dict[str, Any] = {
        "brand": card.get("brand"),
        "last4": card.get("last4") or sepa.get("last4"),
        "exp_month": card.get("exp_month"),
        "exp_year": card.get("exp_year"),
        "country": sepa.get("country") or card.get("country"),
    }
    return {name: value for name, value in shown.items() if value is not None}
