"""Subscriptions: one current subscription per user (history kept), subscribe, change plan with
proration, cancel at the period's end, resume.

A user without a current subscription is on ``free``. A current subscription is ``active``
(renewed at its period's end, or ended then when ``cancel_at_period_end``) or ``past_due`` (the
renewal charge failed; retried during the grace period, see ``_renewals``); an ended one stays
as history.

**One at a time per user.** Everything that charges or changes a user's subscription - a
request here, a renewal - first takes the user's lease (a row in ``subscription_leases``,
claimed by compare-and-set, so it works the same on SQLite and PostgreSQL and between
instances), reads the state, calls the :class:`Charger` outside any transaction, and then, in
ONE transaction, gives the lease back (refusing to write if another took it over meanwhile),
applies the change, issues the invoice and stores the request's answer. A crash in between
leaves the subscription as it was and the lease lapses; the rerun charges with the same derived
key, so the provider answers with the first charge rather than taking the money twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import msgspec
import trio

from .._config import SubscriptionsConfig
from .._errors import Invalid, YggdrasilError
from .._ids import new_id, now_ms
from ..store import Database, Row, Tx, append_audit
from ._charging import Charger, ChargeResult, SandboxCharger
from ._invoices import InvoiceLine, Invoices, issue_invoice
from ._plans import FREE, Plan, Plans, Proration, period_bounds, prorate
from ._renewals import Renewals
from ._subscription_leases import (
    LeaseLost,
    claim_lease,
    current_row,
    day,
    drop_lease,
    release_lease,
)
from ._subscription_requests import Finish, SubscriptionRequests, check_key

T = TypeVar("T")

Status = Literal["free", "active", "past_due", "canceled_at_period_end"]


# --------------------------------------------------------------------- errors


class SubscriptionConflict(YggdrasilError):
    status = 409
    code = "subscription_conflict"
    default_message = "the subscription is not in a state that allows this"


class AlreadySubscribed(SubscriptionConflict):
    code = "already_subscribed"
    default_message = "you have a subscription already: change its plan with PUT"


class NotSubscribed(SubscriptionConflict):
    code = "not_subscribed"
    default_message = "you have no subscription (you are on the free plan)"


class SamePlan(SubscriptionConflict):
    code = "same_plan"
    default_message = "the subscription is on that plan already"


class PastDue(SubscriptionConflict):
    code = "past_due"
    default_message = "the last renewal is not paid yet: the plan changes once it is"


class CancelPending(SubscriptionConflict):
    code = "canceled"
    default_message = "the subscription ends at the end of its period: resume it first"


class NotCanceled(SubscriptionConflict):
    code = "not_canceled"
    default_message = "the subscription is not canceled"


class PeriodOver(SubscriptionConflict):
    code = "period_over"
    default_message = "the period has ended: the subscription can no longer be resumed"


class BillingBusy(SubscriptionConflict):
    code = "billing_busy"
    default_message = "another billing operation of this account is running; try again shortly"


class FreePlan(Invalid):
    code = "free_plan"
    default_message = "the free plan needs no subscription: cancel the subscription to return to it"


class PaymentDeclined(YggdrasilError):
    status = 402
    code = "payment_declined"
    default_message = "the payment was declined"


class PaymentUnavailable(YggdrasilError):
    status = 503
    code = "payment_unavailable"
    default_message = "the payment provider did not answer; nothing was charged, try again"


# --------------------------------------------------------------------- views


class SubscriptionView(msgspec.Struct, frozen=True):
    """A user's subscription as they see it (``free`` without one)."""

    subscription_id: str | None
    plan: str
    plan_name: str
    status: Status
    price_cents: int
    currency: str
    period_start: int | None = None
    period_end: int | None = None
    renews_at: int | None = None
    """When the next period is charged (active, not canceled)."""
    ends_at: int | None = None
    """When a canceled subscription ends."""
    grace_until: int | None = None
    """Past due: the day it ends unless a retry succeeds."""
    next_retry_at: int | None = None
    due_cents: int | None = None
    """Past due: what the retries try to charge."""


class PlanSide(msgspec.Struct, frozen=True):
    plan: str
    plan_name: str
    price_cents: int


class PlanChange(msgspec.Struct, frozen=True):
    """The answer to a plan change (or its preview): the plans and prices before and after, and
    the proration's amounts."""

    preview: bool
    before: PlanSide
    after: PlanSide
    proration: Proration
    currency: str
    invoice_id: str | None
    subscription: SubscriptionView


