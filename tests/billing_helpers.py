"""Payouts, KYC and limits over one migrated database, for the billing tests (no server)."""

from __future__ import annotations

import secrets
from typing import Any

from yggdrasil import Database
from yggdrasil._config import LedgerConfig, PayoutsConfig
from yggdrasil.billing import (
    KycService,
    Ledger,
    Limits,
    Payouts,
    Posting,
    SandboxCollector,
    SandboxDisburser,
    SandboxPayoutMethods,
    user_account,
)


def uid() -> str:
    return f"u_{secrets.token_hex(6)}"


class Billing:
    """One instance's billing services; several over one database stand for several
    instances."""

    def __init__(self, db: Database, **payouts: Any) -> None:
        self.config = PayoutsConfig(**{"kyc_regions": [], **payouts})
        self.collector = SandboxCollector()
        self.limits = Limits(db, self.config, collector=self.collector, currency="EUR", mailer=None)
        self.ledger = Ledger(db, LedgerConfig(), spending=self.limits)
        self.kyc = KycService(db, self.config)
        self.methods = SandboxPayoutMethods()
        self.disburser = SandboxDisburser()
        self.payouts = Payouts(
            db,
            self.ledger,
            self.config,
            kyc=self.kyc,
            methods=self.methods,
            disburser=self.disburser,
            collector=self.collector,
        )

    async def funded(self, amount: int) -> str:
        user = uid()
        await self.ledger.deposit(
            user, amount, key=f"f-{user}", provider="sandbox", provider_ref="r"
        )
        return user

    async def earn(self, payer: str, provider: str, amount: int) -> str:
        """``payer`` pays ``amount`` for a service of ``provider``: a hold captured entirely to
        their earnings. The capture's transaction id (for refunds)."""
        key = secrets.token_hex(6)
        hold = await self.ledger.hold(payer, amount, key=f"h-{key}")
        legs = [Posting(user_account(provider, "earnings"), amount)]
        capture = await self.ledger.capture(hold.hold_id, amount, key=f"c-{key}", to=legs)
        return capture.transaction_id
