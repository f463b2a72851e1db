"""The ledger's operations: deposit, hold, capture, release, charge, refund, payout, netting.

Each operation is one write unit on the :class:`~yggdrasil.store.Database` keyed by an
idempotency key (:mod:`._idempotency`): its postings (:func:`._postings.post`), its bookkeeping
rows (holds, what may still be refunded) and its stored answer commit together or not at all, a
repetition with the same key returns the first answer, and concurrent duplicates run once.

State that concurrent requests compete for is changed by one conditional ``UPDATE`` that both
checks and changes it (``captured + amount <= held amount``, ``refunded + amount <= amount``): on
PostgreSQL the row lock serializes them and the condition is evaluated again on the newest row, so
of 100 parallel captures of one hold only those that fit succeed; on SQLite writes run one after
the other anyway.

Holds expire (``ledger.hold_ttl_s``): :meth:`Ledger.reconcile_holds` releases what an expired
hold did not capture. The store runs it at start-up, before the API answers, and every
``ledger.reconcile_interval_s``; so a hold whose request died with its client or with the server
is never left holding money.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol, TypeVar

import msgspec
import trio

from .._config import LedgerConfig
from .._errors import Invalid, NotFound, StoreUnavailable, YggdrasilError
from .._ids import new_id, now_ms
from ..store import MAX_PAGE, Database, Page, Tx, decode_cursor, encode_cursor, from_json, to_json
from ._idempotency import (
    Codec,
    idempotent,
    purge_idempotency_keys,
    stored_answer,
    struct_codec,
)
from ._money import InvalidAmount, check_cents
from ._postings import (
    USER_ACCOUNT_KINDS,
    InsufficientFunds,
    Posting,
    UnbalancedPostings,
    allowed,
    company_account,
    external_account,
    owner_of,
    post,
    user_account,
)
from ._seam import Collector

log = logging.getLogger(__name__)

T = TypeVar("T")

HoldStatus = Literal["open", "captured", "released", "expired"]


class HoldClosed(YggdrasilError):
    status = 409
    code = "hold_closed"
    default_message = "the hold is no longer open"


class ExceedsHold(YggdrasilError):
    status = 409
    code = "exceeds_hold"
    default_message = "that is more than the hold has left"


class ExceedsRefundable(YggdrasilError):
    status = 409
    code = "exceeds_refundable"
    default_message = "that is more than is left to refund"


class NettingOff(YggdrasilError):
    status = 409
    code = "netting_not_enabled"
    default_message = "netting is off for this account"


# ----------------------------------------------------------------------------- answers


class Hold(msgspec.Struct, frozen=True):
    hold_id: str
    user_id: str
    purpose: str
    amount: int
    captured: int
    released: int
    remaining: int
    status: HoldStatus
    transaction_id: str
    created_at: int
    expires_at: int


class Capture(msgspec.Struct, frozen=True):
    transaction_id: str
    hold_id: str
    amount: int
    captured: int
    """Captured from the hold so far, this capture included."""
    remaining: int
    """Still held (until captured, released or expired)."""
    status: HoldStatus


class Charge(msgspec.Struct, frozen=True):
    transaction_id: str
    user_id: str
    amount: int
    kind: str


class Refund(msgspec.Struct, frozen=True):
    transaction_id: str
    refunds: str
    """The capture or charge given back."""
    amount: int
    refunded: int
    """Refunded of it so far, this refund included."""


class Deposit(msgspec.Struct, frozen=True):
    transaction_id: str
    user_id: str
    amount: int
    currency: str
    provider: str
    provider_ref: str
    test_mode: bool = False


class Payout(msgspec.Struct, frozen=True):
    transaction_id: str
    user_id: str
    amount: int
    provider: str
    settled_receivable: int
    """Owed money taken from the earnings before paying out (never a negative payout)."""


class Netting(msgspec.Struct, frozen=True):
    transaction_id: str | None
    settled: int
    """Earnings set against what the user owed."""
    to_charge: int
    """Still owed after netting: to be charged."""
    to_pay_out: int
    """Earnings left after netting: to be paid out."""


class Balances(msgspec.Struct, frozen=True):
    currency: str
    balance: int
    """Available to spend."""
    held: int
    """Pre-authorized by open holds."""
    earnings: int
    """Earned as a provider, not yet paid out."""
    payable: int
    """Set aside for the next payout."""
    receivable: int
    """Owed by the user (a refund after a payout): taken from the next earnings."""


class Entry(msgspec.Struct, frozen=True):
    """One posting to one of the user's own accounts (never the other side of it)."""

    entry_id: str
    transaction_id: str
    kind: str
    account: str
    """``balance``, ``held``, ``earnings``, ``payable`` or ``receivable``."""
    amount: int
    created_at: int


