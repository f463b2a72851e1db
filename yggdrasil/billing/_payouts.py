"""Payouts of earnings: the users' choices, manual requests, and the job that pays out
automatically, exactly once per user and period even with several instances.

A payout is two steps:

1. **Booking**: the ledger's payout postings (earnings and payable money to
   ``external:<provider>``, what the user owes settled first) and the payout's row, status
   ``pending``, in ONE write unit. For the automatic job the same unit inserts the claim of
   ``(user, period)`` in ``payout_runs``; its primary key makes a second instance's claim (which
   waits for the first one's commit on PostgreSQL) insert nothing, so each period is paid once.
2. **Sending**: the :class:`~._seam.Disburser` is asked with the key ``payout:<payout_id>``, the
   same for every retry, after a compare-and-set lease on the row (``lease_until``) that gives the
   call to one instance at a time. Paid: the row becomes ``paid`` with the provider's reference.
   Declined for good (:class:`~._seam.PayoutDeclined`), or unreachable ``payouts.max_attempts``
   times: the row becomes ``failed`` and a new reversing transaction gives the money back to the
   accounts it came from (entries are never changed). Unreachable before that
   (:class:`~._seam.PayoutUnreachable`), or the instance died mid-call: it stays ``pending`` and
   is sent again with the same key once the lease has passed.

A payout is never negative: what the user owes (a refund after an earlier payout, kept in their
receivable) is settled from the earnings first, and only what is left (at least the user's
minimum) is paid out. With netting on, the job first settles the debt from the earnings (the
ledger's :meth:`~._ledger.Ledger.net`) and, if earnings do not cover it, collects only the
difference through the :class:`~._seam.Collector`, once per period.

Payouts wait while the user's KYC is required and not verified, or while they have no verified
payout method; the money stays in the earnings and the list of payouts says why.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import msgspec
import trio

from .._config import PayoutsConfig
from .._errors import Invalid, NotFound, StoreUnavailable, YggdrasilError
from .._ids import new_id, now_ms
from ..store import MAX_PAGE, Database, Row, Tx, append_audit, decode_cursor, encode_cursor
from ._idempotency import Codec, check_key, run_once, stored_answer, struct_codec
from ._kyc import KycRequired, KycService, kyc_of
from ._ledger import Ledger, _balances_of
from ._money import check_cents
from ._postings import Posting, external_account, owner_of, post, user_account
from ._seam import (
    Collector,
    Disburser,
    PayoutDeclined,
    PayoutMethod,
    PayoutMethods,
    PayoutUnreachable,
)

log = logging.getLogger(__name__)

Frequency = Literal["daily", "weekly", "monthly"]
PayoutStatus = Literal["pending", "paid", "failed"]
WaitReason = Literal["kyc_required", "payout_method_required", "manual", "below_minimum"]


class BelowMinimum(YggdrasilError):
    status = 409
    code = "below_minimum"
    default_message = "that is less than your payout minimum"


class PayoutMethodRequired(YggdrasilError):
    status = 409
    code = "payout_method_required"
    default_message = "add and verify a payout method first"


class PayoutSettings(msgspec.Struct, frozen=True):
    frequency: Frequency
    """How often earnings are paid out automatically (periods in UTC; ISO weeks)."""
    minimum: int
    """No payout below this many cents; the money waits in the earnings until it is reached."""
    automatic: bool
    """Paid out by the job each period; otherwise only on request (``POST /api/v1/payouts``)."""
    netting: bool
    """Earnings are first set against what is owed; only the difference is paid or charged."""


class PayoutRecord(msgspec.Struct, frozen=True):
    payout_id: str
    amount: int
    currency: str
    status: PayoutStatus
    trigger: Literal["manual", "automatic"]
    period: str | None
    provider: str
    transaction_id: str
    settled_receivable: int
    """Owed money settled from the earnings before this payout."""
    reference: str | None
    """The provider's reference of the transfer, once paid."""
    failure: str | None
    reversal_id: str | None
    """The transaction that gave the money back to the earnings, for a failed payout."""
    attempts: int
    created_at: int
    updated_at: int


class Waiting(msgspec.Struct, frozen=True):
    """Why earnings that could be paid out are not (yet)."""

    reason: WaitReason
    available: int
    message: str


class PayoutList(msgspec.Struct, frozen=True):
    items: list[PayoutRecord]
    next_cursor: str | None
    available: int
    """Cents that could be paid out now: earnings and payable money less what is owed."""
    waiting: Waiting | None


