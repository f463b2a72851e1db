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
from ._kyc import Kyc, KycRequired, KycService, KycVerified
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
from ._money import MAX_AMOUNT, Cents, InvalidAmount, check_cents, compute_cost, fee, split
from ._payouts import (
    BelowMinimum,
    PayoutList,
    PayoutMethodRequired,
    PayoutRecord,
    Payouts,
    PayoutSettings,
    Waiting,
)
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

__all__ = [
    "KIND_RULES",
    "MAX_AMOUNT",
    "SIGN_RULES",
    "AutoTopup",
    "Balances",
    "BelowMinimum",
    "BillingData",
    "Capture",
    "Cents",
    "Charge",
    "Codec",
    "Collected",
    "Collector",
    "Deposit",
    "Disbursed",
    "Disburser",
    "Entry",
    "ExceedsHold",
    "ExceedsRefundable",
    "Hold",
    "HoldClosed",
    "IdempotencyKeyRequired",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "InvalidAmount",
    "Kyc",
    "KycRequired",
    "KycService",
    "KycVerified",
    "Ledger",
    "LedgerCheck",
    "Limits",
    "Netting",
    "NettingOff",
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
    "Posting",
    "Refund",
    "SandboxCollector",
    "SandboxDisburser",
    "SandboxPayoutMethods",
    "SpendingHook",
    "SpendingLimitReached",
    "SpendingLimits",
    "UnbalancedPostings",
    "Waiting",
    "check_cents",
    "check_key",
    "company_account",
    "compute_cost",
    "external_account",
    "fee",
    "idempotent",
    "post",
    "purge_idempotency_keys",
    "run_once",
    "sign_of",
    "split",
    "stored_answer",
    "struct_codec",
    "user_account",
]
