"""The marketplace's part of retention (``store.Retention``): old requests, with their prompts
and answers, go; the ledger's entries of what they cost stay (pseudonymized with the account,
never deleted)."""

from __future__ import annotations

from ..store import Tx

_FINISHED = "('COMPLETED', 'FAILED', 'CANCELLED', 'REFUNDED')"


async def purge_requests(tx: Tx, before: int, limit: int) -> int:
    """Up to ``limit`` finished requests made before ``before`` with no open dispute, and their
    resolved disputes; how many requests went. A request still running, or disputed and not yet
    resolved, stays until it is over."""
    rows = await tx.fetch(
        "SELECT request_id FROM marketplace_requests r WHERE r.created_at < $1"
        f" AND r.state IN {_FINISHED} AND NOT EXISTS (SELECT 1 FROM marketplace_disputes d"
        " WHERE d.request_id = r.request_id AND d.status = 'open')"
        " ORDER BY r.created_at LIMIT $2",
        before,
        limit,
    )
    ids = [row["request_id"] for row in rows]
    if not ids:
        return 0
    marks = ", ".join(f"${i + 1}" for i in range(len(ids)))
    await tx.execute(f"DELETE FROM marketplace_disputes WHERE request_id IN ({marks})", *ids)
    return await tx.execute(f"DELETE FROM marketplace_requests WHERE request_id IN ({marks})", *ids)
