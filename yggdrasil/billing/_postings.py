"""Accounts, postings and :func:`post`: the one way money moves in the ledger.

Every change is a transaction: a balanced set of postings (signed cents that add up to zero),
written as immutable entries together with each account's running balance, inside the caller's
write unit. Nothing updates or deletes an entry (the migration's triggers refuse it); a mistake is
undone by a new transaction that reverses it.

An account's balance is the sum of its entries, and the sum over all accounts is zero. Positive
means money this server holds for that party (a user's balance, their earnings, the company's
fees); an ``external:<provider>`` account is the other side of money that came in (negative) or
went out (positive) through a payment provider.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from .._errors import YggdrasilError
from .._ids import new_id, now_ms
from ..store import Tx, to_json
from ._money import MAX_AMOUNT

UserAccountKind = Literal["balance", "held", "earnings", "payable", "receivable"]
USER_ACCOUNT_KINDS: tuple[UserAccountKind, ...] = (
    "balance",
    "held",
    "earnings",
    "payable",
    "receivable",
)

_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_KIND = re.compile(r"^[a-z][a-z0-9_.]{0,39}$")

Sign = Literal["non_negative", "non_positive", "any"]

# Which accounts may go negative: the one table of it. The first matching row decides.
# - a user's balance, held, earnings and payable are money held for them: never below zero;
# - a user's receivable is what they owe (after a refund that their paid-out earnings no longer
#   cover): zero or below, shown to them as a positive amount owed;
# - the company's revenue streams and fees only ever get back what they took: never below zero;
# - company:credits (goodwill the company grants) and the providers' external accounts may.
SIGN_RULES: tuple[tuple[re.Pattern[str], Sign], ...] = (
    (re.compile(r"^user:[^:]+:(balance|held|earnings|payable)$"), "non_negative"),
    (re.compile(r"^user:[^:]+:receivable$"), "non_positive"),
    (re.compile(r"^company:(fees|revenue:[^:]+)$"), "non_negative"),
    (re.compile(r"^company:credits$"), "any"),
    (re.compile(r"^external:[^:]+$"), "any"),
)


class Posting(msgspec.Struct, frozen=True):
    """``amount`` signed cents to ``account``: positive adds to it, negative takes from it."""

    account: str
    amount: int


class InsufficientFunds(YggdrasilError):
    """A posting would take an account below what its rule allows; nothing was written."""

    status = 409
    code = "insufficient_funds"
    default_message = "not enough money for this"


class UnbalancedPostings(YggdrasilError):
    """A caller built a transaction that is not one: a bug, never the user's fault."""

    code = "ledger_refused"
    default_message = "the ledger refused an invalid transaction"


def user_account(user_id: str, kind: UserAccountKind) -> str:
    if not _ID.match(user_id) or kind not in USER_ACCOUNT_KINDS:
        raise ValueError(f"not a user account: {user_id!r}, {kind!r}")
    return f"user:{user_id}:{kind}"


def company_account(kind: str) -> str:
    """``fees``, ``credits`` or ``revenue:<stream>``."""
    if kind in ("fees", "credits"):
        return f"company:{kind}"
    stream = kind.removeprefix("revenue:")
    if kind.startswith("revenue:") and _NAME.match(stream):
        return f"company:{kind}"
    raise ValueError(f"not a company account: {kind!r}")


def external_account(provider: str) -> str:
    if not _NAME.match(provider):
        raise ValueError(f"not a provider name: {provider!r}")
    return f"external:{provider}"


def sign_of(account: str) -> Sign:
    """Which side of zero ``account`` must stay on; ``ValueError`` for a name that is none of
    ours."""
    for pattern, sign in SIGN_RULES:
        if pattern.match(account):
            return sign
    raise ValueError(f"not a ledger account: {account!r}")


def owner_of(account: str) -> str | None:
    """The user whose account it is, or ``None`` for the company's and providers' accounts."""
    if account.startswith("user:"):
        return account.split(":")[1]
    return None


def allowed(account: str, balance: int) -> bool:
    sign = sign_of(account)
    if sign == "non_negative":
        return balance >= 0
    if sign == "non_positive":
        return balance <= 0
    return True


