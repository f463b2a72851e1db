"""What subscriptions need from the money side: charge a user's default payment method, credit a
user's balance (:class:`Charger`), and the sandbox that the embedded default and the tests use.

The subscriptions never move money themselves. Every call carries an idempotency key that is
derived from what is being paid (a request's key, a subscription's period and attempt): a
charger charges at most once per key, and answers a repetition with the first outcome, so a
crash between a charge and its record, followed by a rerun, never charges twice.

A real implementation (over the ledger, the payment providers and the user's default payment
method) must, for each call:

- ``charge_subscription``: take ``amount_cents`` from the user's default payer method through
  its provider with ``key`` as the provider's idempotency key and, once taken, post in ONE
  ledger transaction keyed by ``key``: ``external:<provider>`` -amount,
  ``company:revenue:subscriptions`` +amount. Declined: ``declined`` and nothing posted. No
  answer from the provider: ``unavailable`` (the caller repeats the same key later).
- ``credit``: post ``company:credits`` -amount, ``user:<id>:balance`` +amount, keyed by
  ``key`` (no provider involved).
"""

from __future__ import annotations

import hashlib
from typing import Literal, Protocol

import msgspec
import trio

from .._ids import now_ms
from ..store import Database, Tx

Outcome = Literal["ok", "declined", "unavailable"]


class ChargeResult(msgspec.Struct, frozen=True):
    outcome: Outcome
    provider: str
    """Who moved the money (``sandbox`` in test mode)."""
    reference: str = ""
    """The provider's reference of the charge (empty unless ``ok``)."""
    test_mode: bool = False
    """No real money moved (the sandbox)."""
    message: str = ""
    """Why it was declined or unavailable, for the user."""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class Charger(Protocol):
    """Moves the money of subscriptions; see the module docstring for what each call must do.
    Amounts are positive integer cents. Cancellation: the caller treats a cancelled call as
    ``unavailable`` and repeats the same key."""

    async def charge_subscription(
        self, user_id: str, amount_cents: int, *, key: str, description: str
    ) -> ChargeResult: ...

    async def credit(
        self, user_id: str, amount_cents: int, *, key: str, description: str
    ) -> ChargeResult: ...


class SandboxCharger:
    """Test mode (the embedded default): no money moves, every call is recorded in
    ``subscription_charges`` under its key, and a repeated key answers the recorded outcome.

    Outcomes are chosen on purpose: the next new keys take the outcomes queued in ``script``
    (``"ok"``, ``"declined"``, ``"unavailable"``) in order, then ``default``. ``unavailable`` is
    not recorded (a provider that did not answer has charged nothing). ``delay_s`` makes each
    new charge take that long (to test concurrency).
    """

    provider = "sandbox"

    def __init__(
        self,
        db: Database,
        *,
        default: Outcome = "ok",
        script: list[Outcome] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self._db = db
        self.default: Outcome = default
        self.script: list[Outcome] = list(script or [])
        self.delay_s = delay_s

    async def charge_subscription(
        self, user_id: str, amount_cents: int, *, key: str, description: str
    ) -> ChargeResult:
        return await self._move("charge", user_id, amount_cents, key, description)

    async def credit(
        self, user_id: str, amount_cents: int, *, key: str, description: str
    ) -> ChargeResult:
        return await self._move("credit", user_id, amount_cents, key, description)

    async def charges(self, user_id: str | None = None) -> list[dict[str, object]]:
        """What was recorded (``charge_key``, ``kind``, ``amount_cents``, ``outcome``...), oldest
        first; only ``user_id``'s when given."""

        async def read(tx: Tx) -> list[dict[str, object]]:
            if user_id is None:
                return await tx.fetch("SELECT * FROM subscription_charges ORDER BY created_at")
            return await tx.fetch(
                "SELECT * FROM subscription_charges WHERE user_id = $1 ORDER BY created_at",
                user_id,
            )

        return await self._db.read(read)

    async def _move(
        self, kind: str, user_id: str, amount: int, key: str, description: str
    ) -> ChargeResult:
        if amount <= 0:
            raise ValueError("amounts are positive cents")
        recorded = await self._db.read(lambda tx: _recorded(tx, key))
        if recorded is not None:
            return recorded
        outcome = self.script.pop(0) if self.script else self.default
        if self.delay_s:
            await trio.sleep(self.delay_s)
        if outcome == "unavailable":
            return ChargeResult("unavailable", self.provider, message="the sandbox is down")
        reference = "sbx_" + hashlib.sha256(key.encode()).hexdigest()[:24]

        async def record(tx: Tx) -> ChargeResult | None:
            await tx.execute(
                "INSERT INTO subscription_charges (charge_key, user_id, kind, amount_cents,"
                " outcome, reference, description, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (charge_key) DO NOTHING",
                key,
                user_id,
                kind,
                amount,
                outcome,
                reference if outcome == "ok" else "",
                description,
                now_ms(),
            )
            return await _recorded(tx, key)

        result = await self._db.write(record)
        assert result is not None
        return result


async def _recorded(tx: Tx, key: str) -> ChargeResult | None:
    row = await tx.fetchrow(
        "SELECT outcome, reference FROM subscription_charges WHERE charge_key = $1", key
    )
    if row is None:
        return None
    message = "" if row["outcome"] == "ok" else "the sandbox declined the charge (test mode)"
    return ChargeResult(
        row["outcome"], SandboxCharger.provider, row["reference"], test_mode=True, message=message
    )
