"""The subscriptions' :class:`~._charging.Charger` over the real money side: the user's default
verified payer method (through its provider) and the ledger.

A subscription charge is collected from the provider with the subscription's key (so a retry
never charges twice), booked as a deposit onto the user's balance and charged from there to
``company:revenue:subscriptions``: the user sees both in their entries. Both bookings are keyed;
a crash between them leaves the money on the user's balance, and the rerun with the same key
replays the deposit and books the charge. A proration credit moves ``company:credits`` onto the
user's balance.
"""

from __future__ import annotations

from .._errors import YggdrasilError
from ._charging import ChargeResult
from ._collection import NoPaymentMethod
from ._ledger import Ledger
from ._postings import Posting, company_account
from ._providers import PaymentDeclined, PaymentProviderUnavailable
from ._seam import Collector


class LedgerCharger:
    """Charges through ``collector`` and books in ``ledger`` (see the module docstring)."""

    def __init__(self, ledger: Ledger, collector: Collector) -> None:
        self._ledger = ledger
        self._collector = collector

    async def charge_subscription(
        self, user_id: str, amount_cents: int, *, key: str, description: str
    ) -> ChargeResult:
        currency = self._ledger.config.currency
        try:
            collected = await self._collector.collect(
                user_id=user_id, amount=amount_cents, currency=currency, idempotency_key=key
            )
        except (PaymentDeclined, NoPaymentMethod) as exc:
            return ChargeResult("declined", "", message=exc.message)
        except PaymentProviderUnavailable as exc:
            return ChargeResult("unavailable", "", message=exc.message)
        await self._ledger.deposit(
            user_id,
            amount_cents,
            key=f"{key}:in",
            provider=collected.provider,
            provider_ref=collected.reference,
        )
        await self._ledger.charge(
            user_id,
            amount_cents,
            key=f"{key}:pay",
            to=[Posting(company_account("revenue:subscriptions"), amount_cents)],
            memo={"subscription": description},
        )
        return ChargeResult(
            "ok", collected.provider, collected.reference, test_mode=collected.test_mode
        )

    async def credit(
        self, user_id: str, amount_cents: int, *, key: str, description: str
    ) -> ChargeResult:
        try:
            await self._ledger.credit(
                user_id, amount_cents, key=key, memo={"subscription": description}
            )
        except YggdrasilError as exc:
            return ChargeResult("unavailable", "ledger", message=exc.message)
        return ChargeResult("ok", "ledger")
