"""The ledger's collector over the payment providers: ``POST /api/v1/payments/process`` takes
money from the user's default verified payer method, through that method's provider.

The sandbox's test tokens work here as everywhere (test mode, no money moves); with Stripe or
PayPal configured a user's card, SEPA debit or PayPal account is charged for real. The
idempotency key of the request is the provider call's key, so a retry after a crash or a
timeout never charges twice.
"""

from __future__ import annotations

from .._errors import NotFound, YggdrasilError
from ._methods import PaymentMethods
from ._payments import Payments
from ._seam import Collected


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
