"""The billing room's part of a user's data export and of deleting their account.

Export: balances, every entry of the user's accounts, holds, payouts and their settings, KYC
status (with the reference the user gave), spending limits, alerts and top-ups.

Deletion (inside the accounts room's deletion unit): open holds are released, the user's
choices (payout settings, netting, KYC, spending limits, alerts, top-ups) are deleted, and the
rows the books need are **pseudonymized, not deleted**: their ``user_id`` becomes a fresh
random pseudonym, the same in every table, so the ledger still adds up and verifies. Amounts and
account names are never changed (the entries are immutable); an account name keeps the old
random id, which after the deletion names a users row with no e-mail and no name.
"""

from __future__ import annotations

from typing import Any

from .._config import PayoutsConfig
from .._ids import new_id, now_ms
from ..store import Tx
from ._kyc import kyc_of
from ._ledger import Ledger, _balances_of
from ._methods import open_method_fields
from ._subscription_leases import end_subscriptions_of_user

_PSEUDONYMIZED = (
    "ledger_transactions",
    "ledger_entries",
    "ledger_holds",
    "ledger_refundables",
    "payouts",
    "payout_runs",
)


class BillingData:
    """What the accounts room calls (through the composition) on export and deletion."""

    def __init__(self, ledger: Ledger, config: PayoutsConfig) -> None:
        self.ledger = ledger
        self.config = config

    async def export(self, tx: Tx, user_id: str) -> dict[str, Any]:
        have = await _balances_of(tx, user_id)
        entries = await tx.fetch(
            "SELECT e.entry_id, e.txn_id, t.kind, e.account, e.amount, e.created_at"
            " FROM ledger_entries e JOIN ledger_transactions t ON t.txn_id = e.txn_id"
            " WHERE e.user_id = $1 ORDER BY e.entry_id",
            user_id,
        )
        holds = await tx.fetch(
            "SELECT hold_id, purpose, amount, captured, released, status, created_at,"
            " expires_at, closed_at FROM ledger_holds WHERE user_id = $1 ORDER BY created_at",
            user_id,
        )
        payouts = await tx.fetch(
            "SELECT payout_id, amount, currency, status, trigger, period, provider,"
            " transaction_id, settled_receivable, reference, failure, reversal_id, created_at,"
            " updated_at FROM payouts WHERE user_id = $1 ORDER BY created_at",
            user_id,
        )
        settings = await tx.fetchrow(
            "SELECT frequency, minimum, automatic, updated_at FROM payout_settings"
            " WHERE user_id = $1",
            user_id,
        )
        limits = await tx.fetchrow(
            "SELECT monthly_limit, thresholds, topup_below, topup_amount, topup_max_per_month"
            " FROM spending_limits WHERE user_id = $1",
            user_id,
        )
        alerts = await tx.fetch(
            "SELECT month, threshold, spent, created_at FROM spending_alerts WHERE user_id = $1"
            " ORDER BY month, threshold",
            user_id,
        )
        topups = await tx.fetch(
            "SELECT month, n, amount, status, transaction_id, created_at FROM topups"
            " WHERE user_id = $1 ORDER BY month, n",
            user_id,
        )
        vault = self.ledger.db.vault
        kyc = await kyc_of(tx, self.config, user_id, vault)
        sealed_methods = await tx.fetch(
            "SELECT method_id, provider, kind, payer, payout, status, default_payer,"
            " default_payout, label, brand, last4, exp_month, exp_year, country, email_masked,"
            " test_mode, created_at FROM payment_methods WHERE user_id = $1 ORDER BY created_at",
            user_id,
        )
        methods = [open_method_fields(row, vault) for row in sealed_methods]
        subscriptions = await tx.fetch(
            "SELECT * FROM subscriptions WHERE user_id = $1 ORDER BY created_at", user_id
        )
        invoices = await tx.fetch(
            "SELECT invoice_id, number, currency, total_cents, period_start, period_end,"
            " payment_provider, test_mode, issued_at FROM invoices WHERE user_id = $1"
            " ORDER BY issued_at",
            user_id,
        )
        return {
            "payment_methods": methods,
            "subscriptions": [
                {k: v for k, v in row.items() if k != "charge_key"} for row in subscriptions
            ],
            "invoices": invoices,
            "currency": self.ledger.config.currency,
            "balances": {**have, "receivable": -have["receivable"]},
            "entries": [
                {
                    **row,
                    "entry_id": str(row["entry_id"]),
                    "account": row["account"].rsplit(":", 1)[1],
                }
                for row in entries
            ],
            "holds": holds,
            "payouts": payouts,
            "payout_settings": settings,
            "spending_limits": limits,
            "spending_alerts": alerts,
            "topups": topups,
            "kyc": {
                "status": kyc.status,
                "required": kyc.required,
                "region": kyc.region,
                "reference": kyc.reference,
                "submitted_at": kyc.submitted_at,
                "decided_at": kyc.decided_at,
            },
        }

    async def forget(self, tx: Tx, user_id: str) -> None:
        await self.ledger.release_open_holds(tx, user_id)
        # No renewal charges a deleted account; its invoices stay (the law keeps them), its
        # payment methods (the providers' tokens) go.
        await end_subscriptions_of_user(tx, user_id, now_ms())
        await tx.execute("DELETE FROM payment_methods WHERE user_id = $1", user_id)
        for table in ("payout_settings", "ledger_netting", "kyc", "spending_limits"):
            await tx.execute(f"DELETE FROM {table} WHERE user_id = $1", user_id)
        await tx.execute("DELETE FROM spending_months WHERE user_id = $1", user_id)
        await tx.execute("DELETE FROM spending_alerts WHERE user_id = $1", user_id)
        await tx.execute("DELETE FROM topups WHERE user_id = $1", user_id)
        # Stored answers of the user's money requests name them; they go (a replay after the
        # deletion is refused with the token anyway).
        await tx.execute(
            "DELETE FROM idempotency_keys WHERE scope LIKE $1 ESCAPE '\\'", f"%:{_like(user_id)}"
        )
        pseudonym = new_id("gone")
        for table in _PSEUDONYMIZED:
            await tx.execute(
                f"UPDATE {table} SET user_id = $2 WHERE user_id = $1",
                user_id,
                pseudonym,
            )


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
