"""Request and response bodies of the payouts, KYC and spending-limit routes
(``api/_payouts.py``).

Amounts are integer cents; the routes check the raw JSON amounts again with ``check_cents`` (a
float or a string is 422 ``invalid_amount``), as the ledger's routes do.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from yggdrasil.billing import (
    Cents,
    Kyc,
    PayoutList,
    PayoutRecord,
    PayoutSettings,
    SpendingLimits,
)

Percent = Annotated[int, msgspec.Meta(ge=1, le=1000)]


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class PayoutIn(_In, frozen=True):
    amount: Cents | None = None
    """Cents to pay out; left out: everything available."""


class PayoutQuery(_In, frozen=True):
    cursor: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 50


class PayoutSettingsIn(_In, frozen=True):
    frequency: Literal["daily", "weekly", "monthly"] | None = None
    minimum: Cents | None = None
    """At least ``payouts.minimum_floor`` cents."""
    automatic: bool | None = None
    netting: bool | None = None


class NettingIn(_In, frozen=True):
    enabled: bool


class NettingOut(msgspec.Struct, frozen=True):
    enabled: bool


class KycIn(_In, frozen=True):
    region: Annotated[str, msgspec.Meta(pattern="^[A-Z]{2}$")]
    """Where the provider is: an ISO 3166 country code."""
    reference: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    """The case or document reference at the KYC provider (no documents are stored here)."""


class KycDecisionIn(_In, frozen=True):
    status: Literal["verified", "rejected"]
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class AutoTopupIn(_In, frozen=True):
    below: Cents
    amount: Cents
    max_per_month: Annotated[int, msgspec.Meta(ge=1, le=100)]


class LimitsIn(_In, frozen=True):
    monthly_limit: Cents | None = None
    """No limit when left out or null."""
    alert_thresholds: Annotated[list[Percent], msgspec.Meta(max_length=10)] | None = None
    """Percentages of the limit (default: ``payouts.alert_thresholds``)."""
    auto_topup: AutoTopupIn | None = None
    """No auto-top-up when left out or null."""


PayoutOut = PayoutRecord
PayoutPage = PayoutList
PayoutSettingsOut = PayoutSettings
KycOut = Kyc
LimitsOut = SpendingLimits
