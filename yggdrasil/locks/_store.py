"""The locks room's tables: each network's fencing-token sequence and its grants.

The store, not an actor's memory, decides who holds a lock: a grant is written with
compare-and-set (it replaces the row of a lock only once that row's lease has ended), in the
same transaction that takes the network's next fencing token. Two owners of one network's locks
(an instance cut off from the cluster that has not fenced itself yet, say) can therefore never
both grant one lock, and tokens only grow, whoever grants.
"""

from __future__ import annotations

from .._errors import NotFound
from ..store import Database, Row, Tx
from ._table import Grant


class _Held(Exception):
    """The lock's row holds a live lease: roll the grant back."""


def _grant(row: Row) -> Grant:
    return Grant(
        name=row["name"],
        holder=row["holder"],
        token=int(row["token"]),
        priority=int(row["priority"]),
        granted_at=int(row["granted_at"]),
        expires_at=int(row["expires_at"]),
    )


def _foreign_key(exc: Exception) -> bool:
    """A grant for a network that is gone (SQLite's and asyncpg's wording)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return "foreign key" in text or "foreignkey" in text


class LockStore:
    """Grants of every network's locks over a :class:`Database`. Its callers are the lock
    managers (one per network), which the tenant rule and the API's membership check already
    confine to one network: every statement names the network."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def live_grants(self, network_id: str, now: int) -> list[Grant]:
        """The grants of ``network_id`` whose lease has not ended at ``now``."""

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT name, holder, token, priority, granted_at, expires_at FROM lock_grants"
                " WHERE network_id = $1 AND expires_at > $2 ORDER BY name",
                network_id,
                now,
            )

        return [_grant(row) for row in await self.db.read(work)]

    async def forget_ended(self, network_id: str, now: int) -> int:
        """Delete the rows of ``network_id`` whose lease ended by ``now`` (a manager that died
        left them); how many."""

        async def work(tx: Tx) -> int:
            return await tx.execute(
                "DELETE FROM lock_grants WHERE network_id = $1 AND expires_at <= $2",
                network_id,
                now,
            )

        return await self.db.write(work)

    async def current(self, network_id: str, name: str) -> Grant | None:
        """The row of one lock, live or not."""

        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT name, holder, token, priority, granted_at, expires_at FROM lock_grants"
                " WHERE network_id = $1 AND name = $2",
                network_id,
                name,
            )

        row = await self.db.read(work)
        return None if row is None else _grant(row)

    async def grant(
        self, network_id: str, name: str, holder: str, priority: int, now: int, lease_ms: int
    ) -> Grant | None:
        """Grant ``name`` to ``holder`` from ``now`` for ``lease_ms`` with the network's next
        fencing token, unless a live lease holds it in the store (``None``: nothing changed).
        :class:`NotFound` if the network is gone."""
        expires_at = now + lease_ms

        async def work(tx: Tx) -> int:
            token = int(
                await tx.fetchval(
                    "INSERT INTO lock_sequences (network_id, last_token) VALUES ($1, 1)"
                    " ON CONFLICT (network_id)"
                    " DO UPDATE SET last_token = lock_sequences.last_token + 1"
                    " RETURNING last_token",
                    network_id,
                )
            )
            written = await tx.execute(
                "INSERT INTO lock_grants"
                " (network_id, name, holder, token, priority, granted_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (network_id, name) DO UPDATE SET holder = excluded.holder,"
                " token = excluded.token, priority = excluded.priority,"
                " granted_at = excluded.granted_at, expires_at = excluded.expires_at"
                " WHERE lock_grants.expires_at <= $6",
                network_id,
                name,
                holder,
                token,
                priority,
                now,
                expires_at,
            )
            if written != 1:
                raise _Held()
            return token

        try:
            token = await self.db.write(work)
        except _Held:
            return None
        except Exception as exc:
            if _foreign_key(exc):
                raise NotFound() from None
            raise
        return Grant(name, holder, token, priority, now, expires_at)

    async def renew(self, network_id: str, name: str, token: int, now: int, lease_ms: int) -> bool:
        """Extend the live grant ``token`` on ``name`` to end at ``now + lease_ms``; ``False``
        if that grant has ended or is not the lock's."""

        async def work(tx: Tx) -> int:
            return await tx.execute(
                "UPDATE lock_grants SET expires_at = $4"
                " WHERE network_id = $1 AND name = $2 AND token = $3 AND expires_at > $5",
                network_id,
                name,
                token,
                now + lease_ms,
                now,
            )

        return await self.db.write(work) == 1

    async def release(self, network_id: str, name: str, token: int) -> bool:
        """Delete the grant ``token`` on ``name``; ``False`` if it is not there."""

        async def work(tx: Tx) -> int:
            return await tx.execute(
                "DELETE FROM lock_grants WHERE network_id = $1 AND name = $2 AND token = $3",
                network_id,
                name,
                token,
            )

        return await self.db.write(work) == 1

    async def forget(self, network_id: str, ended: list[Grant]) -> None:
        """Delete the rows of grants whose lease has ended (tidying; a later grant replaces an
        ended row anyway)."""

        async def work(tx: Tx) -> None:
            for grant in ended:
                await tx.execute(
                    "DELETE FROM lock_grants"
                    " WHERE network_id = $1 AND name = $2 AND token = $3 AND expires_at <= $4",
                    network_id,
                    grant.name,
                    grant.token,
                    grant.expires_at,
                )

        if ended:
            await self.db.write(work)
