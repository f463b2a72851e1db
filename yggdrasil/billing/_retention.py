"""The billing room's part of retention (``store.Retention``)."""

from __future__ import annotations

from ..store import Tx


async def purge_webhook_events(tx: Tx, before: int, limit: int) -> int:
    """Payment providers' webhook events received before ``before``: they are kept only to
    drop a redelivered event, and providers stop redelivering after a few days (the
    configuration keeps them at least a week). Up to ``limit``; how many went."""
    return await tx.execute(
        "DELETE FROM payment_webhook_events WHERE (provider, event_id) IN"
        " (SELECT provider, event_id FROM payment_webhook_events WHERE received_at < $1"
        " LIMIT $2)",
        before,
        limit,
    )
