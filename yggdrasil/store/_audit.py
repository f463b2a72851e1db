"""The audit log: append-only, hash-chained, written by every room inside its own transactions.

Each entry's hash covers the previous entry's hash and the entry itself, so rewriting or
removing one breaks the chain from there on (:meth:`AuditLog.verify_chain`). The single
``audit_head`` row holds the newest entry.

Appending and chaining are two steps. A room's transaction appends to ``audit_pending``, which
takes no lock that other writers share; the sealer (:func:`seal_audit_forever`, one per
instance) moves pending entries into the chain in the order they were appended, a batch per
transaction, serialized on the head row. Until then (a fraction of a second) an entry is
committed but not yet chained: it is in data exports and is sealed before the operators' reads
and every verification. Before this split every audited write held the head row's lock until
its commit, so all writes of the cluster waited for each other's disk flush.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import msgspec
import trio

from .._errors import StoreUnavailable, UniqueViolation, YggdrasilError
from .._ids import now_ms
from ._db import Database, Row, Tx
from ._json import encoder, from_json, to_json
from ._scope import MAX_PAGE

logger = logging.getLogger(__name__)


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
) -> None:
    """Record one audit entry inside ``tx``: committed with it, or not at all. It joins the hash
    chain when the store's sealer next runs (:meth:`AuditLog.seal`); no lock is shared with
    other writers."""
    await tx.execute(
        "INSERT INTO audit_pending (at, actor, action, subject, detail)"
        " VALUES ($1, $2, $3, $4, $5)",
        now_ms(),
        actor,
        action,
        subject,
        to_json(detail or {}),
    )


async def audit_entries_about(tx: Tx, user_id: str) -> list[Row]:
    """Every entry a user did or that names them (their data export), oldest first, without
    the chain's hashes; entries not sealed into the chain yet come last, with no ``seq``."""
    about = "actor = $1 OR subject = $1 OR subject = $2"
    sealed = await tx.fetch(
        f"SELECT seq, at, actor, action, subject, detail FROM audit_log WHERE {about} ORDER BY seq",
        user_id,
        f"user:{user_id}",
    )
    pending = await tx.fetch(
        f"SELECT at, actor, action, subject, detail FROM audit_pending WHERE {about} ORDER BY id",
        user_id,
        f"user:{user_id}",
    )
    rows = sealed + [{"seq": None, **row} for row in pending]
    for row in rows:
        row["detail"] = from_json(row["detail"])
    return rows


async def _lock_head(tx: Tx) -> Row:
    # An UPDATE takes the row lock on PostgreSQL; SQLite already holds the write lock.
    await tx.execute("UPDATE audit_head SET seq = seq WHERE id = 1")
    row = await tx.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1")
    assert row is not None
    return row


# Statement shapes for sealing: a batch goes in chunks of these sizes, so that PostgreSQL's
# statement cache holds three shapes rather than one per batch size.
_CHUNKS = (128, 16, 1)
SEAL_BATCH = 512


def _chunks(rows: list[Row]) -> list[list[Row]]:
    chunks, at = [], 0
    for size in _CHUNKS:
        while len(rows) - at >= size:
            chunks.append(rows[at : at + size])
            at += size
    return chunks


def _placeholders(rows: int, columns: int, first: int = 1) -> str:
    return ", ".join(
        "(" + ", ".join(f"${first + r * columns + c}" for c in range(columns)) + ")"
        for r in range(rows)
    )


async def seal_pending(tx: Tx, limit: int = SEAL_BATCH) -> int:
    """Move up to ``limit`` pending entries, oldest first, into the hash chain, inside ``tx``;
    how many it moved. Sealers serialize on the chain's head row (and only they do)."""
    head = await _lock_head(tx)
    pending = await tx.fetch("SELECT * FROM audit_pending ORDER BY id LIMIT $1", limit)
    seq, prev = int(head["seq"]), str(head["hash"])
    for chunk in _chunks(pending):
        values: list[Any] = []
        for row in chunk:
            seq += 1
            digest = _chain_hash(
                prev, seq, row["at"], row["actor"], row["action"], row["subject"], row["detail"]
            )
            values += [seq, row["at"], row["actor"], row["action"], row["subject"]]
            values += [row["detail"], prev, digest]
            prev = digest
        await tx.execute(
            "INSERT INTO audit_log (seq, at, actor, action, subject, detail, prev_hash, hash)"
            f" VALUES {_placeholders(len(chunk), 8)}",
            *values,
        )
        ids = ", ".join(f"${i + 1}" for i in range(len(chunk)))
        await tx.execute(
            f"DELETE FROM audit_pending WHERE id IN ({ids})", *[row["id"] for row in chunk]
        )
    if pending:
        await tx.execute("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", seq, prev)
    return len(pending)


class AuditLog:
    """The audit log over a :class:`Database`: writes outside another unit of work, the sealer,
    and operators' reads (ids and actions only, no tenant data)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(
        self, actor: str, action: str, subject: str = "", detail: dict[str, Any] | None = None
    ) -> None:
        async def work(tx: Tx) -> None:
            await append_audit(tx, actor, action, subject, detail)

        await self.db.write(work)

    async def seal(self) -> int:
        """Seal every entry appended before the call into the chain; how many. Costs one read
        when nothing is pending."""

        async def anything(tx: Tx) -> Any:
            return await tx.fetchval("SELECT 1 FROM audit_pending LIMIT 1")

        if not await self.db.read(anything):
            return 0
        total = 0
        while True:
            sealed = await self.db.write(seal_pending)
            total += sealed
            if sealed < SEAL_BATCH:
                return total

    async def entries(self, *, after: int = 0, limit: int = MAX_PAGE) -> list[AuditEntry]:
        """Operator read of the audit log (no tenant data beyond ids), sealed first."""
        await self.seal()

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit
            )

        return [
            AuditEntry(**{**row, "detail": from_json(row["detail"])})
            for row in await self.db.read(work)
        ]

    async def verify_chain(self) -> int:
        """Seal what is pending, then recompute every hash; returns the number of entries,
        raises :class:`AuditChainBroken`."""
        try:
            await self.seal()
        except UniqueViolation:
            raise AuditChainBroken("an entry occupies the next place in the chain") from None

        async def work(tx: Tx) -> tuple[list[Row], Row]:
            # Under the head's lock: no sealer moves the head while the entries are read.
            head = await _lock_head(tx)
            return await tx.fetch("SELECT * FROM audit_log ORDER BY seq"), head

        rows, head = await self.db.write(work)
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
        if head["seq"] != len(rows) or head["hash"] != prev:
            raise AuditChainBroken("the audit head does not match the last entry")
        return len(rows)


async def seal_audit_forever(log: AuditLog, interval_s: float) -> None:
    """The sealer: seal what is pending every ``interval_s`` until cancelled. A store that is
    unreachable for a while only delays sealing (the entries wait, committed, in
    ``audit_pending``)."""
    while True:
        try:
            await log.seal()
        except StoreUnavailable as exc:
            logger.info("audit sealing waits for the store: %s", exc.message)
        except UniqueViolation:
            # Someone wrote into audit_log behind the store's back: the chain is broken, and
            # verification says so; keep the pending entries and try again later.
            logger.error("audit sealing failed: the chain's next place is taken (tampering?)")
            await trio.sleep(60 * interval_s)
        await trio.sleep(interval_s)
