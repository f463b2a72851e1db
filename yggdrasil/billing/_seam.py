"""What the ledger needs from a payment provider: to take money in (:class:`Collector`) and to pay
earnings out (:class:`Disburser`, to a method :class:`PayoutMethods` names).

This is the ledger's side of the payment-provider seam: ``POST /api/v1/payments/process`` collects
an amount through it and books the deposit. :class:`SandboxCollector` is the embedded default: a
clearly marked test mode that always succeeds and moves no real money. The payment providers
(Stripe, PayPal, the sandbox of ``_providers``) plug in behind the same protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

import msgspec
import trio

from .._errors import YggdrasilError


class Collected(msgspec.Struct, frozen=True):
    """Money a provider took from the user: who took it and its reference for that charge."""

    provider: str
    reference: str
    test_mode: bool = False


class Collector(Protocol):
    """Takes ``amount`` cents from the user's default payment method.

    ``idempotency_key`` is the same for every retry of one request: the provider charges once
    per key and answers a repetition with the first charge. Raises the provider's own
    ``YggdrasilError`` subclasses (declined: 402, unreachable: 503); then nothing was booked.
    """

    async def collect(
        self, *, user_id: str, amount: int, currency: str, idempotency_key: str
    ) -> Collected: ...


class SandboxCollector:
    """Test mode: every collection succeeds at once; the reference is derived from the key, so
    a retry with the same key names the same (pretend) charge."""

    provider = "sandbox"

    async def collect(
        self, *, user_id: str, amount: int, currency: str, idempotency_key: str
    ) -> Collected:
        await trio.lowlevel.checkpoint()
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
        return Collected(self.provider, f"sbx_{digest}", test_mode=True)


# ----------------------------------------------------------------------------- money out


class Disbursed(msgspec.Struct, frozen=True):
    """Money a provider sent to the user's payout method: who sent it and its reference."""

    provider: str
    reference: str
    test_mode: bool = False


class PayoutDeclined(YggdrasilError):
    """The provider refused the payout for good (a closed account, a method it cannot pay):
    retrying with the same key will not change that. The payout's booking is reversed."""

    status = 402
    code = "payout_declined"
    default_message = "the payment provider declined the payout"


class PayoutUnreachable(YggdrasilError):
    """The provider did not answer or failed on its side (a timeout, a 5xx): the payout stays
    pending and is sent again later with the same key."""

    status = 503
    code = "payout_provider_unavailable"
    default_message = "the payment provider cannot be reached, the payout will be retried"


class PayoutMethod(msgspec.Struct, frozen=True):
    """A verified payout method of a user: its provider (``external:<provider>`` is where the
    money goes in the ledger) and the method's id (opaque; a provider's token, never an account
    number)."""

    provider: str
    method_id: str


class PayoutMethods(Protocol):
    """Which verified payout method a user has, if any (payment methods whose purpose includes
    payout and whose verification state is ``verified``)."""

    async def payout_method(self, user_id: str) -> PayoutMethod | None: ...


class Disburser(Protocol):
    """Sends ``amount`` cents to the user's verified payout ``method``.

    ``idempotency_key`` is derived from the payout's id and is the same for every retry: the
    provider pays once per key and answers a repetition with the first transfer. Raises
    :class:`PayoutDeclined` (for good) or :class:`PayoutUnreachable` (try again later)."""

    async def disburse(
        self,
        *,
        user_id: str,
        amount: int,
        currency: str,
        method: PayoutMethod,
        idempotency_key: str,
    ) -> Disbursed: ...


class SandboxPayoutMethods:
    """Test mode: every user has a verified sandbox payout method, except those in
    ``without`` (so a test, or an operator trying the flow, can see a payout wait for one)."""

    def __init__(self, without: set[str] | None = None) -> None:
        self.without = set() if without is None else without

    async def payout_method(self, user_id: str) -> PayoutMethod | None:
        await trio.lowlevel.checkpoint()
        if user_id in self.without:
            return None
        return PayoutMethod("sandbox", f"sbx_pm_{user_id}")


class SandboxDisburser:
    """Test mode: every payout succeeds at once and moves no real money; the reference is
    derived from the key, so a retry with the same key names the same (pretend) transfer.

    ``fail(user_id, amount)`` may return an error to raise instead (tests of declines and
    outages); ``sent`` counts the distinct keys paid, ``calls`` every call."""

    provider = "sandbox"

    def __init__(self, fail: Callable[[str, int], YggdrasilError | None] | None = None) -> None:
        self.fail = fail
        self.sent: dict[str, int] = {}
        self.calls = 0

    async def disburse(
        self,
        *,
        user_id: str,
        amount: int,
        currency: str,
        method: PayoutMethod,
        idempotency_key: str,
    ) -> Disbursed:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        error = None if self.fail is None else self.fail(user_id, amount)
        if error is not None:
            raise error
        previous = self.sent.setdefault(idempotency_key, amount)
        if previous != amount:
            raise PayoutDeclined("the same key was used for another amount")
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
        return Disbursed(self.provider, f"sbx_po_{digest}", test_mode=True)
