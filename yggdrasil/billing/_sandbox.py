"""The sandbox provider: the embedded default, always in test mode.

No money moves and no network is used. Test tokens succeed or fail on purpose, so the whole flow
runs on a fresh machine (docs/payments.md lists them):

- ``tok_sandbox_visa``, ``tok_sandbox_mastercard``: cards that verify and pay;
- ``tok_sandbox_declined``: a card that is declined (verification fails, payments raise
  :class:`PaymentDeclined`);
- ``tok_sandbox_unavailable``: the provider does not answer (:class:`PaymentProviderUnavailable`);
- ``tok_sandbox_sepa``: a SEPA account, verified by micro-deposits of 32 and 45 cents;
- ``tok_sandbox_paypal``: a verified PayPal account; ``tok_sandbox_paypal_unverified``: one whose
  account check fails.

Answers are remembered by idempotency key, like a real provider's: the same key answers the
same result. Only the most recent :data:`_REMEMBERED` answers and payments are kept, in memory:
a restart forgets them (test mode).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any

from ._providers import (
    MethodCheck,
    MethodKind,
    PaymentDeclined,
    PaymentInvalid,
    PaymentProviderUnavailable,
    ProviderCharge,
    ProviderName,
    ProviderPayout,
    ProviderRefund,
    check_amount,
    check_key,
)

log = logging.getLogger(__name__)

MICRO_DEPOSITS_CENTS = (32, 45)
"""What the sandbox "deposits" on every SEPA account: test mode is deterministic."""

_REMEMBERED = 10_000

_CARDS: dict[str, MethodCheck] = {
    "tok_sandbox_visa": MethodCheck(
        status="verified", brand="visa", last4="4242", exp_month=12, exp_year=2034, test_mode=True
    ),
    "tok_sandbox_mastercard": MethodCheck(
        status="verified",
        brand="mastercard",
        last4="4444",
        exp_month=6,
        exp_year=2033,
        test_mode=True,
    ),
    "tok_sandbox_declined": MethodCheck(
        status="failed",
        brand="visa",
        last4="0002",
        exp_month=12,
        exp_year=2034,
        reason="card_declined",
        test_mode=True,
    ),
}
_SEPA = {"tok_sandbox_sepa": ("DE", "3000")}
_PAYPAL = {
    "tok_sandbox_paypal": MethodCheck(
        status="verified", email="sandbox-buyer@example.org", test_mode=True
    ),
    "tok_sandbox_paypal_unverified": MethodCheck(
        status="failed",
        email="sandbox-unverified@example.org",
        reason="account_not_verified",
        test_mode=True,
    ),
}
_DECLINED = {"tok_sandbox_declined", "tok_sandbox_paypal_unverified"}
_UNAVAILABLE = "tok_sandbox_unavailable"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class SandboxProvider:
    """The test-mode provider (see the module). Logs that it runs in test mode when made."""

    kinds: frozenset[MethodKind] = frozenset({"card", "sepa_debit", "paypal"})

    def __init__(self) -> None:
        self._answers: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._charges: OrderedDict[str, ProviderCharge] = OrderedDict()
        self._refunded: dict[str, int] = {}
        log.warning("payments: the sandbox provider is enabled (TEST MODE: no money moves)")

    @property
    def name(self) -> ProviderName:
        return "sandbox"

    @property
    def test_mode(self) -> bool:
        return True

    def _remembered(self, operation: str, key: str) -> Any:
        check_key(key)
        return self._answers.get((operation, key))

    def _remember(self, operation: str, key: str, answer: Any) -> Any:
        self._answers[(operation, key)] = answer
        while len(self._answers) > _REMEMBERED:
            self._answers.popitem(last=False)
        return answer

    async def verify_method(self, kind: MethodKind, token: str, *, key: str) -> MethodCheck:
        check_key(key)
        if token == _UNAVAILABLE:
            raise PaymentProviderUnavailable("the sandbox provider plays unavailable")
        if kind == "card" and token in _CARDS:
            return _CARDS[token]
        if kind == "sepa_debit" and token in _SEPA:
            country, last4 = _SEPA[token]
            return MethodCheck(
                status="pending",
                reference=f"sbx_seti_{_digest(token)}",
                country=country,
                last4=last4,
                test_mode=True,
            )
        if kind == "paypal" and token in _PAYPAL:
            return _PAYPAL[token]
        raise PaymentInvalid(f"the sandbox knows no {kind} token {token!r} (see docs/payments.md)")

    async def confirm_micro_deposits(
        self, reference: str, amounts_cents: tuple[int, int], *, key: str
    ) -> MethodCheck:
        check_key(key)
        if not reference.startswith("sbx_seti_"):
            raise PaymentInvalid("no such verification in the sandbox")
        if sorted(amounts_cents) != sorted(MICRO_DEPOSITS_CENTS):
            return MethodCheck(status="failed", reason="amounts_mismatch", test_mode=True)
        return MethodCheck(status="verified", reference=reference, test_mode=True)

    def _pay(self, token: str) -> None:
        if token == _UNAVAILABLE:
            raise PaymentProviderUnavailable("the sandbox provider plays unavailable")
        if token in _DECLINED:
            raise PaymentDeclined("the sandbox declines this test token")
        if not (token in _CARDS or token in _SEPA or token in _PAYPAL):
            raise PaymentInvalid("the sandbox knows no such token")

    async def authorize(
        self, token: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderCharge:
        return await self._open("authorize", token, amount_cents, currency, key=key)

    async def charge(
        self, token: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderCharge:
        return await self._open("charge", token, amount_cents, currency, key=key)

    async def _open(
        self, operation: str, token: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderCharge:
        known: ProviderCharge | None = self._remembered(operation, key)
        if known is not None:
            return known
        check_amount(amount_cents)
        self._pay(token)
        manual = operation == "authorize"
        reference = f"sbx_pi_{_digest(operation + key)}"
        charge = ProviderCharge(
            reference=reference,
            refund_reference=reference,
            status="authorized" if manual else "succeeded",
            amount_cents=amount_cents,
            captured_cents=0 if manual else amount_cents,
            currency=currency,
            test_mode=True,
        )
        self._charges[reference] = charge
        while len(self._charges) > _REMEMBERED:
            forgotten, _ = self._charges.popitem(last=False)
            self._refunded.pop(forgotten, None)
        return self._remember(operation, key, charge)  # type: ignore[no-any-return]

    def _charge(self, reference: str) -> ProviderCharge:
        charge = self._charges.get(reference)
        if charge is None:
            raise PaymentInvalid("no such payment in the sandbox")
        return charge

    async def capture(self, reference: str, amount_cents: int, *, key: str) -> ProviderCharge:
        known: ProviderCharge | None = self._remembered("capture", key)
        if known is not None:
            return known
        check_amount(amount_cents)
        charge = self._charge(reference)
        if charge.status != "authorized":
            raise PaymentInvalid(f"the payment is {charge.status}, not capturable")
        if amount_cents > charge.amount_cents:
            raise PaymentInvalid("cannot capture more than was authorized")
        captured = ProviderCharge(
            reference=reference,
            refund_reference=reference,
            status="succeeded",
            amount_cents=charge.amount_cents,
            captured_cents=amount_cents,
            currency=charge.currency,
            test_mode=True,
        )
        self._charges[reference] = captured
        return self._remember("capture", key, captured)  # type: ignore[no-any-return]

    async def cancel(self, reference: str, *, key: str) -> ProviderCharge:
        known: ProviderCharge | None = self._remembered("cancel", key)
        if known is not None:
            return known
        charge = self._charge(reference)
        if charge.status not in ("authorized", "canceled"):
            raise PaymentInvalid(f"the payment is {charge.status}, cannot be canceled")
        canceled = ProviderCharge(
            reference=reference,
            refund_reference=reference,
            status="canceled",
            amount_cents=charge.amount_cents,
            captured_cents=0,
            currency=charge.currency,
            test_mode=True,
        )
        self._charges[reference] = canceled
        return self._remember("cancel", key, canceled)  # type: ignore[no-any-return]

    async def refund(self, reference: str, amount_cents: int, *, key: str) -> ProviderRefund:
        known: ProviderRefund | None = self._remembered("refund", key)
        if known is not None:
            return known
        check_amount(amount_cents)
        charge = self._charge(reference)
        refunded = self._refunded.get(reference, 0)
        if charge.status != "succeeded" or refunded + amount_cents > charge.captured_cents:
            raise PaymentInvalid("cannot refund more than was captured")
        self._refunded[reference] = refunded + amount_cents
        refund = ProviderRefund(
            reference=f"sbx_re_{_digest(key)}",
            status="succeeded",
            amount_cents=amount_cents,
            currency=charge.currency,
            test_mode=True,
        )
        return self._remember("refund", key, refund)  # type: ignore[no-any-return]

    async def payout(
        self, destination: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderPayout:
        known: ProviderPayout | None = self._remembered("payout", key)
        if known is not None:
            return known
        check_amount(amount_cents)
        self._pay(destination)
        payout = ProviderPayout(
            reference=f"sbx_po_{_digest(key)}",
            status="paid",
            amount_cents=amount_cents,
            currency=currency,
            test_mode=True,
        )
        return self._remember("payout", key, payout)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        self._answers.clear()