def period_of(frequency: Frequency, ms: int) -> str:
    day = time.gmtime(ms / 1000)
    if frequency == "daily":
        return time.strftime("d:%Y-%m-%d", day)
    if frequency == "weekly":
        return time.strftime("w:%G-W%V", day)
    return time.strftime("m:%Y-%m", day)


def _record(row: Row) -> PayoutRecord:
    return PayoutRecord(
        payout_id=row["payout_id"],
        amount=int(row["amount"]),
        currency=row["currency"],
        status=row["status"],
        trigger=row["trigger"],
        period=row["period"],
        provider=row["provider"],
        transaction_id=row["transaction_id"],
        settled_receivable=int(row["settled_receivable"]),
        reference=row["reference"],
        failure=row["failure"],
        reversal_id=row["reversal_id"],
        attempts=int(row["attempts"]),
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
    )


def available_of(have: dict[str, int]) -> int:
    """What a payout could take now: earnings and payable money less what is owed."""
    return max(have["earnings"] + have["payable"] + have["receivable"], 0)


class Payouts:
    """Payouts over one database (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        config: PayoutsConfig,
        *,
        kyc: KycService,
        methods: PayoutMethods,
        disburser: Disburser,
        collector: Collector,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.config = config
        self.kyc = kyc
        self.methods = methods
        self.disburser = disburser
        self.collector = collector
        self._id_codec: Codec = struct_codec(str)
        self.outcomes: dict[str, int] = {"paid": 0, "failed": 0, "retry": 0}
        """Payouts this object sent, by outcome (``yggdrasil_payout_attempts_total``)."""

    # ------------------------------------------------------------------- settings

    async def _settings(self, tx: Tx, user_id: str) -> PayoutSettings:
        row = await tx.fetchrow("SELECT * FROM payout_settings WHERE user_id = $1", user_id)
        netting = bool(
            await tx.fetchval("SELECT enabled FROM ledger_netting WHERE user_id = $1", user_id)
        )
        if row is None:
            config = self.config
            return PayoutSettings(config.default_frequency, config.default_minimum, True, netting)
        return PayoutSettings(
            row["frequency"], int(row["minimum"]), bool(row["automatic"]), netting
        )

    async def settings(self, user_id: str) -> PayoutSettings:
        async def read(tx: Tx) -> PayoutSettings:
            return await self._settings(tx, user_id)

        return await self.db.read(read)

    async def set_settings(
        self,
        user_id: str,
        *,
        frequency: Frequency | None = None,
        minimum: int | None = None,
        automatic: bool | None = None,
        netting: bool | None = None,
    ) -> PayoutSettings:
        """Change what is given; the rest stays. A minimum below ``payouts.minimum_floor`` is
        refused (422)."""
        if frequency is not None and frequency not in ("daily", "weekly", "monthly"):
            raise Invalid("frequency is daily, weekly or monthly")
        if minimum is not None:
            check_cents(minimum, field="minimum")
            if minimum < self.config.minimum_floor:
                raise Invalid(f"the payout minimum is at least {self.config.minimum_floor} cents")

        async def work(tx: Tx) -> PayoutSettings:
            now = await self._settings(tx, user_id)
            at = now_ms()
            await tx.execute(
                "INSERT INTO payout_settings (user_id, frequency, minimum, automatic, updated_at)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO UPDATE"
                " SET frequency = excluded.frequency, minimum = excluded.minimum,"
                " automatic = excluded.automatic, updated_at = excluded.updated_at",
                user_id,
                frequency or now.frequency,
                now.minimum if minimum is None else minimum,
                now.automatic if automatic is None else automatic,
                at,
            )
            if netting is not None:
                await tx.execute(
                    "INSERT INTO ledger_netting (user_id, enabled, updated_at)"
                    " VALUES ($1, $2, $3) ON CONFLICT (user_id) DO UPDATE"
                    " SET enabled = excluded.enabled, updated_at = excluded.updated_at",
                    user_id,
                    netting,
                    at,
                )
            return await self._settings(tx, user_id)

        return await self.db.write(work)

    # ------------------------------------------------------------------- reading

    async def get(self, user_id: str, payout_id: str) -> PayoutRecord:
        """One of the user's payouts; another user's is :class:`NotFound`, like a missing one."""

        async def read(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM payouts WHERE payout_id = $1 AND user_id = $2", payout_id, user_id
            )

        row = await self.db.read(read)
        if row is None:
            raise NotFound()
        return _record(row)

    async def list(self, user_id: str, *, cursor: str | None = None, limit: int = 50) -> PayoutList:
        """The user's payouts, newest first, with what could be paid out now and why it waits."""
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
        before = (2**62, "")
        if cursor is not None:
            decoded = decode_cursor(cursor)
            at, _, pid = (decoded or "").partition(":")
            if not at.isdigit() or len(at) > 18 or not pid:
                raise Invalid("malformed cursor")
            before = (int(at), pid)
        method = await self.methods.payout_method(user_id)

        async def read(tx: Tx) -> tuple[list[Row], int, Waiting | None]:
            rows = await tx.fetch(
                "SELECT * FROM payouts WHERE user_id = $1"
                " AND (created_at < $2 OR (created_at = $2 AND payout_id < $3))"
                " ORDER BY created_at DESC, payout_id DESC LIMIT $4",
                user_id,
                before[0],
                before[1],
                limit + 1,
            )
            available = available_of(await _balances_of(tx, user_id))
            waiting = await self._waiting(tx, user_id, available, method)
            return rows, available, waiting

        rows, available, waiting = await self.db.read(read)
        items = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        last = items[-1] if items else None
        next_cursor = (
            encode_cursor(f"{last.created_at}:{last.payout_id}") if more and last else None
        )
        return PayoutList(items, next_cursor, available, waiting)

    async def _waiting(
        self, tx: Tx, user_id: str, available: int, method: PayoutMethod | None
    ) -> Waiting | None:
        if available <= 0:
            return None
        kyc = await kyc_of(tx, self.config, user_id, self.db.vault)
        if kyc.blocks_payouts:
            return Waiting(
                "kyc_required", available, f"payouts wait for your KYC (it is {kyc.status})"
            )
        if method is None:
            return Waiting(
                "payout_method_required", available, "payouts wait for a verified payout method"
            )
        settings = await self._settings(tx, user_id)
        if available < settings.minimum:
            return Waiting(
                "below_minimum",
                available,
                f"payouts start at your minimum of {settings.minimum} cents",
            )
        if not settings.automatic:
            return Waiting("manual", available, "payouts are manual: request one")
        return None

    # ------------------------------------------------------------------- booking

    async def _book(
        self,
        tx: Tx,
        user_id: str,
        amount: int | None,
        method: PayoutMethod,
        *,
        trigger: Literal["manual", "automatic"],
        period: str | None,
    ) -> str | None:
        """Inside the caller's unit: the payout's postings and row; its id. ``amount`` ``None``:
        everything available, if it reaches the minimum (else ``None``, nothing written)."""
        if (await kyc_of(tx, self.config, user_id, self.db.vault)).blocks_payouts:
            raise KycRequired()
        settings = await self._settings(tx, user_id)
        have = await _balances_of(tx, user_id)
        available = available_of(have)
        wanted = available if amount is None else amount
        if wanted < settings.minimum:
            if amount is None:
                return None
            raise BelowMinimum(
                f"your payout minimum is {settings.minimum} cents; {available} are available"
            )
        payout_id = new_id("po")
        if period is not None:
            claimed = await tx.execute(
                "INSERT INTO payout_runs (user_id, period, outcome, payout_id, created_at)"
                " VALUES ($1, $2, 'booked', $3, $4) ON CONFLICT DO NOTHING",
                user_id,
                period,
                payout_id,
                now_ms(),
            )
            if claimed != 1:
                return None  # another instance paid this period out
        booked = await self.ledger.book_payout(
            tx, user_id, wanted, provider=method.provider, key=None, memo={"payout_id": payout_id}
        )
        at = now_ms()
        await tx.execute(
            "INSERT INTO payouts (payout_id, user_id, amount, currency, status, trigger, period,"
            " provider, method_id, transaction_id, settled_receivable, attempts, lease_until,"
            " created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, $10, 0, 0, $11, $11)",
            payout_id,
            user_id,
            wanted,
            self.ledger.config.currency,
            trigger,
            period,
            method.provider,
            method.method_id,
            booked.transaction_id,
            booked.settled_receivable,
            at,
        )
        detail = {"amount": wanted, "trigger": trigger}
        await append_audit(tx, user_id, "payout.book", payout_id, detail)
        return payout_id

    async def request(self, user_id: str, *, key: str, amount: int | None = None) -> PayoutRecord:
        """A manual payout of ``amount`` cents (``None``: everything available), keyed by
        ``key``: booked once, then sent; the answer is the payout as it is now (a replay of the
        key answers the same payout, as it is by then). 409 ``kyc_required``,
        ``payout_method_required``, ``below_minimum`` or ``insufficient_funds`` when it cannot
        be paid, and nothing is written."""
        check_key(key)
        if amount is not None:
            check_cents(amount)
        request: dict[str, Any] = {"amount": amount}
        scope = f"payouts.request:{user_id}"
        known = await stored_answer(
            self.db, scope=scope, key=key, request=request, codec=self._id_codec
        )
        if isinstance(known, str):
            payout_id = known
        else:
            method = await self.methods.payout_method(user_id)
            if method is None:
                raise PayoutMethodRequired()

            async def work(tx: Tx) -> str:
                async def book(tx: Tx) -> str:
                    booked = await self._book(
                        tx, user_id, amount, method, trigger="manual", period=None
                    )
                    if booked is None:  # nothing available that reaches the minimum
                        raise BelowMinimum()
                    return booked

                return await run_once(
                    tx,
                    scope=scope,
                    key=key,
                    request=request,
                    work=book,
                    codec=self._id_codec,
                    ttl_s=self.ledger.config.idempotency_ttl_s,
                )

            payout_id = await self.db.write(work)
        await self.send(payout_id)
        return await self.get(user_id, payout_id)

    # ------------------------------------------------------------------- sending

    async def send(self, payout_id: str, *, now: int | None = None) -> PayoutStatus | None:
        """Ask the provider to pay a pending payout, if no other instance is at it (the lease);
        the payout's status afterwards, ``None`` when it was not ours to send."""
        at = now_ms() if now is None else now

        async def lease(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "UPDATE payouts SET lease_until = $2, attempts = attempts + 1, updated_at = $3"
                " WHERE payout_id = $1 AND status = 'pending' AND lease_until < $3 RETURNING *",
                payout_id,
                at + self.config.lease_s * 1000,
                at,
            )

        row = await self.db.write(lease)
        if row is None:
            return None
        try:
            done = await self.disburser.disburse(
                user_id=row["user_id"],
                amount=int(row["amount"]),
                currency=row["currency"],
                method=PayoutMethod(row["provider"], row["method_id"]),
                idempotency_key=f"payout:{payout_id}",
            )
        except PayoutDeclined as exc:
            self.outcomes["failed"] += 1
            await self._fail(payout_id, f"declined: {exc}")
            return "failed"
        except PayoutUnreachable as exc:
            if int(row["attempts"]) >= self.config.max_attempts:
                self.outcomes["failed"] += 1
                await self._fail(payout_id, f"unreachable {row['attempts']} times: {exc}")
                return "failed"
            self.outcomes["retry"] += 1
            log.info("payout %s stays pending: %s", payout_id, exc)
            return "pending"

        async def paid(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE payouts SET status = 'paid', reference = $2, updated_at = $3"
                " WHERE payout_id = $1 AND status = 'pending'",
                payout_id,
                done.reference,
                now_ms(),
            )
            if changed == 1:
                await append_audit(tx, row["user_id"], "payout.paid", payout_id)

        await self.db.write(paid)
        self.outcomes["paid"] += 1
        return "paid"

    async def _fail(self, payout_id: str, reason: str) -> None:
        """Mark the payout failed and reverse its booking with a new transaction that negates
        each of its entries (the money goes back where it came from)."""

        async def work(tx: Tx) -> None:
            row = await tx.fetchrow(
                "UPDATE payouts SET status = 'failed', failure = $2, updated_at = $3"
                " WHERE payout_id = $1 AND status = 'pending' RETURNING *",
                payout_id,
                reason,
                now_ms(),
            )
            if row is None:
                return
            entries = await tx.fetch(
                "SELECT account, amount FROM ledger_entries WHERE txn_id = $1",
                row["transaction_id"],
            )
            reversal = await post(
                tx,
                kind="payout_reversal",
                user_id=row["user_id"],
                postings=[Posting(e["account"], -int(e["amount"])) for e in entries],
                memo={"payout_id": payout_id},
                reverses=row["transaction_id"],
            )
            await tx.execute(
                "UPDATE payouts SET reversal_id = $2 WHERE payout_id = $1", payout_id, reversal
            )
            await append_audit(tx, row["user_id"], "payout.failed", payout_id)

        await self.db.write(work)
        log.warning("payout %s failed and was reversed: %s", payout_id, reason)

    # ------------------------------------------------------------------- the job

    async def run_due(self, *, now: int | None = None) -> int:
        """Book the automatic payouts that are due (each user once per period of their
        frequency); how many were booked. Safe on several instances at once."""
        at = now_ms() if now is None else now

        async def candidates(tx: Tx) -> list[str]:
            rows = await tx.fetch(
                "SELECT account FROM ledger_balances WHERE balance <> 0 AND"
                " (account LIKE 'user:%:earnings' OR account LIKE 'user:%:payable'"
                " OR account LIKE 'user:%:receivable') ORDER BY account"
            )
            return sorted({owner_of(row["account"]) or "" for row in rows} - {""})

        booked = 0
        for user_id in await self.db.read(candidates):
            try:
                if await self._run_user(user_id, at):
                    booked += 1
            except StoreUnavailable:
                raise
            except YggdrasilError as exc:
                log.warning("automatic payout of %s: %s (%s)", user_id, exc.code, exc)
        return booked

    async def _run_user(self, user_id: str, at: int) -> bool:
        settings = await self.settings(user_id)
        if not settings.automatic:
            return False
        period = period_of(settings.frequency, at)
        if settings.netting:
            await self._net(user_id, period)
        method = await self.methods.payout_method(user_id)
        if method is None:
            return False

        async def work(tx: Tx) -> str | None:
            if (await kyc_of(tx, self.config, user_id, self.db.vault)).blocks_payouts:
                return None
            return await self._book(tx, user_id, None, method, trigger="automatic", period=period)

        payout_id = await self.db.write(work)
        if payout_id is None:
            return False
        await self.send(payout_id, now=at)
        return True

    async def _net(self, user_id: str, period: str) -> None:
        """Netting before a payout: the debt settled from the earnings; what earnings do not
        cover is collected through the collector, once per period."""
        have = await self.ledger.balances(user_id)
        if have.receivable == 0:
            return
        if have.earnings + have.payable > 0:
            netting = await self.ledger.net(user_id, key=f"payout-net:{new_id('n')}")
            owed = netting.to_charge
        else:
            owed = have.receivable
        if owed > 0:
            await self._collect_debt(user_id, owed, period)

    async def _collect_debt(self, user_id: str, amount: int, period: str) -> None:
        scope, key = f"payouts.debt:{user_id}", f"debt:{period}"
        request: dict[str, Any] = {}
        if await stored_answer(
            self.db, scope=scope, key=key, request=request, codec=self._id_codec
        ):
            return
        collected = await self.collector.collect(
            user_id=user_id,
            amount=amount,
            currency=self.ledger.config.currency,
            idempotency_key=f"{user_id}:{key}",
        )

        async def book(tx: Tx) -> str:
            owed = -(await _balances_of(tx, user_id))["receivable"]
            settle = min(amount, max(owed, 0))
            postings = [Posting(external_account(collected.provider), -amount)]
            if settle:
                postings.append(Posting(user_account(user_id, "receivable"), settle))
            if amount > settle:
                postings.append(Posting(user_account(user_id, "balance"), amount - settle))
            return await post(
                tx,
                kind="debt_collection",
                user_id=user_id,
                postings=postings,
                memo={"provider": collected.provider, "provider_ref": collected.reference},
                key=key,
            )

        async def work(tx: Tx) -> str:
            return await run_once(
                tx,
                scope=scope,
                key=key,
                request=request,
                work=book,
                codec=self._id_codec,
                ttl_s=self.ledger.config.idempotency_ttl_s,
            )

        await self.db.write(work)

    async def send_pending(self, *, now: int | None = None) -> int:
        """Send (again) every pending payout whose lease has passed; how many were paid."""
        at = now_ms() if now is None else now

        async def due(tx: Tx) -> list[str]:
            rows = await tx.fetch(
                "SELECT payout_id FROM payouts WHERE status = 'pending' AND lease_until < $1"
                " ORDER BY created_at LIMIT 500",
                at,
            )
            return [row["payout_id"] for row in rows]

        paid = 0
        for payout_id in await self.db.read(due):
            if await self.send(payout_id, now=at) == "paid":
                paid += 1
        return paid

    async def run_once(self, *, now: int | None = None) -> tuple[int, int]:
        """One round of the job: the due payouts booked, then pending ones sent."""
        booked = await self.run_due(now=now)
        return booked, await self.send_pending(now=now)

    async def run_forever(self) -> None:
        """The payout job, every ``payouts.interval_s`` until cancelled; a store that is briefly
        unreachable is tried again next time."""
        while True:
            await trio.sleep(self.config.interval_s)
            try:
                booked, paid = await self.run_once()
            except StoreUnavailable:
                log.info("payout job skipped: the store is unreachable")
                continue
            if booked or paid:
                log.info("payout job: %d payouts booked, %d paid", booked, paid)
