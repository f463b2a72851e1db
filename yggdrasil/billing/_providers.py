"""The payment-provider seam: what the ledger, subscriptions and payouts ask of a payment provider,
the small results it answers with, and the errors it raises.

Every call takes ``key``, an idempotency key derived from *our* operation's id (e.g.
``hold-<id>-capture``), and hands it to the provider: a call repeated with the same key (a retry
after a timeout, or after a crash of ours) acts once and answers like the first. Amounts are
integer cents; currencies are ISO 4217 codes in lower case.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from .._errors import YggdrasilError

MethodKind = Literal["card", "sepa_debit", "paypal"]
ProviderName = Literal["sandbox", "stripe", "paypal"]
VerificationStatus = Literal["pending", "verified", "failed"]
ChargeStatus = Literal["authorized", "pending", "succeeded", "canceled", "failed"]
"""``pending``: the provider is still processing (a SEPA debit takes days)."""


class PaymentError(YggdrasilError):
    """Root of the payment errors; each carries what the HTTP boundary answers."""

    status = 502
    code = "payment_error"
    default_message = "the payment provider refused the request"


class PaymentDeclined(PaymentError):
    """The provider declined: the card, account or balance does not allow it. Retrying the
    same thing will not help."""

    status = 402
    code = "payment_declined"
    default_message = "the payment was declined"


class PaymentProviderUnavailable(PaymentError):
    """The provider did not answer in time, or answered with a server error: nothing is known
    to have happened. Retry later with the same idempotency key."""

    status = 503
    code = "payment_provider_unavailable"
    default_message = "the payment provider is unavailable, try again later"
    retry_after_s = 5


class PaymentInvalid(PaymentError):
    """The provider refused the request itself (unknown token, wrong state, bad amount)."""

    status = 422
    code = "payment_invalid"
    default_message = "the payment provider refused the request as invalid"


class MethodCheck(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's verdict on a payment method, with the display data it knows (never the
    full number)."""

    status: VerificationStatus
    reference: str | None = None
    """The provider's object of a verification in progress (a SetupIntent for micro-deposits)."""
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    country: str | None = None
    email: str | None = None
    """The PayPal account's address, unmasked: the caller masks it before storing."""
    reason: str | None = None
    """Why it failed, in the provider's words (no personal data)."""
    test_mode: bool = False


class ProviderCharge(msgspec.Struct, frozen=True, kw_only=True):
    """An authorization (manual capture) or an immediate charge, after the last call on it."""

    reference: str
    """What to capture or cancel (Stripe: the PaymentIntent; PayPal: the authorization)."""
    refund_reference: str
    """What a refund names (Stripe: the PaymentIntent; PayPal: the capture)."""
    status: ChargeStatus
    amount_cents: int
    captured_cents: int
    currency: str
    test_mode: bool = False


class ProviderRefund(msgspec.Struct, frozen=True, kw_only=True):
    reference: str
    status: Literal["succeeded", "pending", "failed"]
    amount_cents: int
    currency: str
    test_mode: bool = False


class ProviderPayout(msgspec.Struct, frozen=True, kw_only=True):
    reference: str
    status: Literal["paid", "pending", "failed"]
    amount_cents: int
    currency: str
    test_mode: bool = False


class PaymentProvider(Protocol):
    """One payment provider. Every call may raise :class:`PaymentDeclined`,
    :class:`PaymentProviderUnavailable` or :class:`PaymentInvalid`; cancellation propagates
    (the provider may then have acted: repeat with the same key to learn the outcome)."""

    @property
    def name(self) -> ProviderName: ...

    @property
    def test_mode(self) -> bool:
        """True when no real money can move (the sandbox, or a provider's test keys)."""

    @property
    def kinds(self) -> frozenset[MethodKind]:
        """The kinds of payment method this provider takes."""

    async def verify_method(self, kind: MethodKind, token: str, *, key: str) -> MethodCheck:
        """Check a payment method: a card through the provider's check, a PayPal account
        through its account check, a SEPA account by starting micro-deposits (``pending``)."""

    async def confirm_micro_deposits(
        self, reference: str, amounts_cents: tuple[int, int], *, key: str
    ) -> MethodCheck:
        """Confirm the two micro-deposits the account holder saw; ``failed`` with a reason when
        they do not match (the provider may allow a few attempts)."""

    async def authorize(
        self, token: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderCharge:
        """Reserve ``amount_cents`` on the method without taking it (manual capture)."""

    async def capture(self, reference: str, amount_cents: int, *, key: str) -> ProviderCharge:
        """Take ``amount_cents`` (at most what was authorized) of an authorization; the rest is
        released."""

    async def cancel(self, reference: str, *, key: str) -> ProviderCharge:
        """Release an authorization without taking anything."""

    async def charge(
        self, token: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderCharge:
        """Take ``amount_cents`` at once."""

    async def refund(self, reference: str, amount_cents: int, *, key: str) -> ProviderRefund:
        """Give back ``amount_cents`` of a charge (``ProviderCharge.refund_reference``)."""

    async def payout(
        self, destination: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderPayout:
        """Send ``amount_cents`` to a payout method's token (a Stripe Connect account, a PayPal
        account)."""

    async def aclose(self) -> None:
        """Release the provider's connections; the provider is unusable afterwards."""


def check_amount(amount_cents: int) -> None:
    """Amounts handed to a provider: positive integer cents below 10^11 (no float, no bool)."""
    if type(amount_cents) is not int or not 0 < amount_cents < 10**11:
        raise PaymentInvalid("amounts are positive integer cents")


def check_key(key: str) -> None:
    if not key or len(key) > 255:
        raise PaymentInvalid("an idempotency key of 1 to 255 characters is required")


def decimal_amount(amount_cents: int) -> str:
    """Cents as the decimal text PayPal wants (``1234`` -> ``"12.34"``), without floats."""
    return f"{amount_cents // 100}.{amount_cents % 100:02d}"


def parse_decimal_amount(text: str) -> int:
    """PayPal's decimal text as cents (``"12.34"`` -> ``1234``), without floats."""
    whole, _, fraction = text.strip().partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()) or len(fraction) > 2:
        raise PaymentInvalid(f"the provider answered an amount we cannot read: {text!r}")
    return int(whole) * 100 + int(fraction.ljust(2, "0") or "0")
