"""The payments part composed: the enabled providers (from ``[payments]``), the stored payment
methods and the webhooks, with the handlers that let webhook verdicts reach the methods."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .._config import PaymentsConfig
from ..store import Database, Tx
from ._methods import PaymentMethods, apply_verification
from ._paypal import PayPalProvider
from ._providers import PaymentProvider, PaymentProviderUnavailable
from ._sandbox import SandboxProvider
from ._stripe import StripeProvider
from ._webhooks import WebhookEvent, Webhooks

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_providers(config: PaymentsConfig) -> AsyncIterator[dict[str, PaymentProvider]]:
    """The providers ``config`` enables, by name; their connections are closed on exit (even
    when cancelled). Stripe with ``stripe_secret_key``, PayPal with its client id and secret, the
    sandbox unless ``sandbox`` is false."""
    providers: dict[str, PaymentProvider] = {}
    try:
        if config.sandbox:
            providers["sandbox"] = SandboxProvider()
        if config.stripe_secret_key:
            providers["stripe"] = StripeProvider(
                config.stripe_secret_key,
                api_base=config.stripe_api_base,
                timeout_s=config.timeout_s,
                deadline_s=config.deadline_s,
                retries=config.retries,
            )
        if config.paypal_client_id:
            providers["paypal"] = PayPalProvider(
                config.paypal_client_id,
                config.paypal_client_secret,
                api_base=config.paypal_api_base,
                timeout_s=config.timeout_s,
                deadline_s=config.deadline_s,
                retries=config.retries,
            )
        for name, provider in providers.items():
            log.info("payments: %s enabled%s", name, " (test mode)" if provider.test_mode else "")
        yield providers
    finally:
        with trio.CancelScope(shield=True):
            for provider in providers.values():
                await provider.aclose()


class Payments:
    """Payment methods, providers and webhooks over one :class:`Database`.

    ``providers`` (name -> provider) belong to the caller, who closes them
    (:func:`open_providers`).
    """

    def __init__(
        self, db: Database, providers: dict[str, PaymentProvider], config: PaymentsConfig
    ) -> None:
        self.providers = providers
        cards = "stripe" if "stripe" in providers else "sandbox"
        paypal = "paypal" if "paypal" in providers else "sandbox"
        defaults = {
            kind: name
            for kind, name in (("card", cards), ("sepa_debit", cards), ("paypal", paypal))
            if name in providers
        }
        self.methods = PaymentMethods(
            db, providers, defaults, micro_deposit_attempts=config.micro_deposit_attempts
        )
        checker = providers.get("paypal")
        self.webhooks = Webhooks(
            db,
            stripe_secret=config.stripe_webhook_secret,
            paypal=checker if isinstance(checker, PayPalProvider) else None,
            paypal_webhook_id=config.paypal_webhook_id,
            tolerance_s=config.webhook_tolerance_s,
        )
        self.webhooks.on("payment_method.verified", _verified)
        self.webhooks.on("payment_method.failed", _failed)

    def provider(self, name: str) -> PaymentProvider:
        """The enabled provider ``name``; :class:`PaymentProviderUnavailable` if it is not."""
        provider = self.providers.get(name)
        if provider is None:
            raise PaymentProviderUnavailable(f"the payment provider {name} is not enabled")
        return provider


async def _verified(tx: Tx, event: WebhookEvent) -> None:
    await apply_verification(tx, event.provider, event.object_id, "verified")


async def _failed(tx: Tx, event: WebhookEvent) -> None:
    await apply_verification(tx, event.provider, event.object_id, "failed")
