"""What the ledger needs from a payment provider to take money in: one call, :meth:`collect`.

This is the ledger's side of the payment-provider seam: ``POST /api/v1/payments/process`` collects
an amount through it and books the deposit. :class:`SandboxCollector` is the embedded default: a
clearly marked test mode that always succeeds and moves no real money. The payment providers
(Stripe, PayPal, the sandbox of ``_providers``) plug in behind the same protocol.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import msgspec
import trio


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