def _refuse(account: str) -> InsufficientFunds:
    """The refusal names the kind of account only (never another user's id)."""
    owner = owner_of(account)
    what = account.rsplit(":", 1)[1] if owner is not None else account
    return InsufficientFunds(f"not enough money: the {what} account would go below zero")


# Kinds with a rule on their legs: name -> (account pattern, required sign of that leg). A kind
# not listed has the general rules only (balanced, no zero leg, known accounts).
KIND_RULES: Mapping[str, tuple[tuple[str, Literal[1, -1]], ...]] = {
    "deposit": (("external:", -1),),
    "payout": (("external:", 1),),
    "hold": ((":held", 1),),
    "release": ((":held", -1),),
    "capture": ((":held", -1),),
}


def check_postings(kind: str, postings: list[Posting]) -> None:
    """Refuse (:class:`UnbalancedPostings`) what is not a valid transaction of ``kind``."""
    if not _KIND.match(kind):
        raise UnbalancedPostings(f"not a transaction kind: {kind!r}")
    if len(postings) < 2:
        raise UnbalancedPostings("a transaction has at least two postings")
    for posting in postings:
        amount = posting.amount
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise UnbalancedPostings("amounts are integer cents")
        if amount == 0 or abs(amount) > MAX_AMOUNT:
            raise UnbalancedPostings(f"a posting of {amount} cents")
        try:
            sign_of(posting.account)
        except ValueError as exc:
            raise UnbalancedPostings(str(exc)) from None
    if sum(p.amount for p in postings) != 0:
        raise UnbalancedPostings("the postings do not add up to zero")
    for marker, sign in KIND_RULES.get(kind, ()):
        for posting in postings:
            matches = (
                posting.account.startswith(marker)
                if marker.endswith(":")
                else posting.account.endswith(marker)
            )
            if matches and (posting.amount > 0) != (sign > 0):
                raise UnbalancedPostings(f"a {kind} may not post {posting.amount} to {marker}")


async def post(
    tx: Tx,
    *,
    kind: str,
    user_id: str | None,
    postings: list[Posting],
    memo: dict[str, Any],
    key: str | None = None,
    reverses: str | None = None,
) -> str:
    """Write one balanced transaction inside the caller's write unit (so that it commits with
    the caller's other writes, or not at all); its id.

    Refuses (:class:`UnbalancedPostings`) an empty, one-legged or unbalanced set, a zero leg, a
    leg of the wrong sign for ``kind`` (``KIND_RULES``) or an unknown account, and
    (:class:`InsufficientFunds`) a posting that takes an account past its ``SIGN_RULES``; a
    refusal raises, and the caller's unit rolls back. ``user_id``: on whose behalf (for the
    record); ``reverses``: the transaction this one gives back (a refund).

    Balance rows are updated in the order of their names, so that two transactions that touch
    the same accounts on PostgreSQL never wait for each other in a circle.
    """
    check_postings(kind, postings)
    txn_id = new_id("tx")
    at = now_ms()
    await tx.execute(
        "INSERT INTO ledger_transactions"
        " (txn_id, kind, user_id, memo, reverses, idempotency_key, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        txn_id,
        kind,
        user_id,
        to_json(memo),
        reverses,
        key,
        at,
    )
    net: dict[str, int] = {}
    for posting in postings:
        net[posting.account] = net.get(posting.account, 0) + posting.amount
    for account in sorted(net):
        balance = await tx.fetchval(
            "INSERT INTO ledger_balances (account, balance, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (account) DO UPDATE"
            " SET balance = ledger_balances.balance + excluded.balance,"
            " updated_at = excluded.updated_at"
            " RETURNING balance",
            account,
            net[account],
            at,
        )
        if not allowed(account, int(balance)):
            raise _refuse(account)
    values: list[str] = []
    args: list[Any] = [txn_id, at]
    for posting in postings:
        args += [posting.account, owner_of(posting.account), posting.amount]
        n = len(args)
        values.append(f"($1, ${n - 2}, ${n - 1}, ${n}, $2)")
    await tx.execute(
        "INSERT INTO ledger_entries (txn_id, account, user_id, amount, created_at) VALUES "
        + ", ".join(values),
        *args,
    )
    return txn_id