class Subscribed(msgspec.Struct, frozen=True):
    subscription: SubscriptionView
    charged_cents: int
    invoice_id: str | None


def view(row: Row | None, plans: Plans) -> SubscriptionView:
    if row is None or row["state"] == "ended":
        free = plans.free
        return SubscriptionView(None, free.id, free.name, "free", 0, plans.currency)
    plan = plans.known(row["plan"])
    canceling = bool(row["cancel_at_period_end"])
    past_due = row["state"] == "past_due"
    status: Status = "past_due" if past_due else "canceled_at_period_end" if canceling else "active"
    return SubscriptionView(
        subscription_id=row["subscription_id"],
        plan=plan.id,
        plan_name=plan.name,
        status=status,
        price_cents=plan.price_cents,
        currency=plans.currency,
        period_start=row["period_start"],
        period_end=row["period_end"],
        renews_at=None if canceling or past_due else row["period_end"],
        ends_at=row["period_end"] if canceling and not past_due else None,
        grace_until=row["grace_until"] if past_due else None,
        next_retry_at=row["next_retry_at"] if past_due else None,
        due_cents=row["due_cents"] if past_due else None,
    )


# --------------------------------------------------------------------- units of work


def check_charge(result: ChargeResult) -> ChargeResult:
    if result.outcome == "declined":
        raise PaymentDeclined(result.message or None)
    if result.outcome == "unavailable":
        raise PaymentUnavailable()
    return result


# --------------------------------------------------------------------- the repository


