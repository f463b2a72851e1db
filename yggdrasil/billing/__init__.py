"""Money: the double-entry ledger, idempotent money operations, payment methods and providers,
webhooks, subscriptions, invoices and payouts.

One room, several parts, each in modules of its own that own their tables and SQL:

- the ledger (``_ledger``, ``_idempotency``): integer cents, balanced postings, immutable
  entries, holds; every operation one transaction keyed by an idempotency key;
- payments (``_providers``, ``_sandbox``, ``_stripe``, ``_paypal``, ``_methods``, ``_webhooks``):
  the payment-provider seam and its implementations, stored payment methods (provider tokens
  only), webhook verification and deduplication;
- subscriptions (``_plans``, ``_subscriptions``, ``_usage``, ``_invoices``, ``_renewals``);
- payouts (``_payouts``): schedules, minimums, KYC, netting.

Accounts of the ledger are named ``user:<user_id>:<kind>`` (balance, held, earnings, payable,
receivable), ``company:<kind>`` (revenue:<stream>, fees, credits) and ``external:<provider>``
(money entering or leaving through a payment provider); the sum over all accounts is zero after
every transaction.
"""

from ._charging import Charger, ChargeResult, SandboxCharger
from ._invoices import Invoice, InvoiceLine, Invoices, issue_invoice, render_html
from ._plans import Plan, Plans, Proration, add_months, prorate
from ._renewals import Renewals, renew_forever
from ._subscription_leases import end_subscriptions_of_user
from ._subscription_requests import SubscriptionRequests
from ._subscriptions import (
    PlanChange,
    Subscribed,
    Subscriptions,
    SubscriptionView,
)
from ._usage import FeatureNotInPlan, QuotaExceeded, Usage, UsageMeter, UsageReport

__all__ = [
    # subscriptions
    "ChargeResult",
    "Charger",
    "FeatureNotInPlan",
    "Invoice",
    "InvoiceLine",
    "Invoices",
    "Plan",
    "PlanChange",
    "Plans",
    "Proration",
    "QuotaExceeded",
    "Renewals",
    "SandboxCharger",
    "Subscribed",
    "SubscriptionRequests",
    "SubscriptionView",
    "Subscriptions",
    "Usage",
    "UsageMeter",
    "UsageReport",
    "add_months",
    "end_subscriptions_of_user",
    "issue_invoice",
    "prorate",
    "render_html",
    "renew_forever",
]
