"""Request and response bodies of the payments routes (msgspec Structs)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Kind = Literal["card", "sepa_debit", "paypal"]
Purpose = Literal["payer", "payout"]
ProviderName = Literal["sandbox", "stripe", "paypal"]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_-]+$")]
MicroDeposit = Annotated[int, msgspec.Meta(ge=1, le=99)]


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class PaymentMethodIn(_In, frozen=True):
    """A payment method the provider has tokenized: its token, never the card number or IBAN
    (a body that contains one is refused with 422 ``card_data_refused``)."""

    kind: Kind
    token: Token
    """The provider's token: a Stripe PaymentMethod (``pm_...``), a PayPal vault payment token,
    or a sandbox test token (``tok_sandbox_visa``...)."""
    purposes: Annotated[list[Purpose], msgspec.Meta(min_length=1, max_length=2)] = msgspec.field(
        default_factory=lambda: ["payer"]
    )
    """``payer`` (pays subscriptions and usage), ``payout`` (receives earnings), or both."""
    provider: ProviderName | None = None
    """Empty: the enabled provider for this kind (Stripe for cards and SEPA, PayPal for PayPal
    accounts, else the sandbox)."""
    label: Annotated[str, msgspec.Meta(max_length=100)] = ""


class DefaultIn(_In, frozen=True):
    purpose: Purpose = "payer"


class VerifyMethodIn(_In, frozen=True):
    amounts_cents: (
        Annotated[list[MicroDeposit], msgspec.Meta(min_length=2, max_length=2)] | None
    ) = None
    """A SEPA account's two micro-deposits, in cents, as its holder saw them on the statement.
    Empty for a card or PayPal account: its provider checks it again."""


class PaymentMethodOut(msgspec.Struct):
    method_id: str
    kind: str
    provider: str
    purposes: list[str]
    status: Literal["pending", "verified", "failed"]
    default_payer: bool
    default_payout: bool
    label: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    country: str | None
    email: str | None
    """A PayPal account's address, masked (``j***@example.org``)."""
    needs: str | None
    """What the owner still has to do: ``confirm_micro_deposits`` or ``verify_again``."""
    test_mode: bool
    """True: a sandbox or test-key method; no real money moves with it."""
    created_at: int


class PaymentMethodList(msgspec.Struct):
    items: list[PaymentMethodOut]


class ProviderOut(msgspec.Struct):
    name: str
    test_mode: bool
    kinds: list[str]


class ProviderList(msgspec.Struct):
    items: list[ProviderOut]
    test_mode: bool
    """True when every enabled provider is in test mode (the sandbox alone, by default)."""


class WebhookAnswer(msgspec.Struct):
    event_id: str
    result: Literal["processed", "duplicate", "stale"]
    """``duplicate``: delivered before, processed then; ``stale``: recorded, but its object had
    moved on (a late or out-of-order delivery)."""