class Subscriptions:
    """The subscription requests of users. Every method acts on the caller's own subscription
    (``user_id`` comes from the principal, never from the request)."""

    def __init__(
        self,
        db: Database,
        plans: Plans,
        charger: Charger,
        requests: SubscriptionRequests,
        config: SubscriptionsConfig,
        *,
        lease_ms: int,
        busy_wait_s: float = 5.0,
    ) -> None:
        self.db = db
        self.plans = plans
        self.charger = charger
        self.requests = requests
        self.lease_ms = lease_ms
        self._busy_wait_s = busy_wait_s
        self.invoices = Invoices(db)
        self.renewals = Renewals(db, plans, charger, config, lease_ms=lease_ms)
        """The renewal job over the same charger (see ``_renewals``)."""

    @classmethod
    def build(
        cls, db: Database, config: SubscriptionsConfig, charger: Charger | None = None
    ) -> Subscriptions:
        """The subscriptions of ``config`` over ``db``; ``charger`` defaults to the sandbox
        (test mode: no money moves)."""
        requests = SubscriptionRequests(
            db, lease_ms=config.lease_s * 1000, ttl_ms=config.request_ttl_s * 1000
        )
        return cls(
            db,
            Plans(config),
            charger or SandboxCharger(db),
            requests,
            config,
            lease_ms=config.lease_s * 1000,
        )

    async def current(self, user_id: str) -> SubscriptionView:
        return view(await self.db.read(lambda tx: current_row(tx, user_id)), self.plans)

    async def history(self, user_id: str, *, limit: int = 50) -> list[SubscriptionView]:
        """Every subscription of the user, newest first (ended ones show as ``free``)."""
        rows = await self.db.read(
            lambda tx: tx.fetch(
                "SELECT * FROM subscriptions WHERE user_id = $1 ORDER BY created_at DESC LIMIT $2",
                user_id,
                limit,
            )
        )
        return [view(row, self.plans) for row in rows]

    # ------------------------------------------------------------- requests

    async def subscribe(self, user_id: str, plan_id: str, *, key: str | None) -> Subscribed:
        """Subscribe to ``plan_id`` from ``free``: the first period (a calendar month from now)
        is charged at once. 402 declined, 409 already subscribed; 400 without a ``key``."""
        plan = self._paid_plan(plan_id)
        key = check_key(key)

        async def work(finish: Finish) -> Subscribed:
            return await self._leased(
                user_id, lambda token: self._subscribe(user_id, plan, key, token, finish)
            )

        return await self.requests.run(
            user_id, key, {"op": "subscribe", "plan": plan.id}, work, Subscribed
        )

    async def preview_change(self, user_id: str, plan_id: str) -> PlanChange:
        """What changing to ``plan_id`` now would cost or credit; changes nothing."""
        plan = self._paid_plan(plan_id)
        row = await self.db.read(lambda tx: current_row(tx, user_id))
        old, proration = self._proration(row, plan, now_ms())
        assert row is not None
        return self._change_answer(True, old, plan, proration, None, view(row, self.plans))

    async def change(self, user_id: str, plan_id: str, *, key: str | None) -> PlanChange:
        """Move the current subscription to ``plan_id`` at once, prorated (module docstring
        of ``_plans``); the period stays."""
        plan = self._paid_plan(plan_id)
        key = check_key(key)

        async def work(finish: Finish) -> PlanChange:
            return await self._leased(
                user_id, lambda token: self._change(user_id, plan, key, token, finish)
            )

        return await self.requests.run(
            user_id, key, {"op": "change", "plan": plan.id}, work, PlanChange
        )

    async def cancel(self, user_id: str, *, key: str | None) -> SubscriptionView:
        """End the subscription at the end of its period (nothing is refunded; it stays usable
        until then)."""
        key = check_key(key)

        async def work(finish: Finish) -> SubscriptionView:
            return await self._leased(
                user_id, lambda token: self._set_cancel(user_id, True, token, finish)
            )

        return await self.requests.run(user_id, key, {"op": "cancel"}, work, SubscriptionView)

    async def resume(self, user_id: str, *, key: str | None) -> SubscriptionView:
        """Undo a cancellation before the period ends: it renews again."""
        key = check_key(key)

        async def work(finish: Finish) -> SubscriptionView:
            return await self._leased(
                user_id, lambda token: self._set_cancel(user_id, False, token, finish)
            )

        return await self.requests.run(user_id, key, {"op": "resume"}, work, SubscriptionView)

    # ------------------------------------------------------------- inside the lease

    async def _subscribe(
        self, user_id: str, plan: Plan, key: str, token: str, finish: Finish
    ) -> Subscribed:
        if await self.db.read(lambda tx: current_row(tx, user_id)) is not None:
            raise AlreadySubscribed()
        at = now_ms()
        start, end = period_bounds(at, 0)
        charge: ChargeResult | None = None
        if plan.price_cents > 0:
            charge = check_charge(
                await self.charger.charge_subscription(
                    user_id,
                    plan.price_cents,
                    key=f"subscribe:{user_id}:{key}",
                    description=f"{plan.name}, {day(start)} to {day(end)}",
                )
            )

        async def apply(tx: Tx) -> Subscribed:
            await release_lease(tx, user_id, token)
            subscription_id = new_id("sub")
            await tx.execute(
                "INSERT INTO subscriptions (subscription_id, user_id, plan, state, anchor_at,"
                " period_index, period_start, period_end, created_at)"
                " VALUES ($1, $2, $3, 'active', $4, 0, $4, $5, $4)",
                subscription_id,
                user_id,
                plan.id,
                start,
                end,
            )
            invoice_id = None
            if charge is not None:
                line = InvoiceLine(
                    "subscription", f"{plan.name}, {day(start)} to {day(end)}", plan.price_cents
                )
                invoice = await issue_invoice(
                    tx,
                    user_id=user_id,
                    currency=self.plans.currency,
                    lines=[line],
                    at=at,
                    payment_provider=charge.provider,
                    payment_reference=charge.reference,
                    test_mode=charge.test_mode,
                    subscription_id=subscription_id,
                    period=(start, end),
                )
                invoice_id = invoice.invoice_id
            await append_audit(
                tx, user_id, "subscription.subscribe", subscription_id, {"plan": plan.id}
            )
            row = await current_row(tx, user_id)
            answer = Subscribed(view(row, self.plans), plan.price_cents, invoice_id)
            await finish(tx, answer)
            return answer

        return await self.db.write(apply)

    async def _change(
        self, user_id: str, plan: Plan, key: str, token: str, finish: Finish
    ) -> PlanChange:
        row = await self.db.read(lambda tx: current_row(tx, user_id))
        old, proration = self._proration(row, plan, now_ms())
        assert row is not None
        charge: ChargeResult | None = None
        what = f"{old.name} to {plan.name}, {day(proration.at)} to {day(proration.period_end)}"
        if proration.due_cents > 0:
            charge = check_charge(
                await self.charger.charge_subscription(
                    user_id, proration.due_cents, key=f"change:{user_id}:{key}", description=what
                )
            )
        elif proration.credited_cents > 0:
            charge = check_charge(
                await self.charger.credit(
                    user_id,
                    proration.credited_cents,
                    key=f"change-credit:{user_id}:{key}",
                    description=what,
                )
            )

        async def apply(tx: Tx) -> PlanChange:
            await release_lease(tx, user_id, token)
            changed = await tx.execute(
                "UPDATE subscriptions SET plan = $2 WHERE subscription_id = $1"
                " AND state = 'active' AND plan = $3",
                row["subscription_id"],
                plan.id,
                old.id,
            )
            if changed != 1:  # cannot happen while we hold the lease
                raise LeaseLost()
            lines = []
            if proration.credit_cents:
                lines.append(
                    InvoiceLine(
                        "proration_credit",
                        f"Unused part of {old.name}, {day(proration.at)} to"
                        f" {day(proration.period_end)}",
                        -proration.credit_cents,
                    )
                )
            if proration.charge_cents:
                lines.append(
                    InvoiceLine(
                        "proration_charge",
                        f"{plan.name}, {day(proration.at)} to {day(proration.period_end)}",
                        proration.charge_cents,
                    )
                )
            invoice_id = None
            if lines:
                invoice = await issue_invoice(
                    tx,
                    user_id=user_id,
                    currency=self.plans.currency,
                    lines=lines,
                    at=proration.at,
                    payment_provider=charge.provider if charge else "none",
                    payment_reference=charge.reference if charge else "",
                    test_mode=charge.test_mode if charge else False,
                    subscription_id=row["subscription_id"],
                    period=(proration.at, proration.period_end),
                )
                invoice_id = invoice.invoice_id
            await append_audit(
                tx,
                user_id,
                "subscription.change",
                row["subscription_id"],
                {
                    "from": old.id,
                    "to": plan.id,
                    "credit_cents": proration.credit_cents,
                    "charge_cents": proration.charge_cents,
                },
            )
            after = view(await current_row(tx, user_id), self.plans)
            answer = self._change_answer(False, old, plan, proration, invoice_id, after)
            await finish(tx, answer)
            return answer

        return await self.db.write(apply)

    async def _set_cancel(
        self, user_id: str, cancel: bool, token: str, finish: Finish
    ) -> SubscriptionView:
        async def apply(tx: Tx) -> SubscriptionView:
            await release_lease(tx, user_id, token)
            row = await current_row(tx, user_id)
            if row is None:
                raise NotSubscribed()
            if not cancel:
                if not row["cancel_at_period_end"]:
                    raise NotCanceled()
                if row["state"] != "active" or row["period_end"] <= now_ms():
                    raise PeriodOver()
            await tx.execute(
                "UPDATE subscriptions SET cancel_at_period_end = $2 WHERE subscription_id = $1",
                row["subscription_id"],
                int(cancel),
            )
            action = "subscription.cancel" if cancel else "subscription.resume"
            await append_audit(tx, user_id, action, row["subscription_id"])
            answer = view(await current_row(tx, user_id), self.plans)
            await finish(tx, answer)
            return answer

        return await self.db.write(apply)

    # ------------------------------------------------------------- helpers

    def _paid_plan(self, plan_id: str) -> Plan:
        plan = self.plans.get(plan_id)
        if plan.id == FREE:
            raise FreePlan()
        return plan

    def _proration(self, row: Row | None, plan: Plan, at: int) -> tuple[Plan, Proration]:
        if row is None:
            raise NotSubscribed()
        if row["state"] == "past_due":
            raise PastDue()
        if row["cancel_at_period_end"]:
            raise CancelPending()
        old = self.plans.known(row["plan"])
        if old.id == plan.id:
            raise SamePlan()
        return old, prorate(
            old.price_cents, plan.price_cents, row["period_start"], row["period_end"], at
        )

    def _change_answer(
        self,
        preview: bool,
        old: Plan,
        new: Plan,
        proration: Proration,
        invoice_id: str | None,
        subscription: SubscriptionView,
    ) -> PlanChange:
        return PlanChange(
            preview=preview,
            before=PlanSide(old.id, old.name, old.price_cents),
            after=PlanSide(new.id, new.name, new.price_cents),
            proration=proration,
            currency=self.plans.currency,
            invoice_id=invoice_id,
            subscription=subscription,
        )

    async def _leased(self, user_id: str, body: Callable[[str], Awaitable[T]]) -> T:
        """``body(token)`` while holding the user's billing lease (waiting up to
        ``busy_wait_s`` for another holder, then :class:`BillingBusy`). ``body`` gives the lease
        back in its applying transaction; if it raises, the lease is dropped here."""
        token = None
        with trio.move_on_after(self._busy_wait_s):
            while True:
                token = await claim_lease(self.db, user_id, self.lease_ms)
                if token is not None:
                    break
                await trio.sleep(0.05)
        if token is None:
            raise BillingBusy()
        try:
            return await body(token)
        except BaseException:
            await drop_lease(self.db, user_id, token)
            raise
