"""The marketplace's part of a user's data export and of deleting their account (a ``RoomData``
the composition hands to the accounts room).

Export: the user's provider registrations; the requests they made (with their prompts and
answers); the requests their providers served (without the requester's prompt, answer or
identity: those are another user's data); the disputes on either side, as the API shows them.

Deletion: the user's provider registrations go. The requests and disputes stay for the books
(their amounts match ledger entries that are never deleted), **pseudonymized**: the user's id
becomes a fresh random pseudonym on every side it appears, and what the user wrote (prompts,
the answers they were given, their idempotency keys' fingerprints, dispute reasons) is erased.
"""

from __future__ import annotations

from typing import Any

from .._ids import new_id
from ..store import Tx, from_json

_REQUEST_COLUMNS = (
    "request_id, model, max_cost, max_tokens, state, provider_id, price_per_1k,"
    " prompt_tokens, completion_tokens, cost, fee, earnings, refunded, capture_txn,"
    " finish_reason, error, created_at, completed_at"
)
_SERVED_COLUMNS = (
    "request_id, provider_id, model, state, price_per_1k, prompt_tokens, completion_tokens,"
    " cost, fee, earnings, refunded, capture_txn, created_at, completed_at"
)
_DISPUTE_COLUMNS = "dispute_id, request_id, reason, status, refund, created_at, resolved_at"


class MarketplaceData:
    """What the accounts room calls (through the composition) on export and deletion."""

    async def export(self, tx: Tx, user_id: str) -> dict[str, Any]:
        providers = await tx.fetch(
            "SELECT * FROM marketplace_providers WHERE user_id = $1 ORDER BY created_at",
            user_id,
        )
        requests = await tx.fetch(
            f"SELECT {_REQUEST_COLUMNS}, messages, answer FROM marketplace_requests"
            " WHERE user_id = $1 ORDER BY created_at",
            user_id,
        )
        served = await tx.fetch(
            f"SELECT {_SERVED_COLUMNS} FROM marketplace_requests WHERE provider_user_id = $1"
            " ORDER BY created_at",
            user_id,
        )
        opened = await tx.fetch(
            f"SELECT {_DISPUTE_COLUMNS} FROM marketplace_disputes WHERE user_id = $1"
            " ORDER BY created_at",
            user_id,
        )
        against = await tx.fetch(
            f"SELECT {_DISPUTE_COLUMNS} FROM marketplace_disputes WHERE provider_user_id = $1"
            " ORDER BY created_at",
            user_id,
        )
        return {
            "providers": [
                {
                    **row,
                    **{
                        key: from_json(row[key])
                        for key in ("models", "hardware", "schedule", "quality")
                    },
                }
                for row in providers
            ],
            "requests": [{**row, "messages": from_json(row["messages"])} for row in requests],
            "served": served,
            "disputes": [
                *({**row, "role": "requester"} for row in opened),
                *({**row, "role": "provider"} for row in against),
            ],
        }

    async def forget(self, tx: Tx, user_id: str) -> None:
        await tx.execute("DELETE FROM marketplace_providers WHERE user_id = $1", user_id)
        pseudonym = new_id("gone")
        await tx.execute(
            "UPDATE marketplace_requests SET user_id = $2, messages = '[]', answer = '',"
            " fingerprint = '' WHERE user_id = $1",
            user_id,
            pseudonym,
        )
        await tx.execute(
            "UPDATE marketplace_requests SET provider_user_id = $2 WHERE provider_user_id = $1",
            user_id,
            pseudonym,
        )
        await tx.execute(
            "UPDATE marketplace_disputes SET user_id = $2, reason = '' WHERE user_id = $1",
            user_id,
            pseudonym,
        )
        await tx.execute(
            "UPDATE marketplace_disputes SET provider_user_id = $2 WHERE provider_user_id = $1",
            user_id,
            pseudonym,
        )
