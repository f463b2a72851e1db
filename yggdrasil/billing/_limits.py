"""Spending limits, budget alerts and auto-top-up: the ledger's :class:`~._ledger.SpendingHook`.

What a user spends in a calendar month (UTC) is counted in ``spending_months`` inside the write
unit of each hold and charge (releases and refunds count back), by one upsert that returns the
new total: past the user's monthly limit the operation is refused with 402 ``spending_limit``
and nothing of it is written. Concurrent operations serialize on that row, so together they
never pass the limit either.

Once an operation has committed (:meth:`Limits.after_spending`):

- each alert threshold (a percentage of the limit) the month's spending has reached is recorded
  once per month in ``spending_alerts`` and mailed to the user;
- when the balance is below the user's auto-top-up threshold, the n-th top-up of the month is
  claimed in ``topups`` and collected through the :class:`~._seam.Collector` with the key
  ``auto-topup:<month>:<n>`` (so a retry after a crash collects it once), at most the user's
  ``max_per_month`` times a month.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .._config import PayoutsConfig
from .._errors import Invalid, YggdrasilError
from .._ids import now_ms
from .._mail import Mail, Mailer
from ..store import Database, Tx, from_json, to_json
from ._money import check_cents
from ._seam import Collector

if TYPE_CHECKING:
    from ._ledger import Ledger

log = logging.getLogger(__name__)

EmailOf = Callable[[str], Awaitable[str | None]]
"""The user's e-mail address for budget alerts (``None``: none, e.g. a deleted account)."""

MAX_THRESHOLDS = 10


class SpendingLimitReached(YggdrasilError):
    status = 402
    code = "spending_limit"
    default_message = "this would take you past your monthly spending limit"


class AutoTopup(msgspec.Struct, frozen=True):
    below: int
    """When a spending operation leaves the balance below this many cents..."""
    amount: int
    """...this many are collected through the payment provider onto the balance..."""
    max_per_month: int
    """...at most this many times a calendar month."""


class SpendingLimits(msgspec.Struct, frozen=True):
    month: str
    """The calendar month (UTC) ``spent`` is about, ``YYYY-MM``."""
    spent: int
    """Held and charged this month, less what was released or refunded."""
    monthly_limit: int | None
    """No more than this may be spent a month (``None``: no limit)."""
    alert_thresholds: list[int]
    """Percentages of the limit at which an e-mail is sent, once a month each."""
    auto_topup: AutoTopup | None
    alerts_sent: list[int]
    """The thresholds already reached (and mailed) this month."""
    topups_this_month: int


def month_of(ms: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(ms / 1000))


def check_thresholds(values: Any) -> list[int]:
    if not isinstance(values, list) or len(values) > MAX_THRESHOLDS:
        raise Invalid(f"alert_thresholds is a list of at most {MAX_THRESHOLDS} percentages")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise Invalid("an alert threshold is a whole percentage from 1 to 1000")
    return sorted(set(values))


