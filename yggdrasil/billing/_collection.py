"""The money side's seams over the payment providers: the ledger's collector
(``POST /api/v1/payments/process`` and auto-top-up take money from the user's default verified
payer method, through that method's provider), and the payouts' methods and disburser (money
goes to the user's default verified payout method).

The sandbox's test tokens work here as everywhere (test mode, no money moves); with Stripe or
PayPal configured a user's card, SEPA debit or PayPal account is charged or paid for real. The
operation's idempotency key is the provider call's key, so a retry after a crash or a timeout
never moves money twice.
"""

from __future__ import annotations

from .._errors import NotFound, YggdrasilError
from ._methods import PaymentMethods
from ._payments import Payments
from ._providers import PaymentDeclined, PaymentProviderUnavailable
from ._seam import Collected, Disbursed, PayoutDeclined, PayoutMethod, PayoutUnreachable


class NoPaymentMethod(YggdrasilError):
    status = 402
    code = "no_payment_method"
    default_message = "add and verify a payment method first (POST /api/v1/payments/methods)"


class ProviderCollector:
    """:class:`~._seam.Collector` through the default verified payer method of each user."""

    def __init__(self, payments: Payments) -> None:
        self._payments = payments
        self._methods: PaymentMethods = payments.methods

    async def collect(
        self, *, user_id: str, amount: int, currency: str, idempotency_key: str
    ) -> Collected:
        try:
            method = await self._methods.chargeable(user_id, "payer")
        except NotFound:
            raise NoPaymentMethod() from None
        provider = self._payments.provider(method.provider)
        charge = await provider.charge(method.token, amount, currency, key=idempotency_key)
        return Collected(method.provider, charge.reference, test_mode=charge.test_mode)


class ProviderPayoutMethods:
    """:class:`~._seam.PayoutMethods` over the stored payment methods: the user's default
    verified method whose purpose includes payout."""

    def __init__(self, payments: Payments) -> None:
        self._methods: PaymentMethods = payments.methods

    async def payout_method(self, user_id: str) -> PayoutMethod | None:
        try:
            method = await self._methods.chargeable(user_id, "payout")
        except NotFound:
            return None
        return PayoutMethod(method.provider, method.method_id)


class ProviderDisburser:
    """:class:`~._seam.Disburser` through the payout method's provider (Stripe Connect, PayPal
    payouts, the sandbox in test mode); the payout's key is the provider call's key."""

    def __init__(self, payments: Payments) -> None:
        self._payments = payments
        self._methods: PaymentMethods = payments.methods

    async def disburse(
        self,
        *,
        user_id: str,
        amount: int,
        currency: str,
        method: PayoutMethod,
        idempotency_key: str,
    ) -> Disbursed:
        try:
            current = await self._methods.chargeable(user_id, "payout")
        except NotFound:
            raise PayoutDeclined("the payout method is gone") from None
        if current.method_id != method.method_id:
            raise PayoutDeclined("the default payout method changed; the payout is retried")
        try:
            provider = self._payments.provider(current.provider)
            sent = await provider.payout(current.token, amount, currency, key=idempotency_key)
        except PaymentDeclined as exc:
            raise PayoutDeclined(exc.message) from None
        except PaymentProviderUnavailable as exc:
            raise PayoutUnreachable(exc.message) from None
        if sent.status == "failed":
            raise PayoutDeclined(f"{current.provider} did not pay the payout")
        return Disbursed(current.provider, sent.reference, test_mode=sent.test_mode)
