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

from ._methods import (
    ChargeableMethod,
    MicroDepositsMismatch,
    NewMethod,
    NotVerified,
    PaymentMethod,
    PaymentMethods,
    card_data_in,
)
from ._payments import Payments, open_providers
from ._paypal import PayPalProvider
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
from ._sandbox import MICRO_DEPOSITS_CENTS, SandboxProvider
from ._stripe import StripeProvider
from ._webhooks import MAX_WEBHOOK_BYTES, WebhookEvent, WebhookOutcome, WebhookRefused, Webhooks

__all__ = [
    "MAX_WEBHOOK_BYTES",
    "MICRO_DEPOSITS_CENTS",
    "ChargeableMethod",
    "MethodCheck",
    "MicroDepositsMismatch",
    "NewMethod",
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
    "ProviderCharge",
    "ProviderPayout",
    "ProviderRefund",
    "SandboxProvider",
    "StripeProvider",
    "WebhookEvent",
    "WebhookOutcome",
    "WebhookRefused",
    "Webhooks",
    "card_data_in",
    "open_providers",
]
