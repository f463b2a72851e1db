"""Idempotency of the money-moving subscription requests (subscribe, change plan, cancel,
resume), by the ``Idempotency-Key`` the client sends.

The same semantics as the ledger's keys (SECURITY.md, "Money"): the same key with the same
request replays the first answer; the same key with another request is 422
``idempotency_key_reused`` and changes nothing; concurrent duplicates execute once (the later
ones wait for the first answer, and get 409 ``request_in_progress`` if it takes longer than
``wait_s``); a request that failed stores nothing, so repeating its key runs it again.

Unlike a ledger operation, a subscription request calls a payment provider between two
transactions, so its key's row is claimed first, in a transaction of its own, and the answer is
stored by the transaction that applies the change (``finish(tx, answer)``), so that the change
and its answer commit together. A claimed row whose holder died (no answer by ``lease_until``) is
taken over by the next repetition, which runs the request again: the charge inside it uses a key
derived from this one, so the provider answers with the first charge instead of charging again.
Keys are kept ``ttl`` (at least a day) and then purged.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import trio

from .._errors import Invalid, YggdrasilError
from .._ids import now_ms
from ..store import Database, Tx, to_json

T = TypeVar("T")
Finish = Callable[[Tx, Any], Awaitable[None]]
"""``finish(tx, answer)``: store ``answer`` for the key, inside the applying transaction."""

MAX_KEY_LENGTH = 255


class IdempotencyKeyRequired(Invalid):
    status = 400
    code = "idempotency_key_required"
    default_message = (
        "money-moving requests need an Idempotency-Key header (1 to 255 visible ASCII characters)"
    )


class IdempotencyKeyReused(Invalid):
    code = "idempotency_key_reused"
    default_message = "this idempotency key was used for a different request"


class RequestInProgress(YggdrasilError):
    status = 409
    code = "request_in_progress"
    default_message = "a request with this idempotency key is still running; repeat it later"


class _Superseded(YggdrasilError):
    """Our claim on the key was taken over (we took longer than the lease): roll back."""

    status = 409
    code = "request_in_progress"
    default_message = "this request took too long and was taken over by a repetition"


def check_key(key: str | None) -> str:
    """``key`` if it is a usable idempotency key, else :class:`IdempotencyKeyRequired`."""
    if key is None or not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise IdempotencyKeyRequired()
    if not all("!" <= ch <= "~" for ch in key):
        raise IdempotencyKeyRequired()
    return key


def fingerprint(request: dict[str, Any]) -> str:
    return hashlib.sha256(to_json(request).encode()).hexdigest()


class SubscriptionRequests:
    def __init__(self, db: Database, *, lease_ms: int, ttl_ms: int, wait_s: float = 10.0) -> None:
        self._db = db
        self._lease_ms = lease_ms
        self._ttl_ms = ttl_ms
        self._wait_s = wait_s

    async def run(
        self,
        user_id: str,
        key: str,
        request: dict[str, Any],
        work: Callable[[Finish], Awaitable[T]],
        answer: type[T],
    ) -> T:
        """``work(finish)`` once per (``user_id``, ``key``); every repetition gets its answer
        (an ``answer``, stored as JSON).

        ``work`` must call ``finish(tx, answer)`` in the transaction that applies the request;
        if it raises, nothing is stored and the error propagates.
        """
        decode = msgspec.json.Decoder(answer).decode
        digest = fingerprint(request)
        token = secrets.token_hex(12)
        stored: str | None = ""
        with trio.move_on_after(self._wait_s):
            while True:
                stored = await self._db.write(
                    lambda tx: self._claim(tx, user_id, key, digest, token)
                )
                if stored is None:
                    break  # ours now
                if stored:
                    return decode(stored)
                await trio.sleep(0.05)
        if stored is not None:
            raise RequestInProgress()

        async def finish(tx: Tx, answer: Any) -> None:
            done = await tx.execute(
                "UPDATE subscription_requests SET answer = $4"
                " WHERE user_id = $1 AND idempotency_key = $2 AND token = $3 AND answer IS NULL",
                user_id,
                key,
                token,
                msgspec.json.encode(answer).decode(),
            )
            if done != 1:
                raise _Superseded()

        try:
            return await work(finish)
        except BaseException:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(5),
                contextlib.suppress(YggdrasilError),  # the claim lapses at lease_until
            ):
                await self._db.write(lambda tx: self._release(tx, user_id, key, token))
            raise

    async def _claim(self, tx: Tx, user_id: str, key: str, digest: str, token: str) -> str | None:
        """``None`` once the key is ours; the stored answer; ``""`` while another holds it."""
        now = now_ms()
        inserted = await tx.execute(
            "INSERT INTO subscription_requests (user_id, idempotency_key, fingerprint, token,"
            " lease_until, created_at) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (user_id, idempotency_key) DO NOTHING",
            user_id,
            key,
            digest,
            token,
            now + self._lease_ms,
            now,
        )
        if inserted == 1:
            return None
        row = await tx.fetchrow(
            "SELECT fingerprint, answer, lease_until FROM subscription_requests"
            " WHERE user_id = $1 AND idempotency_key = $2",
            user_id,
            key,
        )
        if row is None:
            return ""  # released between the two statements: try again
        if row["fingerprint"] != digest:
            raise IdempotencyKeyReused()
        if row["answer"] is not None:
            return str(row["answer"])
        if row["lease_until"] >= now:
            return ""
        taken = await tx.execute(
            "UPDATE subscription_requests SET token = $3, lease_until = $4"
            " WHERE user_id = $1 AND idempotency_key = $2 AND answer IS NULL"
            " AND lease_until = $5",
            user_id,
            key,
            token,
            now + self._lease_ms,
            row["lease_until"],
        )
        return None if taken == 1 else ""

    @staticmethod
    async def _release(tx: Tx, user_id: str, key: str, token: str) -> None:
        await tx.execute(
            "DELETE FROM subscription_requests"
            " WHERE user_id = $1 AND idempotency_key = $2 AND token = $3 AND answer IS NULL",
            user_id,
            key,
            token,
        )

    async def purge(self, now: int) -> int:
        """Remove keys older than the TTL; how many."""
        cutoff = now - self._ttl_ms
        return await self._db.write(
            lambda tx: tx.execute("DELETE FROM subscription_requests WHERE created_at < $1", cutoff)
        )
