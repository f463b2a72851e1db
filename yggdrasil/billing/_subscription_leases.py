"""A user's billing lease and the current subscription row: what the subscription requests
and the renewal job share.

Everything that charges or changes a user's subscription takes the user's lease first (one row
of ``subscription_leases``, claimed by compare-and-set), and gives it back in the transaction
that applies the change; see ``_subscriptions`` and ``_renewals``.
"""

from __future__ import annotations

import contextlib
import secrets
from datetime import UTC, datetime

import trio

from .._errors import YggdrasilError
from .._ids import now_ms
from ..store import Database, Row, Tx


class LeaseLost(YggdrasilError):
    """This instance's hold on a user's billing lapsed and another took it: nothing written."""

    status = 409
    code = "billing_busy"
    default_message = "another billing operation of this account took over; try again"


def day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


async def current_row(tx: Tx, user_id: str) -> Row | None:
    """``user_id``'s current (not ended) subscription row."""
    return await tx.fetchrow(
        "SELECT * FROM subscriptions WHERE user_id = $1 AND state <> 'ended'", user_id
    )


async def claim_lease(db: Database, user_id: str, lease_ms: int) -> str | None:
    """Take ``user_id``'s billing lease for ``lease_ms``: its token, or ``None`` while another
    holds it. One statement (an upsert that only replaces a lapsed lease), so two instances
    claiming at once get one winner on either backend."""
    token = secrets.token_hex(12)

    async def claim(tx: Tx) -> str | None:
        now = now_ms()
        won = await tx.fetchval(
            "INSERT INTO subscription_leases (user_id, token, lease_until) VALUES ($1, $2, $3)"
            " ON CONFLICT (user_id) DO UPDATE SET token = excluded.token,"
            " lease_until = excluded.lease_until"
            " WHERE subscription_leases.lease_until < $4 RETURNING token",
            user_id,
            token,
            now + lease_ms,
            now,
        )
        return token if won == token else None

    return await db.write(claim)


async def release_lease(tx: Tx, user_id: str, token: str) -> None:
    """Give the lease back inside the applying transaction; :class:`LeaseLost` (rolling it
    back) if it is not ours any more."""
    released = await tx.execute(
        "DELETE FROM subscription_leases WHERE user_id = $1 AND token = $2", user_id, token
    )
    if released != 1:
        raise LeaseLost()


async def drop_lease(db: Database, user_id: str, token: str) -> None:
    """Give the lease back after a failure (best effort: otherwise it lapses)."""
    with (
        trio.CancelScope(shield=True),
        trio.move_on_after(5),
        contextlib.suppress(YggdrasilError),
    ):
        await db.write(
            lambda tx: tx.execute(
                "DELETE FROM subscription_leases WHERE user_id = $1 AND token = $2",
                user_id,
                token,
            )
        )


async def end_subscriptions_of_user(tx: Tx, user_id: str, at: int) -> int:
    """Account deletion: end ``user_id``'s current subscription as of ``at`` inside the deleting
    transaction, so that no renewal charges a deleted account (nothing is refunded; the ended
    row and the invoices stay, as the law keeps invoices). How many ended (0 or 1)."""
    return await tx.execute(
        "UPDATE subscriptions SET state = 'ended', ended_at = $2, end_reason = 'account_deleted',"
        " charge_key = NULL, next_retry_at = NULL WHERE user_id = $1 AND state <> 'ended'",
        user_id,
        at,
    )
