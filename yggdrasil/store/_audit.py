"""The audit log: append-only, hash-chained, written by every room inside its own transactions.

Each entry's hash covers the previous entry's hash and the entry itself, so rewriting or
removing one breaks the chain from there on (:meth:`AuditLog.verify_chain`). The single
``audit_head`` row holds the newest entry; taking its lock serializes appends.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from .._errors import YggdrasilError
from .._ids import now_ms
from ._db import Database, Row, Tx
from ._json import encoder, from_json, to_json
from ._scope import MAX_PAGE


class AuditEntry(msgspec.Struct, frozen=True):
    seq: int
    at: int
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditChainBroken(YggdrasilError):
    code = "audit_chain_broken"
    default_message = "the audit log's hash chain is broken"


def _chain_hash(
    prev: str, seq: int, at: int, actor: str, action: str, subject: str, detail: str
) -> str:
    payload = encoder.encode([prev, seq, at, actor, action, subject, detail])
    return hashlib.sha256(payload).hexdigest()


async def append_audit(
    tx: Tx, actor: str, action: str, subject: str = "", detail: dict[str, Any] | None = None
) -> int:
    """Append one audit entry inside ``tx``; the head row serializes concurrent appends."""
    head = await _lock_head(tx)
    seq = int(head["seq"]) + 1
    at = now_ms()
    detail_text = to_json(detail or {})
    digest = _chain_hash(head["hash"], seq, at, actor, action, subject, detail_text)
    await tx.execute(
        "INSERT INTO audit_log (seq, at, actor, action, subject, detail, prev_hash, hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        seq,
        at,
        actor,
        action,
        subject,
        detail_text,
        head["hash"],
        digest,
    )
    await tx.execute("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", seq, digest)
    return seq


async def audit_entries_about(tx: Tx, user_id: str) -> list[Row]:
    """Every entry a user did or that names them (their data export), oldest first, without
    the chain's hashes."""
    rows = await tx.fetch(
        "SELECT seq, at, actor, action, subject, detail FROM audit_log"
        " WHERE actor = $1 OR subject = $1 OR subject = $2 ORDER BY seq",
        user_id,
        f"user:{user_id}",
    )
    for row in rows:
        row["detail"] = from_json(row["detail"])
    return rows


async def _lock_head(tx: Tx) -> Row:
    # An UPDATE takes the row lock on PostgreSQL; SQLite already holds the write lock.
    await tx.execute("UPDATE audit_head SET seq = seq WHERE id = 1")
    row = await tx.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1")
    assert row is not None
    return row


class AuditLog:
    """The audit log over a :class:`Database`, for writes outside another unit of work and for
    operators' reads (ids and actions only, no tenant data)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(
        self, actor: str, action: str, subject: str = "", detail: dict[str, Any] | None = None
    ) -> int:
        async def work(tx: Tx) -> int:
            return await append_audit(tx, actor, action, subject, detail)

        return await self.db.write(work)

    async def entries(self, *, after: int = 0, limit: int = MAX_PAGE) -> list[AuditEntry]:
        """Operator read of the audit log (no tenant data beyond ids)."""

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit
            )

        return [
            AuditEntry(**{**row, "detail": from_json(row["detail"])})
            for row in await self.db.read(work)
        ]

    async def verify_chain(self) -> int:
        """Recompute every hash; returns the number of entries, raises :class:`AuditChainBroken`."""

        async def work(tx: Tx) -> tuple[list[Row], Row | None]:
            rows = await tx.fetch("SELECT * FROM audit_log ORDER BY seq")
            head = await tx.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1")
            return rows, head

        rows, head = await self.db.read(work)
        prev, expected_seq = "", 1
        for row in rows:
            digest = _chain_hash(
                prev,
                row["seq"],
                row["at"],
                row["actor"],
                row["action"],
                row["subject"],
                row["detail"],
            )
            if row["seq"] != expected_seq or row["prev_hash"] != prev or row["hash"] != digest:
                raise AuditChainBroken(f"audit entry {row['seq']} does not match its chain")
            prev, expected_seq = digest, expected_seq + 1
        if head is None or head["seq"] != len(rows) or head["hash"] != prev:
            raise AuditChainBroken("the audit head does not match the last entry")
        return len(rows)
