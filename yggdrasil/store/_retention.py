"""The retention job: rows past their configured age are deleted, once per cluster at a time.

Each room owns its tables, so each room brings its own purge (a unit of work that deletes up to
``limit`` rows older than a cutoff and says how many); the composition hands them to
:class:`Retention` with their ages from ``[retention]``. The audit log's purge is the store's
own (:func:`cut_audit`): it removes a prefix of the chain and records the cut.

**Once per cluster.** Any number of instances run the job; a round is taken under the single
``retention_runs`` row (compare-and-set on its lease, as the billing leases are taken), and
every batch renews the lease in its own transaction, only if this instance still holds it.
Another instance finds the lease taken and skips; a crashed holder's lease lapses after
``retention.lease_s``. Deleting by age is idempotent anyway: two rounds at once would only race
for the same rows.

Time is an input: :meth:`Retention.run_once` takes ``now`` (ms); :func:`retain_forever` passes
the clock.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from .._config import RetentionConfig
from .._errors import StoreUnavailable
from .._ids import now_ms
from ._audit import append_audit, cut_audit
from ._db import Database, Tx

log = logging.getLogger(__name__)

DAY_MS = 86_400_000

PurgeWork = Callable[[Tx, int, int], Awaitable[int]]
"""``work(tx, before_ms, limit)``: delete up to ``limit`` rows whose age counts from before
``before_ms``; how many."""


@dataclass(frozen=True)
class Purge:
    """One kind of row and how long it is kept (``age_ms``; 0: for ever)."""

    name: str
    age_ms: int
    work: PurgeWork


class RetentionBusy(Exception):
    """Another instance holds the round (or took it over from this one)."""


class Retention:
    def __init__(
        self,
        db: Database,
        purges: Sequence[Purge],
        config: RetentionConfig,
        *,
        instance: str | None = None,
    ) -> None:
        self._db = db
        self._config = config
        self._instance = instance or secrets.token_hex(8)
        self.purges = list(purges)
        """The rooms' purges; the audit log's (:func:`cut_audit`) runs last in every round."""

    def _audit_purge(self, at: int) -> Purge:
        async def work(tx: Tx, before_ms: int, limit: int) -> int:
            return await cut_audit(tx, before_ms, at=at, limit=limit)

        return Purge("audit_log", self._config.audit_days * DAY_MS, work)

    async def run_once(self, now: int | None = None) -> dict[str, int] | None:
        """One round at ``now`` (default: the clock): every purge until nothing of its kind is
        past its age. What each removed, or ``None`` if another instance holds the round. The
        round is recorded (``retention_runs.last_run_at``, and an audit entry
        ``retention.run`` with the counts when anything went)."""
        at = now_ms() if now is None else now
        lease_ms = self._config.lease_s * 1000
        if not await self._db.write(lambda tx: self._claim(tx, at, lease_ms)):
            return None
        removed: dict[str, int] = {}
        try:
            for purge in [*self.purges, self._audit_purge(at)]:
                if purge.age_ms <= 0:
                    continue
                before = at - purge.age_ms
                total = 0
                while True:
                    count = await self._db.write(
                        functools.partial(self._batch, purge=purge, before=before, at=at)
                    )
                    total += count
                    if count < self._config.batch:
                        break
                if total:
                    removed[purge.name] = total
            await self._db.write(lambda tx: self._finish(tx, at, removed))
        except RetentionBusy:
            log.info("retention round given up: another instance took it over")
            return None
        except BaseException:
            # Best effort: otherwise the lease lapses by itself.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(5),
                contextlib.suppress(Exception),
            ):
                await self._db.write(self._release)
            raise
        return removed

    async def _claim(self, tx: Tx, at: int, lease_ms: int) -> bool:
        won = await tx.execute(
            "UPDATE retention_runs SET holder = $1, lease_until = $2"
            " WHERE id = 1 AND (lease_until < $3 OR holder = $1)",
            self._instance,
            at + lease_ms,
            at,
        )
        return won == 1

    async def _renew(self, tx: Tx, at: int, lease_ms: int) -> None:
        held = await tx.execute(
            "UPDATE retention_runs SET lease_until = $2 WHERE id = 1 AND holder = $1",
            self._instance,
            max(at, now_ms()) + lease_ms,
        )
        if held != 1:
            raise RetentionBusy()

    async def _batch(self, tx: Tx, *, purge: Purge, before: int, at: int) -> int:
        await self._renew(tx, at, self._config.lease_s * 1000)
        return await purge.work(tx, before, self._config.batch)

    async def _finish(self, tx: Tx, at: int, removed: dict[str, int]) -> None:
        held = await tx.execute(
            "UPDATE retention_runs SET holder = '', lease_until = 0, last_run_at = $2"
            " WHERE id = 1 AND holder = $1",
            self._instance,
            at,
        )
        if held != 1:
            raise RetentionBusy()
        if removed:
            await append_audit(tx, "retention", "retention.run", "", dict(removed))

    async def _release(self, tx: Tx) -> None:
        await tx.execute(
            "UPDATE retention_runs SET holder = '', lease_until = 0 WHERE id = 1 AND holder = $1",
            self._instance,
        )

    async def last_run_at(self) -> int:
        """When a round last finished (ms; 0: never)."""
        value = await self._db.read(
            lambda tx: tx.fetchval("SELECT last_run_at FROM retention_runs WHERE id = 1")
        )
        return int(value or 0)


async def retain_forever(retention: Retention, interval_s: float) -> None:
    """The job: a round every ``interval_s`` until cancelled (the first after one interval).
    An unreachable store only delays it; any other error is logged and the next round tries
    again (an error boundary: one bad row does not stop retention)."""
    while True:
        await trio.sleep(interval_s)
        try:
            removed = await retention.run_once()
        except StoreUnavailable as exc:
            log.info("retention waits for the store: %s", exc.message)
            continue
        except Exception:
            log.exception("retention round failed")
            continue
        if removed:
            log.info("retention removed %s", removed)
