"""Request and response bodies of the subscription routes (plans, subscriptions, usage,
invoices). Amounts are integer cents of ``currency``; times are milliseconds since the epoch."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ._models import Cursor, PageLimit

PlanId = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern="^[a-z][a-z0-9_]*$")]


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class IdempotencyKeyHeader(msgspec.Struct, frozen=True):
    """Every subscription request that moves money names itself: the same key and body replay
    the first answer, the same key with another body is 422 ``idempotency_key_reused``, a
    missing key is 400 ``idempotency_key_required``. Keys are kept for at least 24 hours."""

    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None


class PlanIn(_In, frozen=True):
    plan: PlanId


class ChangeQuery(_In, frozen=True):
    preview: bool = False
    """Only state the amounts of the change; nothing changes, nothing is charged (no key
    needed)."""


class InvoiceQuery(_In, frozen=True):
    format: Literal["json", "html"] = "json"
    """``html``: the printable page."""


class InvoicePageQuery(_In, frozen=True):
    cursor: Cursor | None = None
    limit: PageLimit = 50


class PlanOut(msgspec.Struct, frozen=True):
    id: str
    name: str
    price_cents: int
    """Per period (a calendar month)."""
    tokens: int
    """Cloud-LLM tokens included per period."""
    token_price_cents: int
    """Pay-per-token: per 1,000 tokens, charged at the period's end (0: not metered)."""
    metered: bool
    features: list[str]
    currency: str


class PlanList(msgspec.Struct, frozen=True):
    plans: list[PlanOut]


class UsageOut(msgspec.Struct, frozen=True):
    plan: str
    metered: bool
    period_start: int | None
    period_end: int | None
    tokens_included: int
    tokens_used: int
    tokens_remaining: int | None
    metered_tokens: int
    metered_cents: int
    token_price_cents: int


class PeriodUsageOut(msgspec.Struct, frozen=True):
    subscription_id: str
    period_start: int
    period_end: int
    tokens_used: int
    metered_tokens: int


class UsageReportOut(msgspec.Struct, frozen=True):
    current: UsageOut
    periods: list[PeriodUsageOut]


class SubscriptionOut(msgspec.Struct, frozen=True):
    subscription_id: str | None
    plan: str
    plan_name: str
    status: Literal["free", "active", "past_due", "canceled_at_period_end"]
    price_cents: int
    currency: str
    period_start: int | None = None
    period_end: int | None = None
    renews_at: int | None = None
    ends_at: int | None = None
    grace_until: int | None = None
    next_retry_at: int | None = None
    due_cents: int | None = None


class CurrentSubscriptionOut(msgspec.Struct, frozen=True):
    subscription: SubscriptionOut
    usage: UsageOut


class SubscribedOut(msgspec.Struct, frozen=True):
    subscription: SubscriptionOut
    charged_cents: int
    invoice_id: str | None


class PlanSideOut(msgspec.Struct, frozen=True):
    plan: str
    plan_name: str
    price_cents: int


class ProrationOut(msgspec.Struct, frozen=True):
    at: int
    period_start: int
    period_end: int
    credit_cents: int
    """The unused part of the old plan's fee."""
    charge_cents: int
    """The new plan's fee for the rest of the period."""
    due_cents: int
    """Charged now (``charge - credit`` when positive)."""
    credited_cents: int
    """Credited to the balance (``credit - charge`` when positive)."""


class PlanChangeOut(msgspec.Struct, frozen=True):
    preview: bool
    before: PlanSideOut
    after: PlanSideOut
    proration: ProrationOut
    currency: str
    invoice_id: str | None
    subscription: SubscriptionOut


class InvoiceLineOut(msgspec.Struct, frozen=True):
    kind: str
    description: str
    amount_cents: int
    quantity: int


class InvoiceOut(msgspec.Struct, frozen=True):
    invoice_id: str
    number: str
    subscription_id: str | None
    currency: str
    total_cents: int
    lines: list[InvoiceLineOut]
    period_start: int | None
    period_end: int | None
    payment_provider: str
    payment_reference: str
    test_mode: bool
    issued_at: int


class InvoicePage(msgspec.Struct, frozen=True):
    items: list[InvoiceOut]
    next_cursor: str | None = None
