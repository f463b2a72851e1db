"""Money: the double-entry ledger, idempotent money operations, payment methods and providers,
webhooks, subscriptions, invoices and payouts.

One room, several parts, each in modules of its own that own their tables and SQL:

- the ledger (``_ledger``, ``_idempotency``): integer cents, balanced postings, immutable
  entries, holds; every operation one transaction keyed by an idempotency key;
- payments (``_providers``, ``_sandbox``, ``_stripe``, ``_paypal``, ``_methods``, ``_webhooks``):
  the payment-provider seam and its implementations, stored payment methods (provider tokens
  only), webhook verification and deduplication;
- subscriptions (``_plans``, ``_subscriptions``, ``_usage``, ``_invoices``, ``_renewals``);
- payouts (``_payouts``, ``_kyc``, ``_limits``, ``_privacy``): schedules, minimums, KYC,
  netting, spending limits, budget alerts, auto-top-up, and the room's part of a user's export
  and deletion.

Accounts of the ledger are named ``user:<user_id>:<kind>`` (balance, held, earnings, payable,
receivable), ``company:<kind>`` (revenue:<stream>, fees, credits) and ``external:<provider>``
(money entering or leaving through a payment provider); the sum over all accounts is zero after
every transaction.
"""

from ._charging import Charger, ChargeResult, SandboxCharger
from ._collection import (
    NoPaymentMethod,
    ProviderCollector,
    ProviderDisburser,
    ProviderPayoutMethods,
)
from ._idempotency import (
    Codec,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
    check_key,
    idempotent,
    purge_idempotency_keys,
    run_once,
    stored_answer,
    struct_codec,
)
from ._invoices import Invoice, InvoiceLine, Invoices, issue_invoice, render_html
from ._kyc import KYC_SEALED, Kyc, KycRequired, KycService, KycVerified
from ._ledger import (
    Balances,
    Capture,
    Charge,
    Deposit,
    Entry,
    ExceedsHold,
    ExceedsRefundable,
    Hold,
    HoldClosed,
    Ledger,
    LedgerCheck,
    Netting,
    NettingOff,
    Payout,
    Refund,
    SpendingHook,
)
from ._limits import AutoTopup, Limits, SpendingLimitReached, SpendingLimits
from ._methods import (
    METHODS_SEALED,
    ChargeableMethod,
    MicroDepositsMismatch,
    NewMethod,
    NotVerified,
    PaymentMethod,
    PaymentMethods,
    card_data_in,
)
from ._money import MAX_AMOUNT, Cents, InvalidAmount, check_cents, compute_cost, fee, split
from ._payments import Payments, open_providers
from ._payouts import (
    BelowMinimum,
    PayoutList,
    PayoutMethodRequired,
    PayoutRecord,
    Payouts,
    PayoutSettings,
    Waiting,
)
from ._paypal import PayPalProvider
from ._plans import Plan, Plans, Proration, add_months, prorate
from ._postings import (
    KIND_RULES,
    SIGN_RULES,
    InsufficientFunds,
    Posting,
    UnbalancedPostings,
    company_account,
    external_account,
    post,
    sign_of,
    user_account,
)
from ._privacy import BillingData
from ._providers import (
    MethodCheck,
    PaymentDeclined,
    PaymentError,
    PaymentInvalid,
    PaymentProvider,
    PaymentProviderUnavailable,
    ProviderCharge,
    ProviderPayout,
    ProviderRefund,
)
from ._renewals import Renewals, renew_forever
from ._retention import purge_webhook_events
from ._sandbox import MICRO_DEPOSITS_CENTS, SandboxProvider
from ._seam import (
    Collected,
    Collector,
    Disbursed,
    Disburser,
    PayoutDeclined,
    PayoutMethod,
    PayoutMethods,
    PayoutUnreachable,
    SandboxCollector,
    SandboxDisburser,
    SandboxPayoutMethods,
)
from ._stripe import StripeProvider
from ._subscription_leases import end_subscriptions_of_user
from ._subscription_money import LedgerCharger
from ._subscription_requests import SubscriptionRequests
from ._subscriptions import (
    PlanChange,
    Subscribed,
    Subscriptions,
    SubscriptionView,
)
from ._usage import FeatureNotInPlan, QuotaExceeded, Usage, UsageMeter, UsageReport
from ._webhooks import MAX_WEBHOOK_BYTES, WebhookEvent, WebhookOutcome, WebhookRefused, Webhooks