class Limits:
    """The users' spending limits over one database (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        config: PayoutsConfig,
        *,
        collector: Collector,
        currency: str,
        mailer: Mailer | None = None,
        email_of: EmailOf | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.collector = collector
        self.currency = currency
        self.mailer = mailer
        self.email_of = email_of

    # ------------------------------------------------------------------- the user's choices

    async def get(self, user_id: str) -> SpendingLimits:
        month = month_of(now_ms())

        async def read(tx: Tx) -> SpendingLimits:
            return await self._read(tx, user_id, month)

        return await self.db.read(read)

    async def _read(self, tx: Tx, user_id: str, month: str) -> SpendingLimits:
        row = await tx.fetchrow("SELECT * FROM spending_limits WHERE user_id = $1", user_id)
        spent = await tx.fetchval(
            "SELECT spent FROM spending_months WHERE user_id = $1 AND month = $2", user_id, month
        )
        alerts = await tx.fetch(
            "SELECT threshold FROM spending_alerts WHERE user_id = $1 AND month = $2"
            " ORDER BY threshold",
            user_id,
            month,
        )
        topups = await tx.fetchval(
            "SELECT COUNT(*) FROM topups WHERE user_id = $1 AND month = $2 AND status = 'done'",
            user_id,
            month,
        )
        topup = None
        if row is not None and row["topup_amount"] is not None:
            topup = AutoTopup(row["topup_below"], row["topup_amount"], row["topup_max_per_month"])
        return SpendingLimits(
            month=month,
            spent=int(spent or 0),
            monthly_limit=None if row is None else row["monthly_limit"],
            alert_thresholds=(
                list(self.config.alert_thresholds) if row is None else from_json(row["thresholds"])
            ),
            auto_topup=topup,
            alerts_sent=[int(a["threshold"]) for a in alerts],
            topups_this_month=int(topups or 0),
        )

    async def set(
        self,
        user_id: str,
        *,
        monthly_limit: int | None,
        alert_thresholds: list[int] | None,
        auto_topup: AutoTopup | None,
    ) -> SpendingLimits:
        """Replace the user's choices (``alert_thresholds`` ``None``: the defaults). Amounts
        are checked as cents; a limit below what was spent this month is fine (nothing more
        can be spent this month)."""
        if monthly_limit is not None:
            check_cents(monthly_limit, field="monthly_limit")
        thresholds = check_thresholds(
            list(self.config.alert_thresholds) if alert_thresholds is None else alert_thresholds
        )
        if auto_topup is not None:
            check_cents(auto_topup.below, field="auto_topup.below")
            check_cents(auto_topup.amount, field="auto_topup.amount")
            most = self.config.max_topups_per_month
            times = auto_topup.max_per_month
            if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= most:
                raise Invalid(f"auto_topup.max_per_month must be from 1 to {most}")
        month = month_of(now_ms())

        async def work(tx: Tx) -> SpendingLimits:
            await tx.execute(
                "INSERT INTO spending_limits (user_id, monthly_limit, thresholds, topup_below,"
                " topup_amount, topup_max_per_month, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id) DO UPDATE"
                " SET monthly_limit = excluded.monthly_limit, thresholds = excluded.thresholds,"
                " topup_below = excluded.topup_below, topup_amount = excluded.topup_amount,"
                " topup_max_per_month = excluded.topup_max_per_month,"
                " updated_at = excluded.updated_at",
                user_id,
                monthly_limit,
                to_json(thresholds),
                None if auto_topup is None else auto_topup.below,
                None if auto_topup is None else auto_topup.amount,
                0 if auto_topup is None else auto_topup.max_per_month,
                now_ms(),
            )
            return await self._read(tx, user_id, month)

        return await self.db.write(work)

    # ------------------------------------------------------------------- the ledger's hook

    async def spend(self, tx: Tx, user_id: str, amount: int) -> None:
        month = month_of(now_ms())
        spent = int(
            await tx.fetchval(
                "INSERT INTO spending_months (user_id, month, spent) VALUES ($1, $2, $3)"
                " ON CONFLICT (user_id, month) DO UPDATE"
                " SET spent = spending_months.spent + excluded.spent RETURNING spent",
                user_id,
                month,
                amount,
            )
        )
        limit = await tx.fetchval(
            "SELECT monthly_limit FROM spending_limits WHERE user_id = $1", user_id
        )
        if limit is not None and spent > limit:
            left = max(int(limit) - (spent - amount), 0)
            raise SpendingLimitReached(
                f"your monthly spending limit is {limit} cents; {left} cents are left this month"
            )

    async def unspend(self, tx: Tx, user_id: str, amount: int) -> None:
        await tx.execute(
            "UPDATE spending_months SET spent = CASE WHEN spent > $3 THEN spent - $3 ELSE 0 END"
            " WHERE user_id = $1 AND month = $2",
            user_id,
            month_of(now_ms()),
            amount,
        )

    async def after_spending(self, ledger: Ledger, user_id: str) -> None:
        """Budget alerts and auto-top-up once a spending operation committed; their failures
        (a declined top-up, an unreachable store, a full mail queue) are logged, never raised:
        the operation itself succeeded."""
        try:
            await self.send_alerts(user_id)
            await self.top_up(ledger, user_id)
        except YggdrasilError as exc:
            log.warning("after spending of %s: %s (%s)", user_id, exc.code, exc)

    # ------------------------------------------------------------------- alerts

    async def send_alerts(self, user_id: str) -> list[int]:
        """Record each threshold the month's spending reached for the first time, and mail
        them; the thresholds recorded now."""
        at = now_ms()
        month = month_of(at)

        async def work(tx: Tx) -> tuple[list[int], int, int]:
            row = await tx.fetchrow(
                "SELECT monthly_limit, thresholds FROM spending_limits WHERE user_id = $1",
                user_id,
            )
            if row is None or row["monthly_limit"] is None:
                return [], 0, 0
            limit = int(row["monthly_limit"])
            spent = int(
                await tx.fetchval(
                    "SELECT spent FROM spending_months WHERE user_id = $1 AND month = $2",
                    user_id,
                    month,
                )
                or 0
            )
            reached = []
            for threshold in from_json(row["thresholds"]):
                if spent * 100 < threshold * limit:
                    continue
                inserted = await tx.execute(
                    "INSERT INTO spending_alerts (user_id, month, threshold, spent, created_at)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    user_id,
                    month,
                    threshold,
                    spent,
                    at,
                )
                if inserted == 1:
                    reached.append(int(threshold))
            return reached, spent, limit

        reached, spent, limit = await self.db.write(work)
        if reached and self.mailer is not None and self.email_of is not None:
            address = await self.email_of(user_id)
            if address is not None:
                top = max(reached)
                self.mailer.submit(
                    Mail(
                        to=address,
                        subject=f"Budget alert: {top} % of your monthly spending limit",
                        body=(
                            f"You have spent {_money(spent)} {self.currency} of your monthly"
                            f" spending limit of {_money(limit)} {self.currency} in {month}"
                            f" ({top} %).\n"
                        ),
                    )
                )
        return reached

    # ------------------------------------------------------------------- auto-top-up

    async def top_up(self, ledger: Ledger, user_id: str) -> int:
        """The auto-top-up, if the user has one and their balance is below its threshold; the
        cents added (0 when none was due or the month's top-ups are used up)."""
        limits = await self.get(user_id)
        topup = limits.auto_topup
        if topup is None:
            return 0
        if (await ledger.balances(user_id)).balance >= topup.below:
            return 0
        month = limits.month

        async def claim(tx: Tx) -> tuple[int, int] | None:
            open_one = await tx.fetchrow(
                "SELECT n, amount FROM topups WHERE user_id = $1 AND month = $2"
                " AND status = 'claimed' ORDER BY n LIMIT 1",
                user_id,
                month,
            )
            if open_one is not None:  # claimed by a run that did not finish: the same key again
                return int(open_one["n"]), int(open_one["amount"])
            count = int(
                await tx.fetchval(
                    "SELECT COUNT(*) FROM topups WHERE user_id = $1 AND month = $2",
                    user_id,
                    month,
                )
            )
            if count >= topup.max_per_month:
                return None
            inserted = await tx.execute(
                "INSERT INTO topups (user_id, month, n, amount, status, created_at)"
                " VALUES ($1, $2, $3, $4, 'claimed', $5) ON CONFLICT DO NOTHING",
                user_id,
                month,
                count + 1,
                topup.amount,
                now_ms(),
            )
            return (count + 1, topup.amount) if inserted == 1 else None

        claimed = await self.db.write(claim)
        if claimed is None:
            return 0
        n, amount = claimed
        deposit = await ledger.process(
            user_id,
            amount,
            key=f"auto-topup:{month}:{n}",
            collector=self.collector,
            currency=ledger.config.currency,
        )

        async def done(tx: Tx) -> None:
            await tx.execute(
                "UPDATE topups SET status = 'done', transaction_id = $4"
                " WHERE user_id = $1 AND month = $2 AND n = $3",
                user_id,
                month,
                n,
                deposit.transaction_id,
            )

        await self.db.write(done)
        log.info("auto-top-up %d of %s for %s: %d cents", n, month, user_id, amount)
        return amount


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"
