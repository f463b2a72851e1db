"""The marketplace's SQL (its own tables, ``0010_marketplace.sql``).

Every read a user's request makes is scoped by their user id: a provider by its owner, a request
by its requester, a transaction by either side of it (``user_id`` or ``provider_user_id``), so
another user's id reads as missing. The one read across users is :meth:`MarketStore.active`, the
router's candidate list, which the marketplace never shows as such (only opaque provider ids).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .._errors import NotFound
from .._ids import now_ms
from ..store import Database, Row, Tx, from_json, to_json
from ._views import (
    Attempt,
    ComputeRequest,
    Dispute,
    Hardware,
    Provider,
    QualitySettings,
    RoutingDecision,
    Transaction,
    Usage,
    Window,
)


def provider_of(row: Row) -> Provider:
    return Provider(
        provider_id=row["provider_id"],
        network_id=row["network_id"],
        device_id=row["device_id"],
        models=from_json(row["models"]),
        hardware=msgspec.convert(from_json(row["hardware"]), Hardware),
        price_per_1k=int(row["price_per_1k"]),
        max_concurrent=int(row["max_concurrent"]),
        tokens_per_minute=int(row["tokens_per_minute"]),
        schedule=msgspec.convert(from_json(row["schedule"]), list[Window]),
        quality=msgspec.convert(from_json(row["quality"]), QualitySettings),
        status=row["status"],
        test_latency_ms=int(row["test_latency_ms"]),
        test_tokens_per_s=int(row["test_tokens_per_s"]),
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
    )


def request_of(row: Row) -> ComputeRequest:
    prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])
    decision = row["decision"]
    return ComputeRequest(
        request_id=row["request_id"],
        state=row["state"],
        model=row["model"],
        max_cost=int(row["max_cost"]),
        max_tokens=int(row["max_tokens"]),
        provider_id=row["provider_id"],
        decision=None
        if decision is None
        else msgspec.convert(from_json(decision), RoutingDecision),
        attempts=msgspec.convert(from_json(row["attempts"]), list[Attempt]),
        answer=row["answer"],
        finish_reason=row["finish_reason"],
        usage=Usage(prompt, completion, prompt + completion),
        cost=int(row["cost"]),
        refunded=int(row["refunded"]),
        error=row["error"],
        created_at=int(row["created_at"]),
        completed_at=None if row["completed_at"] is None else int(row["completed_at"]),
    )


def transaction_of(row: Row, user_id: str) -> Transaction:
    role: Literal["requester", "provider"] = (
        "requester" if row["user_id"] == user_id else "provider"
    )
    return Transaction(
        transaction_id=row["capture_txn"],
        request_id=row["request_id"],
        role=role,
        provider_id=row["provider_id"],
        model=row["model"],
        tokens=int(row["prompt_tokens"]) + int(row["completion_tokens"]),
        price_per_1k=int(row["price_per_1k"]),
        cost=int(row["cost"]),
        company_fee=int(row["fee"]),
        provider_earnings=int(row["earnings"]),
        refunded=int(row["refunded"]),
        status=row["state"],
        created_at=int(row["created_at"]),
    )


def dispute_of(row: Row, txn: str, user_id: str) -> Dispute:
    return Dispute(
        dispute_id=row["dispute_id"],
        transaction_id=txn,
        request_id=row["request_id"],
        role="requester" if row["user_id"] == user_id else "provider",
        reason=row["reason"],
        status=row["status"],
        refund=int(row["refund"]),
        created_at=int(row["created_at"]),
        resolved_at=None if row["resolved_at"] is None else int(row["resolved_at"]),
    )


class MarketStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ----------------------------------------------------------------- providers

    async def add_provider(self, values: dict[str, Any]) -> Provider:
        async def work(tx: Tx) -> Row:
            cols = ", ".join(values)
            marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
            row = await tx.fetchrow(
                f"INSERT INTO marketplace_providers ({cols}) VALUES ({marks}) RETURNING *",
                *values.values(),
            )
            assert row is not None
            return row

        return provider_of(await self.db.write(work))

    async def providers(self, user_id: str) -> list[Provider]:
        async def read(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT * FROM marketplace_providers WHERE user_id = $1 ORDER BY provider_id",
                user_id,
            )

        return [provider_of(row) for row in await self.db.read(read)]

    async def provider(self, user_id: str, provider_id: str) -> Provider:
        async def read(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM marketplace_providers WHERE provider_id = $1 AND user_id = $2",
                provider_id,
                user_id,
            )

        row = await self.db.read(read)
        if row is None:
            raise NotFound()
        return provider_of(row)

    async def update_provider(
        self, user_id: str, provider_id: str, values: dict[str, Any]
    ) -> Provider:
        async def work(tx: Tx) -> Row | None:
            sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(values, start=3))
            return await tx.fetchrow(
                f"UPDATE marketplace_providers SET {sets}, updated_at = ${len(values) + 3}"
                " WHERE provider_id = $1 AND user_id = $2 RETURNING *",
                provider_id,
                user_id,
                *values.values(),
                now_ms(),
            )

        row = await self.db.write(work)
        if row is None:
            raise NotFound()
        return provider_of(row)

    async def delete_provider(self, user_id: str, provider_id: str) -> None:
        async def work(tx: Tx) -> int:
            return await tx.execute(
                "DELETE FROM marketplace_providers WHERE provider_id = $1 AND user_id = $2",
                provider_id,
                user_id,
            )

        if not await self.db.write(work):
            raise NotFound()

    async def active(self) -> list[tuple[Provider, str]]:
        """Every active provider and its owner (the router's candidates; never shown)."""

        async def read(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT * FROM marketplace_providers WHERE status = 'active' ORDER BY provider_id"
            )

        return [(provider_of(row), row["user_id"]) for row in await self.db.read(read)]

    async def owner(self, provider_id: str) -> str | None:
        async def read(tx: Tx) -> Any:
            return await tx.fetchval(
                "SELECT user_id FROM marketplace_providers WHERE provider_id = $1", provider_id
            )

        found = await self.db.read(read)
        return None if found is None else str(found)

    # ----------------------------------------------------------------- requests

    async def add_request(self, values: dict[str, Any]) -> ComputeRequest:
        async def work(tx: Tx) -> Row:
            cols = ", ".join(values)
            marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
            row = await tx.fetchrow(
                f"INSERT INTO marketplace_requests ({cols}) VALUES ({marks}) RETURNING *",
                *values.values(),
            )
            assert row is not None
            return row

        return request_of(await self.db.write(work))

    async def request_row(self, user_id: str, request_id: str) -> Row:
        async def read(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM marketplace_requests WHERE request_id = $1 AND user_id = $2",
                request_id,
                user_id,
            )

        row = await self.db.read(read)
        if row is None:
            raise NotFound()
        return row

    async def by_key(self, user_id: str, key: str) -> Row | None:
        async def read(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM marketplace_requests WHERE user_id = $1 AND idempotency_key = $2",
                user_id,
                key,
            )

        return await self.db.read(read)

    async def delete_request(self, request_id: str) -> None:
        async def work(tx: Tx) -> None:
            await tx.execute("DELETE FROM marketplace_requests WHERE request_id = $1", request_id)

        await self.db.write(work)

    async def set_request(self, request_id: str, values: dict[str, Any]) -> None:
        async def work(tx: Tx) -> None:
            sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(values, start=2))
            await tx.execute(
                f"UPDATE marketplace_requests SET {sets} WHERE request_id = $1",
                request_id,
                *values.values(),
            )

        await self.db.write(work)

    # ----------------------------------------------------------------- transactions

    async def transactions(
        self, user_id: str, *, before: str | None, limit: int
    ) -> tuple[list[Transaction], str | None]:
        async def read(tx: Tx) -> list[Row]:
            after = "" if before is None else " AND capture_txn < $2"
            args: list[Any] = [user_id] + ([] if before is None else [before])
            return await tx.fetch(
                "SELECT * FROM marketplace_requests WHERE (user_id = $1 OR provider_user_id = $1)"
                f" AND capture_txn IS NOT NULL{after} ORDER BY capture_txn DESC"
                f" LIMIT {limit + 1}",
                *args,
            )

        rows = await self.db.read(read)
        items = [transaction_of(row, user_id) for row in rows[:limit]]
        more = len(rows) > limit
        return items, (items[-1].transaction_id if more and items else None)

    async def transaction_row(self, user_id: str, transaction_id: str) -> Row:
        async def read(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM marketplace_requests WHERE capture_txn = $1"
                " AND (user_id = $2 OR provider_user_id = $2)",
                transaction_id,
                user_id,
            )

        row = await self.db.read(read)
        if row is None:
            raise NotFound()
        return row

    async def rows_for(self, column: str, user_id: str) -> list[Row]:
        """Every request of a requester (``user_id``) or served for a provider's owner
        (``provider_user_id``), for analytics."""
        assert column in ("user_id", "provider_user_id")

        async def read(tx: Tx) -> list[Row]:
            return await tx.fetch(
                f"SELECT * FROM marketplace_requests WHERE {column} = $1 ORDER BY created_at",
                user_id,
            )

        return await self.db.read(read)

    # ----------------------------------------------------------------- disputes

    async def dispute_row(self, user_id: str, dispute_id: str) -> Row:
        async def read(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM marketplace_disputes WHERE dispute_id = $1"
                " AND (user_id = $2 OR provider_user_id = $2)",
                dispute_id,
                user_id,
            )

        row = await self.db.read(read)
        if row is None:
            raise NotFound()
        return row

    async def disputes(self, user_id: str) -> list[Row]:
        async def read(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT * FROM marketplace_disputes WHERE user_id = $1 OR provider_user_id = $1"
                " ORDER BY created_at DESC LIMIT 100",
                user_id,
            )

        return await self.db.read(read)

    async def add_dispute(self, values: dict[str, Any]) -> Row:
        async def work(tx: Tx) -> Row:
            row = await tx.fetchrow(
                "INSERT INTO marketplace_disputes (dispute_id, request_id, user_id,"
                " provider_user_id, reason, status, refund, created_at)"
                " VALUES ($1, $2, $3, $4, $5, 'open', 0, $6) RETURNING *",
                *values.values(),
            )
            assert row is not None
            return row

        return await self.db.write(work)

    async def dispute_any(self, dispute_id: str) -> Row:
        """A dispute whoever opened it (the operator's resolution)."""

        async def read(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM marketplace_disputes WHERE dispute_id = $1", dispute_id
            )

        row = await self.db.read(read)
        if row is None:
            raise NotFound()
        return row

    async def request_any(self, request_id: str) -> Row:
        async def read(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM marketplace_requests WHERE request_id = $1", request_id
            )

        row = await self.db.read(read)
        if row is None:
            raise NotFound()
        return row

    async def add_refund(self, request_id: str, amount: int) -> None:
        """Count a refund of the request's cost; fully refunded, it is ``REFUNDED``."""

        async def work(tx: Tx) -> None:
            await tx.execute(
                "UPDATE marketplace_requests SET refunded = refunded + $2,"
                " state = CASE WHEN refunded + $2 >= cost THEN 'REFUNDED' ELSE state END"
                " WHERE request_id = $1",
                request_id,
                amount,
            )

        await self.db.write(work)

    async def resolve_dispute(self, dispute_id: str, refund: int) -> Row | None:
        """Close an open dispute (compare-and-set: one resolution wins)."""

        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "UPDATE marketplace_disputes SET status = 'resolved', refund = $2,"
                " resolved_at = $3 WHERE dispute_id = $1 AND status = 'open' RETURNING *",
                dispute_id,
                refund,
                now_ms(),
            )

        return await self.db.write(work)


__all__ = ["MarketStore", "to_json"]
