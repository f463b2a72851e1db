"""Idempotency keys: a money-moving request runs once per key, and every repetition gets the first
answer (SECURITY.md, "Money").

:func:`idempotent` runs the work and stores its answer under ``(scope, key)`` in ONE write unit,
so either both are committed or neither is. The key's row is inserted first and is the lock:

- on PostgreSQL, a second transaction inserting the same key waits for the first one's commit
  (``INSERT ... ON CONFLICT DO NOTHING`` waits on the unique index), then finds the row and
  replays its answer; had the first rolled back, the second inserts and runs the work itself;
- on SQLite every write runs on the one writer connection, one after the other, so the second
  simply finds the committed row.

A request that failed stored nothing: repeating it with the same key runs it again (after the
user topped up their balance, say). The request is compared by a SHA-256 of its canonical JSON
(or of its bytes): the same key with another request is :class:`IdempotencyKeyReused` (422), and
nothing happens. A scope names the operation and, for requests of a user, the user, so that one
user's key never answers another user's request. Keys are kept for ``idempotency_ttl_s`` (at least
24 hours) and then removed by :func:`purge_idempotency_keys` (a periodic job of the store).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from .._errors import Invalid
from .._ids import now_ms
from ..store import Database, Tx, to_json

T = TypeVar("T")

MAX_KEY_LENGTH = 255


class IdempotencyKeyReused(Invalid):
    code = "idempotency_key_reused"
    default_message = "this idempotency key was used for a different request"


class IdempotencyKeyRequired(Invalid):
    """A money-moving request without a usable ``Idempotency-Key`` header."""

    status = 400
    code = "idempotency_key_required"
    default_message = (
        "money-moving requests need an Idempotency-Key header (1 to 255 visible ASCII characters)"
    )


def check_key(key: str | None) -> str:
    """``key`` if it is a usable idempotency key, else :class:`IdempotencyKeyRequired`."""
    if key is None or not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise IdempotencyKeyRequired()
    if not all("!" <= ch <= "~" for ch in key):
        raise IdempotencyKeyRequired()
    return key


def fingerprint(request: bytes | dict[str, Any]) -> str:
    raw = request if isinstance(request, bytes) else to_json(request).encode()
    return hashlib.sha256(raw).hexdigest()


class Codec(msgspec.Struct, frozen=True):
    """How an answer is stored: ``encode(answer) -> str`` and ``decode(str) -> answer``."""

    encode: Callable[[Any], str]
    decode: Callable[[str], Any]


def struct_codec(kind: type[T]) -> Codec:
    """The codec of a msgspec Struct (or anything msgspec converts) as JSON."""
    decoder = msgspec.json.Decoder(kind)
    return Codec(lambda value: msgspec.json.encode(value).decode(), decoder.decode)


async def _claim(tx: Tx, scope: str, key: str, digest: str, ttl_s: int) -> str | None:
    """Insert the key's row (waiting for a concurrent holder of the same key to finish); ``None``
    if it is ours now, else the stored answer. :class:`IdempotencyKeyReused` when the stored
    request differs."""
    at = now_ms()
    inserted = await tx.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, answer, created_at, expires_at)"
        " VALUES ($1, $2, $3, '', $4, $5) ON CONFLICT (scope, key) DO NOTHING",
        scope,
        key,
        digest,
        at,
        at + ttl_s * 1000,
    )
    if inserted == 1:
        return None
    row = await tx.fetchrow(
        "SELECT request_hash, answer FROM idempotency_keys WHERE scope = $1 AND key = $2",
        scope,
        key,
    )
    if row is None:  # purged between the two statements: a fresh key after all
        return await _claim(tx, scope, key, digest, ttl_s)
    if row["request_hash"] != digest:
        raise IdempotencyKeyReused()
    answer: str = row["answer"]
    return answer


async def run_once(
    tx: Tx,
    *,
    scope: str,
    key: str,
    request: bytes | dict[str, Any],
    work: Callable[[Tx], Awaitable[T]],
    codec: Codec,
    ttl_s: int,
) -> T:
    """Inside the caller's write unit: ``work(tx)`` and its answer stored under ``(scope, key)``,
    or the answer stored before. For callers that must add their own writes to the same
    transaction; everyone else uses :func:`idempotent`."""
    stored = await _claim(tx, scope, check_key(key), fingerprint(request), ttl_s)
    if stored is not None:
        replayed: T = codec.decode(stored)
        return replayed
    answer = await work(tx)
    await tx.execute(
        "UPDATE idempotency_keys SET answer = $3 WHERE scope = $1 AND key = $2",
        scope,
        key,
        codec.encode(answer),
    )
    return answer


async def idempotent(
    db: Database,
    *,
    scope: str,
    key: str,
    request: bytes | dict[str, Any],
    work: Callable[[Tx], Awaitable[T]],
    codec: Codec,
    ttl_s: int,
) -> T:
    """Run ``work`` once for ``(scope, key)`` in one write unit with its stored answer, or return
    the answer stored by the first run. ``request`` is what the key promises: the same key with
    another request raises :class:`IdempotencyKeyReused`. Concurrent calls with the same key run
    ``work`` once; the others wait for its commit and return its answer. ``work`` follows the
    rules of a unit of work (it awaits only its ``tx``)."""

    async def unit(tx: Tx) -> T:
        return await run_once(
            tx, scope=scope, key=key, request=request, work=work, codec=codec, ttl_s=ttl_s
        )

    return await db.write(unit)


async def stored_answer(
    db: Database, *, scope: str, key: str, request: bytes | dict[str, Any], codec: Codec
) -> Any | None:
    """The answer stored for ``(scope, key)``, or ``None``: lets a caller skip work outside the
    database (a payment provider's call) on a replay. :class:`IdempotencyKeyReused` as above."""
    digest = fingerprint(request)

    async def read(tx: Tx) -> Any | None:
        row = await tx.fetchrow(
            "SELECT request_hash, answer FROM idempotency_keys WHERE scope = $1 AND key = $2",
            scope,
            check_key(key),
        )
        if row is None:
            return None
        if row["request_hash"] != digest:
            raise IdempotencyKeyReused()
        return codec.decode(row["answer"])

    return await db.read(read)


async def purge_idempotency_keys(db: Database, *, now: int | None = None) -> int:
    """Remove the keys past their lifetime; how many were removed."""
    at = now_ms() if now is None else now

    async def unit(tx: Tx) -> int:
        return await tx.execute("DELETE FROM idempotency_keys WHERE expires_at < $1", at)

    return await db.write(unit)
