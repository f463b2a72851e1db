"""The renewal job: at a period's end, charge the next period (and a pay-per-token plan's usage
of the period that ended), retry on the schedule during the grace period, then end the
subscription (the user is on ``free`` again).

**Exactly once.** Any number of instances may run the job at once. Each due subscription is
taken under its user's billing lease (``claim_lease``: compare-and-set on one row), re-read
under it, and the charge's key is written to the subscription row *before* the charge is made:
``renewal:<subscription id>:<renewal date>:<attempt>``. A second instance finds the lease taken
and skips; a rerun after a crash (the lease lapsed) finds the key in flight and repeats it, and
the charger answers with the first outcome instead of charging again. The outcome is written,
with the invoice, in the transaction that gives the lease back, and only if the lease is still
this instance's. A retry after a decline is a new attempt with a new key (a provider would
answer a repeated key with the first decline).

Time is an input: :meth:`Renewals.run_due` takes ``now`` (ms); :func:`renew_forever` passes the
clock.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import msgspec
import trio

from .._config import SubscriptionsConfig
from .._errors import StoreUnavailable
from .._ids import now_ms
from ..store import Database, Row, Tx, append_audit
from ._charging import Charger, ChargeResult
from ._invoices import InvoiceLine, issue_invoice
from ._plans import Plans, period_bounds
from ._subscription_leases import LeaseLost, claim_lease, day, drop_lease, release_lease
from ._usage import metered_tokens

log = logging.getLogger(__name__)


class _Due(msgspec.Struct, frozen=True):
    """What a renewal collects, kept on the row (``due_lines``) until it is paid or given up."""

    lines: list[InvoiceLine]
    period: tuple[int, int]
    """The period the invoice names."""


class _Charge(msgspec.Struct, frozen=True):
    key: str
    amount_cents: int
    description: str


_due = msgspec.json.Decoder(_Due)


class Renewals:
    def __init__(
        self,
        db: Database,
        plans: Plans,
        charger: Charger,
        config: SubscriptionsConfig,
        *,
        lease_ms: int | None = None,
        batch: int = 100,
    ) -> None:
        self._db = db
        self._plans = plans
        self.charger = charger
        self._grace_ms = config.grace_s * 1000
        self._retries_ms = [s * 1000 for s in config.retry_after_s]
        self._lease_ms = config.lease_s * 1000 if lease_ms is None else lease_ms
        self._batch = batch

    async def due(self, now: int) -> list[tuple[str, str]]:
        """``(subscription_id, user_id)`` of what is due at ``now``, oldest first."""
        rows = await self._db.read(
            lambda tx: tx.fetch(
                "SELECT subscription_id, user_id FROM subscriptions"
                " WHERE (state = 'active' AND period_end <= $1)"
                " OR (state = 'past_due' AND (next_retry_at <= $1 OR grace_until <= $1"
                " OR charge_key IS NOT NULL))"
                " ORDER BY period_end LIMIT $2",
                now,
                self._batch,
            )
        )
        return [(row["subscription_id"], row["user_id"]) for row in rows]

    async def run_due(self, now: int | None = None) -> Counter[str]:
        """Renew, retry or end everything due at ``now`` (default: the clock); how many of each
        outcome (``renewed``, ``ended``, ``past_due``, ``skipped``, ``busy``,
        ``unavailable``)."""
        at = now_ms() if now is None else now
        outcomes: Counter[str] = Counter()
        for subscription_id, user_id in await self.due(at):
            outcomes[await self.renew(subscription_id, user_id, at)] += 1
        return outcomes

    async def renew(self, subscription_id: str, user_id: str, now: int) -> str:
        """One subscription, under its user's lease; the outcome (see :meth:`run_due`)."""
        token = await claim_lease(self._db, user_id, self._lease_ms)
        if token is None:
            return "busy"
        try:
            step = await self._db.write(
                lambda tx: self._prepare(tx, subscription_id, user_id, token, now)
            )
            if isinstance(step, str):
                return step
            result = await self.charger.charge_subscription(
                user_id, step.amount_cents, key=step.key, description=step.description
            )
            if result.outcome == "unavailable":
                # The key stays in flight on the row: the next run repeats it.
                await drop_lease(self._db, user_id, token)
                return "unavailable"
            return await self._db.write(
                lambda tx: self._settle(tx, subscription_id, user_id, token, now, step, result)
            )
        except LeaseLost:
            return "busy"
        except BaseException:
            await drop_lease(self._db, user_id, token)
            raise

    # ------------------------------------------------------------- units of work

    async def _prepare(
        self, tx: Tx, subscription_id: str, user_id: str, token: str, now: int
    ) -> str | _Charge:
        """Under the lease: what to charge (with its key, written to the row first), or the
        outcome when nothing is to be charged (the lease then given back here)."""
        holder = await tx.fetchval(
            "SELECT token FROM subscription_leases WHERE user_id = $1", user_id
        )
        if holder != token:
            raise LeaseLost()
        row = await tx.fetchrow(
            "SELECT * FROM subscriptions WHERE subscription_id = $1 AND user_id = $2"
            " AND state <> 'ended'",
            subscription_id,
            user_id,
        )
        if row is None:
            await release_lease(tx, user_id, token)
            return "skipped"
        if row["charge_key"] is not None:  # a charge in flight when its holder stopped
            due = _due.decode(row["due_lines"])
            return _Charge(row["charge_key"], row["due_cents"], _describe(due))
        if row["state"] == "active":
            if row["period_end"] > now:
                await release_lease(tx, user_id, token)
                return "skipped"
            due = await self._renewal(tx, row)
            amount = sum(line.amount_cents for line in due.lines)
            if amount == 0:
                outcome = await self._paid(tx, row, due, None, now)
                await release_lease(tx, user_id, token)
                return outcome
            attempt = 1
        else:  # past due
            if now >= row["grace_until"]:
                await self._give_up(tx, row, now)
                await release_lease(tx, user_id, token)
                return "ended"
            if row["next_retry_at"] > now:
                await release_lease(tx, user_id, token)
                return "skipped"
            due = _due.decode(row["due_lines"])
            amount = row["due_cents"]
            attempt = row["attempts"] + 1
        due_since = row["due_since"] if row["due_since"] is not None else row["period_end"]
        key = f"renewal:{subscription_id}:{due_since}:{attempt}"
        await tx.execute(
            "UPDATE subscriptions SET due_cents = $2, due_lines = $3, due_since = $4,"
            " charge_key = $5 WHERE subscription_id = $1",
            subscription_id,
            amount,
            msgspec.json.encode(due).decode(),
            due_since,
            key,
        )
        return _Charge(key, amount, _describe(due))

    async def _renewal(self, tx: Tx, row: Row) -> _Due:
        """What the renewal of ``row`` (active, at its period's end) collects: the next
        period's fee (unless it ends now) and the metered tokens of the period that ended."""
        plan = self._plans.known(row["plan"])
        lines: list[InvoiceLine] = []
        start, end = period_bounds(row["anchor_at"], row["period_index"] + 1)
        period = (start, end)
        if not row["cancel_at_period_end"] and plan.price_cents:
            lines.append(
                InvoiceLine(
                    "subscription", f"{plan.name}, {day(start)} to {day(end)}", plan.price_cents
                )
            )
        tokens = await metered_tokens(tx, row["subscription_id"], row["period_index"])
        if tokens:
            lines.append(
                InvoiceLine(
                    "usage",
                    f"Cloud-LLM tokens, {day(row['period_start'])} to {day(row['period_end'])},"
                    f" at {plan.token_price_cents} cents per 1,000",
                    plan.usage_cents(tokens),
                    quantity=tokens,
                )
            )
        if not any(line.kind == "subscription" for line in lines):
            period = (row["period_start"], row["period_end"])  # the usage's period
        return _Due(lines, period)

    async def _settle(
        self,
        tx: Tx,
        subscription_id: str,
        user_id: str,
        token: str,
        now: int,
        step: _Charge,
        result: ChargeResult,
    ) -> str:
        await release_lease(tx, user_id, token)
        row = await tx.fetchrow(
            "SELECT * FROM subscriptions WHERE subscription_id = $1 AND charge_key = $2",
            subscription_id,
            step.key,
        )
        if row is None:  # cannot happen while we held the lease
            raise LeaseLost()
        due = _due.decode(row["due_lines"])
        if result.ok:
            return await self._paid(tx, row, due, result, now)
        attempts = row["attempts"] + 1
        due_since = row["due_since"]
        grace_until = row["grace_until"] or due_since + self._grace_ms
        retry = (
            due_since + self._retries_ms[attempts - 1]
            if attempts - 1 < len(self._retries_ms)
            else grace_until
        )
        index, start, end = row["period_index"], row["period_start"], row["period_end"]
        if row["state"] == "active" and not row["cancel_at_period_end"]:
            index += 1
            start, end = period_bounds(row["anchor_at"], index)
        await tx.execute(
            "UPDATE subscriptions SET state = 'past_due', attempts = $2, grace_until = $3,"
            " next_retry_at = $4, charge_key = NULL, period_index = $5, period_start = $6,"
            " period_end = $7 WHERE subscription_id = $1",
            subscription_id,
            attempts,
            grace_until,
            min(retry, grace_until),
            index,
            start,
            end,
        )
        await append_audit(
            tx,
            user_id,
            "subscription.payment_failed",
            subscription_id,
            {"attempt": attempts, "amount_cents": row["due_cents"]},
        )
        return "past_due"

    async def _paid(
        self, tx: Tx, row: Row, due: _Due, result: ChargeResult | None, now: int
    ) -> str:
        """The renewal is paid (or cost nothing): invoice, then the next period or the end."""
        subscription_id, user_id = row["subscription_id"], row["user_id"]
        if due.lines:
            assert result is not None
            await issue_invoice(
                tx,
                user_id=user_id,
                currency=self._plans.currency,
                lines=due.lines,
                at=now,
                payment_provider=result.provider,
                payment_reference=result.reference,
                test_mode=result.test_mode,
                subscription_id=subscription_id,
                period=due.period,
            )
        if row["cancel_at_period_end"]:
            await self._end(tx, row, now, "canceled")
            return "ended"
        index, start, end = row["period_index"], row["period_start"], row["period_end"]
        if row["state"] == "active":
            index += 1
            start, end = period_bounds(row["anchor_at"], index)
        await tx.execute(
            "UPDATE subscriptions SET state = 'active', period_index = $2, period_start = $3,"
            " period_end = $4, due_cents = NULL, due_lines = NULL, due_since = NULL,"
            " charge_key = NULL, attempts = 0, grace_until = NULL, next_retry_at = NULL"
            " WHERE subscription_id = $1",
            subscription_id,
            index,
            start,
            end,
        )
        await append_audit(tx, user_id, "subscription.renew", subscription_id, {"period": index})
        return "renewed"

    async def _give_up(self, tx: Tx, row: Row, now: int) -> None:
        """The grace period is over without a payment: the user is on ``free``."""
        await self._end(tx, row, now, "payment_failed")

    @staticmethod
    async def _end(tx: Tx, row: Row, now: int, reason: str) -> None:
        await tx.execute(
            "UPDATE subscriptions SET state = 'ended', ended_at = $2, end_reason = $3,"
            " charge_key = NULL, next_retry_at = NULL WHERE subscription_id = $1",
            row["subscription_id"],
            now,
            reason,
        )
        await append_audit(
            tx, row["user_id"], "subscription.end", row["subscription_id"], {"reason": reason}
        )


def _describe(due: _Due) -> str:
    return "; ".join(line.description for line in due.lines)


async def renew_forever(
    renewals: Renewals,
    interval_s: float,
    *,
    purges: list[Callable[[int], Awaitable[int]]] | None = None,
) -> None:
    """The job: :meth:`Renewals.run_due` every ``interval_s`` until cancelled, and each of
    ``purges(now)`` (expired idempotency keys). An unreachable store only delays it; any other
    error is logged and the next round tries again (an error boundary: one bad row does not
    stop renewals)."""
    while True:
        try:
            outcomes = await renewals.run_due()
            if outcomes:
                log.info("renewals: %s", dict(outcomes))
            for purge in purges or []:
                await purge(now_ms())
        except StoreUnavailable as exc:
            log.info("renewals wait for the store: %s", exc.message)
        except Exception:
            log.exception("renewal round failed")
        await trio.sleep(interval_s)