BILLING_SEALED = (METHODS_SEALED, KYC_SEALED)
"""The billing room's sealed columns, for the composition's re-encryption."""

__all__ = [
    "BILLING_SEALED",
    "KIND_RULES",
    "MAX_AMOUNT",
    "MAX_WEBHOOK_BYTES",
    "MICRO_DEPOSITS_CENTS",
    "SIGN_RULES",
    "AutoTopup",
    "Balances",
    "BelowMinimum",
    "BillingData",
    "Capture",
    "Cents",
    "Charge",
    "ChargeResult",
    "ChargeableMethod",
    "Charger",
    "Codec",
    "Collected",
    "Collector",
    "Deposit",
    "Disbursed",
    "Disburser",
    "Entry",
    "ExceedsHold",
    "ExceedsRefundable",
    "FeatureNotInPlan",
    "Hold",
    "HoldClosed",
    "IdempotencyKeyRequired",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "InvalidAmount",
    "Invoice",
    "InvoiceLine",
    "Invoices",
    "Kyc",
    "KycRequired",
    "KycService",
    "KycVerified",
    "Ledger",
    "LedgerCharger",
    "LedgerCheck",
    "Limits",
    "MethodCheck",
    "MicroDepositsMismatch",
    "Netting",
    "NettingOff",
    "NewMethod",
    "NoPaymentMethod",
    "NotVerified",
    "PayPalProvider",
    "PaymentDeclined",
    "PaymentError",
    "PaymentInvalid",
    "PaymentMethod",
    "PaymentMethods",
    "PaymentProvider",
    "PaymentProviderUnavailable",
    "Payments",
    "Payout",
    "PayoutDeclined",
    "PayoutList",
    "PayoutMethod",
    "PayoutMethodRequired",
    "PayoutMethods",
    "PayoutRecord",
    "PayoutSettings",
    "PayoutUnreachable",
    "Payouts",
    "Plan",
    "PlanChange",
    "Plans",
    "Posting",
    "Proration",
    "ProviderCharge",
    "ProviderCollector",
    "ProviderDisburser",
    "ProviderPayout",
    "ProviderPayoutMethods",
    "ProviderRefund",
    "QuotaExceeded",
    "Refund",
    "Renewals",
    "SandboxCharger",
    "SandboxCollector",
    "SandboxDisburser",
    "SandboxPayoutMethods",
    "SandboxProvider",
    "SpendingHook",
    "SpendingLimitReached",
    "SpendingLimits",
    "StripeProvider",
    "Subscribed",
    "SubscriptionRequests",
    "SubscriptionView",
    "Subscriptions",
    "UnbalancedPostings",
    "Usage",
    "UsageMeter",
    "UsageReport",
    "Waiting",
    "WebhookEvent",
    "WebhookOutcome",
    "WebhookRefused",
    "Webhooks",
    "add_months",
    "card_data_in",
    "check_cents",
    "check_key",
    "company_account",
    "compute_cost",
    "end_subscriptions_of_user",
    "external_account",
    "fee",
    "idempotent",
    "issue_invoice",
    "open_providers",
    "post",
    "prorate",
    "purge_idempotency_keys",
    "purge_webhook_events",
    "render_html",
    "renew_forever",
    "run_once",
    "sign_of",
    "split",
    "stored_answer",
    "struct_codec",
    "user_account",
]