class LedgerCheck(msgspec.Struct, frozen=True):
    """What :meth:`Ledger.verify` found; ``ok`` when nothing."""

    total: int
    """The sum of every account's balance: zero."""
    mismatched: list[str]
    """Accounts whose balance row differs from the sum of their entries."""
    forbidden: list[str]
    """Accounts on the wrong side of zero."""
    held_mismatch: list[str]
    """Users whose held balance differs from what their open holds still hold."""
    expired_open_holds: int

    @property
    def ok(self) -> bool:
        return (
            self.total == 0
            and not self.mismatched
            and not self.forbidden
            and not self.held_mismatch
            and self.expired_open_holds == 0
        )


def _hold(row: dict[str, Any]) -> Hold:
    return Hold(
        hold_id=row["hold_id"],
        user_id=row["user_id"],
        purpose=row["purpose"],
        amount=row["amount"],
        captured=row["captured"],
        released=row["released"],
        remaining=row["amount"] - row["captured"] - row["released"],
        status=row["status"],
        transaction_id=row["txn_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


def _allocate(amount: int, remaining: list[int]) -> list[int]:
    """``amount`` split over legs in proportion to what each has ``remaining`` (largest
    remainder, ties to the earlier leg): adds up to ``amount``, no leg above its remaining."""
    total = sum(remaining)
    shares = [amount * left // total for left in remaining]
    order = sorted(range(len(remaining)), key=lambda i: (-(amount * remaining[i] % total), i))
    short = amount - sum(shares)
    for i in order:
        if short == 0:
            break
        if shares[i] < remaining[i]:
            shares[i] += 1
            short -= 1
    return shares


def _check_credits(to: list[Posting], amount: int) -> list[Posting]:
    if any(p.amount <= 0 for p in to) or sum(p.amount for p in to) != amount:
        raise UnbalancedPostings("the credits must be positive and add up to the amount")
    return to


async def _balances_of(tx: Tx, user_id: str) -> dict[str, int]:
    names = [user_account(user_id, kind) for kind in USER_ACCOUNT_KINDS]
    rows = await tx.fetch(
        "SELECT account, balance FROM ledger_balances WHERE account IN ($1, $2, $3, $4, $5)",
        *names,
    )
    found = {row["account"]: int(row["balance"]) for row in rows}
    return {kind: found.get(name, 0) for kind, name in zip(USER_ACCOUNT_KINDS, names, strict=True)}


async def _refundable(tx: Tx, txn_id: str, user_id: str, amount: int, to: list[Posting]) -> None:
    legs = [[p.account, p.amount, 0] for p in to]
    await tx.execute(
        "INSERT INTO ledger_refundables (txn_id, user_id, amount, refunded, legs)"
        " VALUES ($1, $2, $3, 0, $4)",
        txn_id,
        user_id,
        amount,
        to_json(legs),
    )


class SpendingHook(Protocol):
    """What the ledger asks about a user's spending (``_limits.Limits``): ``spend`` and
    ``unspend`` run inside the operation's write unit (``spend`` may refuse, and then nothing of
    the operation is written); ``after_spending`` runs once the operation has committed (budget
    alerts, auto-top-up) and must not raise."""

    async def spend(self, tx: Tx, user_id: str, amount: int) -> None: ...

    async def unspend(self, tx: Tx, user_id: str, amount: int) -> None: ...

    async def after_spending(self, ledger: Ledger, user_id: str) -> None: ...


class Ledger:
    """The ledger's operations over one database (see the module's docstring).

    ``spending``: counts holds and charges against the user's monthly spending limit (and
    releases and refunds back), in the same unit as the operation."""

    def __init__(
        self, db: Database, config: LedgerConfig, *, spending: SpendingHook | None = None
    ) -> None:
        self.db = db
        self.config = config
        self.spending = spending
        self._codecs: dict[type[Any], Codec] = {}

    async def _once(
        self,
        scope: str,
        key: str,
        request: dict[str, Any],
        answer: type[T],
        work: Any,
    ) -> T:
        codec = self._codecs.get(answer)
        if codec is None:
            codec = self._codecs[answer] = struct_codec(answer)
        result: T = await idempotent(
            self.db,
            scope=scope,
            key=key,
            request=request,
            work=work,
            codec=codec,
            ttl_s=self.config.idempotency_ttl_s,
        )
        return result

    # ------------------------------------------------------------------- money in

    async def deposit(
        self, user_id: str, amount: int, *, key: str, provider: str, provider_ref: str
    ) -> Deposit:
        """Money that came in through ``provider`` (its charge ``provider_ref``) onto the user's
        balance."""
        check_cents(amount)
        request = {"amount": amount, "provider": provider, "provider_ref": provider_ref}

        async def work(tx: Tx) -> Deposit:
            return await self._deposit(tx, user_id, amount, key, provider, provider_ref, False)

        return await self._once(f"ledger.deposit:{user_id}", key, request, Deposit, work)

    async def _deposit(
        self,
        tx: Tx,
        user_id: str,
        amount: int,
        key: str,
        provider: str,
        provider_ref: str,
        test_mode: bool,
    ) -> Deposit:
        memo = {"provider": provider, "provider_ref": provider_ref, "test_mode": test_mode}
        txn = await post(
            tx,
            kind="deposit",
            user_id=user_id,
            postings=[
                Posting(external_account(provider), -amount),
                Posting(user_account(user_id, "balance"), amount),
            ],
            memo=memo,
            key=key,
        )
        currency = self.config.currency
        return Deposit(txn, user_id, amount, currency, provider, provider_ref, test_mode)

    async def process(
        self, user_id: str, amount: int, *, key: str, collector: Collector, currency: str
    ) -> Deposit:
        """``POST /api/v1/payments/process``: collect ``amount`` through ``collector`` and book it
        onto the user's balance. A repetition of ``key`` returns the first answer without asking
        the provider again; a retry after a failure between the provider's charge and the booking
        asks the provider with the same key (it answers with the same charge) and books it once.
        """
        check_cents(amount)
        if currency != self.config.currency:
            raise InvalidAmount(f"amounts are in {self.config.currency}, not {currency}")
        scope = f"payments.process:{user_id}"
        request = {"amount": amount, "currency": currency}
        codec = self._codecs.get(Deposit) or struct_codec(Deposit)
        replay = await stored_answer(self.db, scope=scope, key=key, request=request, codec=codec)
        if isinstance(replay, Deposit):
            return replay
        collected = await collector.collect(
            user_id=user_id, amount=amount, currency=currency, idempotency_key=f"{user_id}:{key}"
        )

        async def work(tx: Tx) -> Deposit:
            return await self._deposit(
                tx,
                user_id,
                amount,
                key,
                collected.provider,
                collected.reference,
                collected.test_mode,
            )

        return await self._once(scope, key, request, Deposit, work)

    # ------------------------------------------------------------------- holds

    async def hold(
        self,
        user_id: str,
        amount: int,
        *,
        key: str,
        purpose: str = "general",
        expires_in_s: int | None = None,
    ) -> Hold:
        """Pre-authorize ``amount`` of the user's balance: it moves to held until captured,
        released, or the hold expires (``ledger.hold_ttl_s`` unless ``expires_in_s``).
        :class:`InsufficientFunds` when the balance is short. ``purpose`` names the company's
        revenue stream a capture goes to by default."""
        check_cents(amount)
        company_account(f"revenue:{purpose}")  # a valid stream name
        ttl_s = self.config.hold_ttl_s if expires_in_s is None else expires_in_s
        if ttl_s < 1:
            raise InvalidAmount("a hold lasts at least a second")
        request = {"amount": amount, "purpose": purpose, "ttl_s": ttl_s}

        async def work(tx: Tx) -> Hold:
            if self.spending is not None:
                await self.spending.spend(tx, user_id, amount)
            hold_id = new_id("hd")
            at = now_ms()
            txn = await post(
                tx,
                kind="hold",
                user_id=user_id,
                postings=[
                    Posting(user_account(user_id, "balance"), -amount),
                    Posting(user_account(user_id, "held"), amount),
                ],
                memo={"hold_id": hold_id, "purpose": purpose},
                key=key,
            )
            row = await tx.fetchrow(
                "INSERT INTO ledger_holds (hold_id, user_id, purpose, amount, captured, released,"
                " status, txn_id, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4, 0, 0, 'open', $5, $6, $7) RETURNING *",
                hold_id,
                user_id,
                purpose,
                amount,
                txn,
                at,
                at + ttl_s * 1000,
            )
            assert row is not None
            return _hold(row)

        hold = await self._once(f"ledger.hold:{user_id}", key, request, Hold, work)
        if self.spending is not None:
            await self.spending.after_spending(self, user_id)
        return hold

    async def _why_not(self, tx: Tx, hold_id: str, user_id: str | None) -> YggdrasilError:
        """Why a conditional update of a hold changed nothing."""
        row = await tx.fetchrow("SELECT * FROM ledger_holds WHERE hold_id = $1", hold_id)
        if row is None or (user_id is not None and row["user_id"] != user_id):
            return NotFound()
        if row["status"] != "open" or row["expires_at"] < now_ms():
            state = row["status"] if row["status"] != "open" else "expired"
            return HoldClosed(f"the hold is {state}")
        return ExceedsHold(
            f"the hold has {row['amount'] - row['captured'] - row['released']} cents left"
        )

    async def capture(
        self,
        hold_id: str,
        amount: int,
        *,
        key: str,
        user_id: str | None = None,
        to: list[Posting] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> Capture:
        """Capture ``amount`` of an open hold: from the user's held money to ``to`` (postings
        that add up to ``amount``; by default the company's revenue stream of the hold's
        purpose). Partial captures are fine; the rest stays held until captured, released or
        expired. More than the hold has left is :class:`ExceedsHold`, a closed or expired hold
        :class:`HoldClosed`; ``user_id`` (a user's own request): another user's hold is
        :class:`NotFound`, like a missing one."""
        check_cents(amount)
        credits = None if to is None else _check_credits(to, amount)
        request = {
            "hold_id": hold_id,
            "amount": amount,
            "to": msgspec.to_builtins(credits),
            "memo": memo,
        }

        async def work(tx: Tx) -> Capture:
            at = now_ms()
            owner = "" if user_id is None else " AND user_id = $5"
            args: list[Any] = [hold_id, amount, at, "captured"]
            if user_id is not None:
                args.append(user_id)
            row = await tx.fetchrow(
                "UPDATE ledger_holds SET captured = captured + $2,"
                " status = CASE WHEN captured + released + $2 = amount THEN $4 ELSE status END,"
                " closed_at = CASE WHEN captured + released + $2 = amount THEN $3 ELSE NULL END"
                " WHERE hold_id = $1 AND status = 'open' AND expires_at >= $3"
                f" AND amount - captured - released >= $2{owner} RETURNING *",
                *args,
            )
            if row is None:
                raise await self._why_not(tx, hold_id, user_id)
            payer = row["user_id"]
            legs = credits or [Posting(company_account(f"revenue:{row['purpose']}"), amount)]
            txn = await post(
                tx,
                kind="capture",
                user_id=payer,
                postings=[Posting(user_account(payer, "held"), -amount), *legs],
                memo={"hold_id": hold_id, **(memo or {})},
                key=key,
            )
            await _refundable(tx, txn, payer, amount, legs)
            left = row["amount"] - row["captured"] - row["released"]
            return Capture(txn, hold_id, amount, row["captured"], left, row["status"])

        scope = f"ledger.capture:{user_id or '*'}"
        return await self._once(scope, key, request, Capture, work)

    async def release(self, hold_id: str, *, key: str, user_id: str | None = None) -> Hold:
        """Give back what an open hold has not captured, and close it. A closed hold is
        :class:`HoldClosed`; ``user_id`` as for :meth:`capture`."""

        async def work(tx: Tx) -> Hold:
            return await self._close(tx, hold_id, user_id, "released", key=key)

        scope = f"ledger.release:{user_id or '*'}"
        return await self._once(scope, key, {"hold_id": hold_id}, Hold, work)

    async def _close(
        self,
        tx: Tx,
        hold_id: str,
        user_id: str | None,
        status: HoldStatus,
        *,
        key: str | None,
        now: int | None = None,
    ) -> Hold:
        at = now_ms() if now is None else now
        owner = "" if user_id is None else " AND user_id = $4"
        # The reconciliation closes only expired holds; a release closes any open hold.
        when = " AND expires_at < $2" if status == "expired" else ""
        args: list[Any] = [hold_id, at, status]
        if user_id is not None:
            args.append(user_id)
        row = await tx.fetchrow(
            "UPDATE ledger_holds SET released = amount - captured, status = $3, closed_at = $2"
            f" WHERE hold_id = $1 AND status = 'open'{when}{owner} RETURNING *",
            *args,
        )
        if row is None:
            raise await self._why_not(tx, hold_id, user_id)
        if row["released"] > 0:
            payer = row["user_id"]
            if self.spending is not None:
                await self.spending.unspend(tx, payer, row["released"])
            await post(
                tx,
                kind="release",
                user_id=payer,
                postings=[
                    Posting(user_account(payer, "held"), -row["released"]),
                    Posting(user_account(payer, "balance"), row["released"]),
                ],
                memo={"hold_id": hold_id, "reason": status},
                key=key,
            )
        return _hold(row)

    async def release_open_holds(self, tx: Tx, user_id: str) -> int:
        """Inside the caller's unit: release every open hold of the user (an account being
        deleted); how many."""
        rows = await tx.fetch(
            "SELECT hold_id FROM ledger_holds WHERE user_id = $1 AND status = 'open'", user_id
        )
        for row in rows:
            await self._close(tx, row["hold_id"], user_id, "released", key=None)
        return len(rows)

    async def get_hold(self, user_id: str, hold_id: str) -> Hold:
        """One of the user's holds; another user's is :class:`NotFound`, like a missing one."""

        async def read(tx: Tx) -> Hold:
            row = await tx.fetchrow(
                "SELECT * FROM ledger_holds WHERE hold_id = $1 AND user_id = $2", hold_id, user_id
            )
            if row is None:
                raise NotFound()
            return _hold(row)

        return await self.db.read(read)

    async def reconcile_holds(self, *, now: int | None = None, batch: int = 500) -> int:
        """Release every open hold past its expiry (each in its own transaction); how many.
        Safe to run on several instances at once: a hold is closed by whoever gets there first."""
        released = 0
        while True:
            at = now_ms() if now is None else now

            async def due(tx: Tx, at: int = at) -> list[str]:
                rows = await tx.fetch(
                    "SELECT hold_id FROM ledger_holds WHERE status = 'open' AND expires_at < $1"
                    " ORDER BY expires_at LIMIT $2",
                    at,
                    batch,
                )
                return [row["hold_id"] for row in rows]

            ids = await self.db.read(due)
            for hold_id in ids:

                async def expire(tx: Tx, hold_id: str = hold_id, at: int = at) -> bool:
                    try:
                        await self._close(tx, hold_id, None, "expired", key=None, now=at)
                    except (HoldClosed, NotFound, ExceedsHold):
                        return False  # closed meanwhile
                    return True

                if await self.db.write(expire):
                    released += 1
            if len(ids) < batch:
                return released

    # ------------------------------------------------------------------- charges and refunds

    async def charge(
        self,
        user_id: str,
        amount: int,
        *,
        key: str,
        to: list[Posting] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> Charge:
        """Take ``amount`` straight from the user's balance to ``to`` (by default the company's
        general revenue); :class:`InsufficientFunds` when the balance is short."""
        check_cents(amount)
        credits = [Posting(company_account("revenue:general"), amount)] if to is None else to
        _check_credits(credits, amount)
        request = {"amount": amount, "to": msgspec.to_builtins(credits), "memo": memo}

        async def work(tx: Tx) -> Charge:
            if self.spending is not None:
                await self.spending.spend(tx, user_id, amount)
            txn = await post(
                tx,
                kind="charge",
                user_id=user_id,
                postings=[Posting(user_account(user_id, "balance"), -amount), *credits],
                memo=memo or {},
                key=key,
            )
            await _refundable(tx, txn, user_id, amount, credits)
            return Charge(txn, user_id, amount, "charge")

        charge = await self._once(f"ledger.charge:{user_id}", key, request, Charge, work)
        if self.spending is not None:
            await self.spending.after_spending(self, user_id)
        return charge

    async def credit(
        self, user_id: str, amount: int, *, key: str, memo: dict[str, Any] | None = None
    ) -> Charge:
        """Goodwill from the company onto the user's balance (``company:credits`` pays it): a
        proration credit, say."""
        check_cents(amount)
        request = {"amount": amount, "memo": memo}

        async def work(tx: Tx) -> Charge:
            txn = await post(
                tx,
                kind="credit",
                user_id=user_id,
                postings=[
                    Posting(company_account("credits"), -amount),
                    Posting(user_account(user_id, "balance"), amount),
                ],
                memo=memo or {},
                key=key,
            )
            return Charge(txn, user_id, amount, "credit")

        return await self._once(f"ledger.credit:{user_id}", key, request, Charge, work)

    async def refund(self, transaction_id: str, amount: int, *, key: str) -> Refund:
        """Give back ``amount`` of a capture or charge to the payer's balance, taken from its
        credits in proportion to what each has left. Never more than was taken, over all refunds
        together (:class:`ExceedsRefundable`). A provider's share their earnings no longer cover
        (paid out meanwhile) becomes their receivable, netted from their next payout."""
        check_cents(amount)

        async def work(tx: Tx) -> Refund:
            row = await tx.fetchrow(
                "UPDATE ledger_refundables SET refunded = refunded + $2"
                " WHERE txn_id = $1 AND amount - refunded >= $2 RETURNING *",
                transaction_id,
                amount,
            )
            if row is None:
                exists = await tx.fetchrow(
                    "SELECT amount, refunded FROM ledger_refundables WHERE txn_id = $1",
                    transaction_id,
                )
                if exists is None:
                    raise NotFound()
                left = exists["amount"] - exists["refunded"]
                raise ExceedsRefundable(f"{left} cents are left to refund")
            legs: list[list[Any]] = from_json(row["legs"])
            shares = _allocate(amount, [leg[1] - leg[2] for leg in legs])
            payer = row["user_id"]
            if self.spending is not None:
                await self.spending.unspend(tx, payer, amount)
            postings = [Posting(user_account(payer, "balance"), amount)]
            for leg, share in zip(legs, shares, strict=True):
                if share == 0:
                    continue
                leg[2] += share
                postings += await self._take_back(tx, leg[0], share)
            await tx.execute(
                "UPDATE ledger_refundables SET legs = $2 WHERE txn_id = $1",
                transaction_id,
                to_json(legs),
            )
            txn = await post(
                tx,
                kind="refund",
                user_id=payer,
                postings=postings,
                memo={"refunds": transaction_id},
                key=key,
                reverses=transaction_id,
            )
            return Refund(txn, transaction_id, amount, row["refunded"])

        return await self._once(
            "ledger.refund", key, {"txn": transaction_id, "amount": amount}, Refund, work
        )

    async def _take_back(self, tx: Tx, account: str, amount: int) -> list[Posting]:
        """Postings that take ``amount`` back from a credited ``account``: from a provider's
        earnings as far as they go, the rest as what they owe."""
        owner = owner_of(account)
        if owner is None or not account.endswith(":earnings"):
            return [Posting(account, -amount)]
        have = await tx.fetchval("SELECT balance FROM ledger_balances WHERE account = $1", account)
        taken = min(amount, max(int(have or 0), 0))
        postings = [Posting(account, -taken)] if taken else []
        if amount > taken:
            postings.append(Posting(user_account(owner, "receivable"), -(amount - taken)))
        return postings

    # ------------------------------------------------------------------- earnings out

    async def payout(
        self, user_id: str, amount: int, *, key: str, provider: str = "sandbox"
    ) -> Payout:
        """Pay ``amount`` of the user's payable money and earnings out through ``provider``.
        What they owe (receivable) is settled from the earnings first, so a payout never goes
        negative and never leaves a debt behind it; more than earnings + payable - owed is
        :class:`InsufficientFunds`."""
        check_cents(amount)
        external_account(provider)

        async def work(tx: Tx) -> Payout:
            return await self.book_payout(tx, user_id, amount, provider=provider, key=key)

        request = {"amount": amount, "provider": provider}
        return await self._once(f"ledger.payout:{user_id}", key, request, Payout, work)

    async def book_payout(
        self,
        tx: Tx,
        user_id: str,
        amount: int,
        *,
        provider: str,
        key: str | None,
        memo: dict[str, Any] | None = None,
    ) -> Payout:
        """:meth:`payout`'s postings inside the caller's write unit (the payouts' job books
        them with its payout record); no idempotency key of its own."""
        check_cents(amount)
        have = await _balances_of(tx, user_id)
        owed = -have["receivable"]
        need = amount + owed
        if need > have["payable"] + have["earnings"]:
            raise InsufficientFunds(
                f"{max(have['payable'] + have['earnings'] - owed, 0)} cents can be paid out"
            )
        from_payable = min(have["payable"], need)
        from_earnings = need - from_payable
        postings = [Posting(external_account(provider), amount)]
        if from_payable:
            postings.append(Posting(user_account(user_id, "payable"), -from_payable))
        if from_earnings:
            postings.append(Posting(user_account(user_id, "earnings"), -from_earnings))
        if owed:
            postings.append(Posting(user_account(user_id, "receivable"), owed))
        txn = await post(
            tx,
            kind="payout",
            user_id=user_id,
            postings=postings,
            memo={"provider": provider, **(memo or {})},
            key=key,
        )
        return Payout(txn, user_id, amount, provider, owed)

    async def set_netting(self, user_id: str, enabled: bool) -> None:
        """The user's choice: settle earnings against what they owe (:meth:`net`)."""

        async def work(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO ledger_netting (user_id, enabled, updated_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (user_id) DO UPDATE"
                " SET enabled = excluded.enabled, updated_at = excluded.updated_at",
                user_id,
                enabled,
                now_ms(),
            )

        await self.db.write(work)

    async def net(self, user_id: str, *, key: str) -> Netting:
        """Netting (for a user who opted in, else :class:`NettingOff`): what the user owes is
        settled from their earnings and payable money; the answer says what is left to charge
        and what is left to pay out (only the difference moves through a provider)."""

        async def work(tx: Tx) -> Netting:
            enabled = await tx.fetchval(
                "SELECT enabled FROM ledger_netting WHERE user_id = $1", user_id
            )
            if not enabled:
                raise NettingOff()
            have = await _balances_of(tx, user_id)
            owed = -have["receivable"]
            available = have["earnings"] + have["payable"]
            settle = min(owed, available)
            txn = None
            if settle > 0:
                from_earnings = min(have["earnings"], settle)
                postings = [Posting(user_account(user_id, "receivable"), settle)]
                if from_earnings:
                    postings.append(Posting(user_account(user_id, "earnings"), -from_earnings))
                if settle > from_earnings:
                    postings.append(
                        Posting(user_account(user_id, "payable"), -(settle - from_earnings))
                    )
                txn = await post(
                    tx, kind="netting", user_id=user_id, postings=postings, memo={}, key=key
                )
            return Netting(txn, settle, owed - settle, available - settle)

        return await self._once(f"ledger.net:{user_id}", key, {}, Netting, work)

    # ------------------------------------------------------------------- reading

    async def balances(self, user_id: str) -> Balances:
        async def read(tx: Tx) -> dict[str, int]:
            return await _balances_of(tx, user_id)

        have = await self.db.read(read)
        return Balances(
            currency=self.config.currency,
            balance=have["balance"],
            held=have["held"],
            earnings=have["earnings"],
            payable=have["payable"],
            receivable=-have["receivable"],
        )

    async def entries(
        self, user_id: str, *, cursor: str | None = None, limit: int = 50
    ) -> Page[Entry]:
        """The entries of the user's own accounts, newest first, one page of ``limit``."""
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
        before = 2**62
        if cursor is not None:
            decoded = decode_cursor(cursor)
            if decoded is None or not decoded.isdigit() or len(decoded) > 18:
                raise Invalid("malformed cursor")
            before = int(decoded)

        async def read(tx: Tx) -> list[dict[str, Any]]:
            return await tx.fetch(
                "SELECT e.entry_id, e.txn_id, t.kind, e.account, e.amount, e.created_at"
                " FROM ledger_entries e JOIN ledger_transactions t ON t.txn_id = e.txn_id"
                " WHERE e.user_id = $1 AND e.entry_id < $2 ORDER BY e.entry_id DESC LIMIT $3",
                user_id,
                before,
                limit + 1,
            )

        rows = await self.db.read(read)
        items = [
            Entry(
                entry_id=str(row["entry_id"]),
                transaction_id=row["txn_id"],
                kind=row["kind"],
                account=row["account"].rsplit(":", 1)[1],
                amount=row["amount"],
                created_at=row["created_at"],
            )
            for row in rows[:limit]
        ]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1].entry_id) if more else None)

    async def verify(self) -> LedgerCheck:
        """Check the ledger's invariants (for tests and operators; on PostgreSQL run it when
        no money moves, since its statements see different instants)."""

        async def read(tx: Tx) -> LedgerCheck:
            balances = {
                row["account"]: int(row["balance"])
                for row in await tx.fetch("SELECT account, balance FROM ledger_balances")
            }
            sums = {
                row["account"]: int(row["total"])
                for row in await tx.fetch(
                    "SELECT account, SUM(amount) AS total FROM ledger_entries GROUP BY account"
                )
            }
            mismatched = sorted(
                account
                for account in balances.keys() | sums.keys()
                if balances.get(account, 0) != sums.get(account, 0)
            )
            forbidden = sorted(a for a, b in balances.items() if not allowed(a, b))
            open_holds = await tx.fetch(
                "SELECT user_id, SUM(amount - captured - released) AS held FROM ledger_holds"
                " WHERE status = 'open' GROUP BY user_id"
            )
            holding = {row["user_id"]: int(row["held"]) for row in open_holds}
            users = holding.keys() | {owner_of(a) or "" for a in balances if a.endswith(":held")}
            held_mismatch = sorted(
                u
                for u in users
                if u and holding.get(u, 0) != balances.get(user_account(u, "held"), 0)
            )
            expired = await tx.fetchval(
                "SELECT COUNT(*) FROM ledger_holds WHERE status = 'open' AND expires_at < $1",
                now_ms(),
            )
            return LedgerCheck(
                sum(balances.values()), mismatched, forbidden, held_mismatch, int(expired)
            )

        return await self.db.read(read)

    # ------------------------------------------------------------------- the periodic job

    async def maintain_forever(self) -> None:
        """Release expired holds and remove expired idempotency keys every
        ``ledger.reconcile_interval_s``, until cancelled; a store that is briefly unreachable
        is tried again next time."""
        while True:
            await trio.sleep(self.config.reconcile_interval_s)
            try:
                released = await self.reconcile_holds()
                purged = await purge_idempotency_keys(self.db)
            except StoreUnavailable:
                log.info("ledger maintenance skipped: the store is unreachable")
                continue
            if released or purged:
                log.info(
                    "ledger maintenance: %d expired holds released, %d idempotency keys removed",
                    released,
                    purged,
                )
