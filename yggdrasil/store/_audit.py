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
        """Seal what is pending, then recompute every hash from the retention cut on (the seq
        and hash of the last entry retention removed, :func:`cut_audit`); returns the number of
        entries checked, raises :class:`AuditChainBroken` naming the first entry that does not
        match."""
        try:
            await self.seal()
        except UniqueViolation:
            head = await self.db.read(
                lambda tx: tx.fetchval("SELECT seq FROM audit_head WHERE id = 1")
            )
            raise AuditChainBroken(
                f"audit entry {int(head) + 1} was written behind the sealer's back"
            ) from None

        async def work(tx: Tx) -> tuple[list[Row], Row, Row]:
            # Under the head's lock: no sealer moves the head, and no cut moves the start,
            # while the entries are read.
            head = await _lock_head(tx)
            cut = await _cut(tx)
            return await tx.fetch("SELECT * FROM audit_log ORDER BY seq"), head, cut

        rows, head, cut = await self.db.write(work)
        check_chain(rows, head, cut)
        return len(rows)

    async def span(self) -> tuple[int, int]:
        """The first and the last seq the chain holds now (the first follows the retention
        cut; with no entries, the last is the cut)."""

        async def work(tx: Tx) -> tuple[int, int]:
            cut = await _cut(tx)
            head = await tx.fetchval("SELECT seq FROM audit_head WHERE id = 1")
            return int(cut["seq"]) + 1, int(head)

        return await self.db.read(work)

    async def cut(self, before_ms: int, *, at: int, limit: int = 1000) -> int:
        """Retention: remove up to ``limit`` of the oldest entries written before
        ``before_ms`` (see :func:`cut_audit`); how many."""
        return await self.db.write(lambda tx: cut_audit(tx, before_ms, at=at, limit=limit))

    async def entries_about(
        self, user_id: str, *, after: int = 0, limit: int = MAX_PAGE
    ) -> list[AuditEntry]:
        """A user's own trail, oldest first from ``after``: the entries they did
        (``actor``) or that are about them (``subject`` is their id), sealed first. Hashes
        are left out (empty): they chain everyone's entries together."""
        await self.seal()

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT * FROM audit_log WHERE (actor = $1 OR subject = $1 OR subject = $2)"
                " AND seq > $3 ORDER BY seq LIMIT $4",
                user_id,
                f"user:{user_id}",
                after,
                limit,
            )

        vault = self.db.vault  # their own client addresses, sealed at rest, opened for them
        return [
            AuditEntry(
                **{
                    **row,
                    "detail": vault.open_detail(from_json(row["detail"])),
                    "prev_hash": "",
                    "hash": "",
                }
            )
            for row in await self.db.read(work)
        ]

    async def search(
        self,
        *,
        actor: str | None = None,
        subject: str | None = None,
        action: str | None = None,
        since: int | None = None,
        until: int | None = None,
        after: int = 0,
        limit: int = MAX_PAGE,
    ) -> list[AuditEntry]:
        """Operator read with filters (each optional, all must hold): the exact ``actor`` and
        ``subject``, an ``action`` or its prefix ending in ``.`` (``login.``), written at or
        after ``since`` and before ``until`` (ms); oldest first from ``after``."""
        await self.seal()
        where, args = ["seq > $1"], [after]

        def add(clause: str, value: Any) -> None:
            args.append(value)
            where.append(clause.replace("?", f"${len(args)}"))

        if actor is not None:
            add("actor = ?", actor)
        if subject is not None:
            add("subject = ?", subject)
        if action is not None and action.endswith("."):
            # substr compares a prefix alike on both backends, without LIKE's wildcards
            add(f"substr(action, 1, {len(action)}) = ?", action)
        elif action is not None:
            add("action = ?", action)
        if since is not None:
            add("at >= ?", since)
        if until is not None:
            add("at < ?", until)
        args.append(limit)
        sql = f"SELECT * FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq LIMIT ${len(args)}"

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(sql, *args)

        return [
            AuditEntry(**{**row, "detail": from_json(row["detail"])})
            for row in await self.db.read(work)
        ]


_CUT_MIGRATION = 12
"""The migration that brings ``audit_cut``: a database from before it (a backup being restored
by a newer version, which migrates it only when it starts) has never been cut."""


async def _cut(tx: Tx) -> Row:
    if not await tx.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", _CUT_MIGRATION):
        return {"seq": 0, "hash": "", "at": 0}
    row = await tx.fetchrow("SELECT seq, hash, at FROM audit_cut WHERE id = 1")
    assert row is not None
    return row


def check_chain(rows: list[Row], head: Row, cut: Row) -> None:
    """Recompute the chain of ``rows`` (oldest first) from the retention ``cut`` to the
    ``head``; :class:`AuditChainBroken` naming the first entry that does not match. The newest
    ``audit.cut`` entry kept must name the cut (a cut moved behind the job's back shows)."""
    prev, expected_seq = str(cut["hash"]), int(cut["seq"]) + 1
    newest_cut: Row | None = None
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
            raise AuditChainBroken(f"audit entry {expected_seq} does not match its chain")
        if row["action"] == CUT_ACTION:
            newest_cut = row
        prev, expected_seq = digest, expected_seq + 1
    if head["seq"] != expected_seq - 1 or head["hash"] != prev:
        raise AuditChainBroken(f"audit entry {expected_seq - 1} does not match the chain's head")
    if int(cut["seq"]) > 0:
        named = None if newest_cut is None else from_json(newest_cut["detail"])
        if named != {"seq": int(cut["seq"]), "hash": str(cut["hash"])}:
            raise AuditChainBroken(
                f"audit entry {int(cut['seq']) + 1} does not match its chain"
                " (the retention cut is not the one the log recorded)"
            )


CUT_ACTION = "audit.cut"
"""The entry a retention cut appends, naming the last entry it removed (``seq``, ``hash``)."""


async def cut_audit(tx: Tx, before_ms: int, *, at: int, limit: int = 1000) -> int:
    """Retention, inside ``tx``: remove up to ``limit`` of the oldest entries of the chain
    written before ``before_ms`` (a prefix: it stops at the first younger entry), record the
    last one removed as the cut (``audit_cut``, which the database lets move only forward and
    only to an entry's own hash) and append an ``audit.cut`` entry naming it. How many went.
    Serialized with the sealers and verification on the chain's head row."""
    await _lock_head(tx)
    # What is pending is older than anything appended from now on: chain it first, so that
    # the cut does not depend on when the sealer last ran.
    while await seal_pending(tx) == SEAL_BATCH:
        pass
    cut = await _cut(tx)
    rows = await tx.fetch(
        "SELECT seq, at, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        cut["seq"],
        limit,
    )
    last: Row | None = None
    for row in rows:
        if row["at"] >= before_ms:
            break
        last = row
    if last is None:
        return 0
    # The triggers let exactly this through: the cut moves to an entry of the chain, then
    # entries up to it may go.
    await tx.execute(
        "UPDATE audit_cut SET seq = $1, hash = $2, at = $3 WHERE id = 1",
        last["seq"],
        last["hash"],
        at,
    )
    removed = await tx.execute("DELETE FROM audit_log WHERE seq <= $1", last["seq"])
    await append_audit(
        tx, "retention", CUT_ACTION, "", {"seq": int(last["seq"]), "hash": str(last["hash"])}
    )
    # The record of the cut joins the chain in the cut's own transaction (under the head's
    # lock, as the sealer would), so a verification never sees a cut without its record.
    while await seal_pending(tx) == SEAL_BATCH:
        pass
    return removed


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
