"""The tenant-scoped repository: every read of tenant data takes the principal's :class:`Scope`.

There is no unscoped read path: each query that returns tenant rows joins the caller's
memberships, so a foreign row and a missing row give the same :class:`NotFound`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ._errors import Forbidden, Invalid, NotFound
from ._ids import new_id, now_ms
from .store import (
    MAX_PAGE,
    AuditEntry,
    AuditLog,
    Database,
    Page,
    Row,
    Scope,
    Tx,
    append_audit,
    decode_cursor,
    encode_cursor,
    to_json,
)

WorldType = Literal["midgard", "asgard", "alfheim", "jotnar"]


class DeviceUpdate(msgspec.Struct, frozen=True):
    name: str | None = None
    world_type: WorldType | None = None
    capabilities: dict[str, Any] | None = None
    hardware_specs: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class User(msgspec.Struct, frozen=True):
    user_id: str
    email: str | None
    display_name: str
    role: str
    status: str
    subscription_tier: str
    subscription_status: str
    home_network_id: str | None
    created_at: int
    updated_at: int


class Network(msgspec.Struct, frozen=True):
    network_id: str
    name: str
    role: str
    """The principal's role in this network."""
    created_at: int


class NewDevice(msgspec.Struct, frozen=True):
    device_id: str
    name: str
    world_type: WorldType
    capabilities: dict[str, Any] = {}
    hardware_specs: dict[str, Any] = {}
    metadata: dict[str, Any] = {}


class Device(msgspec.Struct, frozen=True):
    device_id: str
    network_id: str
    user_id: str
    name: str
    world_type: str
    capabilities: dict[str, Any]
    hardware_specs: dict[str, Any]
    metadata: dict[str, Any]
    status: str
    registered_at: int
    last_seen: int | None


def _user(row: Row) -> User:
    return User(**row)


def _device(row: Row) -> Device:
    return Device(
        device_id=row["device_id"],
        network_id=row["network_id"],
        user_id=row["user_id"],
        name=row["name"],
        world_type=row["world_type"],
        capabilities=msgspec.json.decode(row["capabilities"]),
        hardware_specs=msgspec.json.decode(row["hardware_specs"]),
        metadata=msgspec.json.decode(row["metadata"]),
        status=row["status"],
        registered_at=row["registered_at"],
        last_seen=row["last_seen"],
    )


async def insert_user(
    tx: Tx,
    email: str | None,
    display_name: str = "",
    network_name: str = "Home",
    role: Literal["user", "operator"] = "user",
) -> str:
    """Create a user and the home network they own, inside ``tx``; returns the user id.

    Every account gets its home network at creation; nobody else is ever put into it implicitly.
    """
    user_id, network_id, at = new_id("u"), new_id("n"), now_ms()
    await tx.execute(
        "INSERT INTO users (user_id, email, display_name, role, home_network_id,"
        " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        user_id,
        email,
        display_name,
        role,
        network_id,
        at,
    )
    await tx.execute(
        "INSERT INTO networks (network_id, name, owner_id, created_at) VALUES ($1, $2, $3, $4)",
        network_id,
        network_name,
        user_id,
        at,
    )
    await tx.execute(
        "INSERT INTO memberships (network_id, user_id, role, created_at)"
        " VALUES ($1, $2, 'owner', $3)",
        network_id,
        user_id,
        at,
    )
    await append_audit(tx, user_id, "user.create", user_id)
    return user_id


async def set_revocation(tx: Tx, subject: str, not_before_ms: int) -> None:
    """Refuse access tokens of ``subject`` issued before ``not_before_ms``, on every instance."""
    updated = await tx.execute(
        "UPDATE token_revocations SET not_before = $2 WHERE subject = $1 AND not_before < $2",
        subject,
        not_before_ms,
    )
    if updated == 0:
        exists = await tx.fetchval("SELECT 1 FROM token_revocations WHERE subject = $1", subject)
        if not exists:
            await tx.execute(
                "INSERT INTO token_revocations (subject, not_before) VALUES ($1, $2)",
                subject,
                not_before_ms,
            )


async def revoke_device_tokens(tx: Tx, network_id: str, device_id: str, at: int) -> None:
    await tx.execute(
        "UPDATE refresh_tokens SET revoked_at = $3"
        " WHERE network_id = $1 AND device_id = $2 AND revoked_at IS NULL",
        network_id,
        device_id,
        at,
    )
    await set_revocation(tx, f"device:{network_id}/{device_id}", at)
    await append_audit(tx, "system", "token.revoke", f"device:{network_id}/{device_id}")


async def revoke_user_tokens(tx: Tx, user_id: str, at: int) -> None:
    await tx.execute(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        user_id,
        at,
    )
    await set_revocation(tx, f"user:{user_id}", at)
    await append_audit(tx, "system", "token.revoke", f"user:{user_id}")


class Store:
    """Tenant-scoped operations over a :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ----------------------------------------------------------------- users and networks

    async def create_user(
        self,
        email: str | None,
        *,
        display_name: str = "",
        network_name: str = "Home",
        role: Literal["user", "operator"] = "user",
    ) -> tuple[User, Network]:
        """Create a user with a home network they own. ``UniqueViolation`` if the e-mail exists."""

        async def work(tx: Tx) -> tuple[User, Network]:
            user_id = await insert_user(tx, email, display_name, network_name, role)
            row = await tx.fetchrow("SELECT * FROM users WHERE user_id = $1", user_id)
            assert row is not None
            home = row["home_network_id"]
            return _user(row), Network(home, network_name, "owner", row["created_at"])

        return await self.db.write(work)

    async def get_me(self, scope: Scope) -> User:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM users WHERE user_id = $1 AND status != 'deleted'", scope.user_id
            )

        row = await self.db.read(work)
        if row is None:
            raise NotFound()
        return _user(row)

    async def list_networks(self, scope: Scope) -> list[Network]:
        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT n.network_id, n.name, m.role, n.created_at FROM networks n"
                " JOIN memberships m ON m.network_id = n.network_id"
                " WHERE m.user_id = $1 ORDER BY n.created_at, n.network_id",
                scope.user_id,
            )

        networks = [Network(**row) for row in await self.db.read(work)]
        if scope.network_id is not None:
            networks = [n for n in networks if n.network_id == scope.network_id]
        return networks

    async def create_network(self, scope: Scope, name: str) -> Network:
        """A new network owned by the principal (not from a device-bound token)."""
        if scope.network_id is not None:
            raise Forbidden("a device's token cannot create networks")
        network_id, at = new_id("n"), now_ms()

        async def work(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO networks (network_id, name, owner_id, created_at)"
                " VALUES ($1, $2, $3, $4)",
                network_id,
                name,
                scope.user_id,
                at,
            )
            await tx.execute(
                "INSERT INTO memberships (network_id, user_id, role, created_at)"
                " VALUES ($1, $2, 'owner', $3)",
                network_id,
                scope.user_id,
                at,
            )
            await append_audit(tx, scope.user_id, "network.create", network_id)

        await self.db.write(work)
        return Network(network_id, name, "owner", at)

    async def get_network(self, scope: Scope, network_id: str) -> Network:
        scope.check_network(network_id)

        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT n.network_id, n.name, m.role, n.created_at FROM networks n"
                " JOIN memberships m ON m.network_id = n.network_id"
                " WHERE m.user_id = $1 AND n.network_id = $2",
                scope.user_id,
                network_id,
            )

        row = await self.db.read(work)
        if row is None:
            raise NotFound()
        return Network(**row)

    # ----------------------------------------------------------------- devices

    async def register_device(self, scope: Scope, network_id: str, new: NewDevice) -> Device:
        """Register a device in one of the principal's networks.

        ``NotFound`` when the network is not the principal's (or does not exist);
        ``UniqueViolation`` when the id is taken in that network. An id taken in another network
        is no conflict.
        """
        scope.check_network(network_id)
        at = now_ms()

        async def work(tx: Tx) -> Row:
            member = await tx.fetchval(
                "SELECT 1 FROM memberships WHERE network_id = $1 AND user_id = $2",
                network_id,
                scope.user_id,
            )
            if not member:
                raise NotFound()
            await tx.execute(
                "INSERT INTO devices (network_id, device_id, user_id, name, world_type,"
                " capabilities, hardware_specs, metadata, registered_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                network_id,
                new.device_id,
                scope.user_id,
                new.name,
                new.world_type,
                to_json(new.capabilities),
                to_json(new.hardware_specs),
                to_json(new.metadata),
                at,
            )
            await append_audit(
                tx, scope.user_id, "device.register", f"{network_id}/{new.device_id}"
            )
            row = await tx.fetchrow(
                "SELECT * FROM devices WHERE network_id = $1 AND device_id = $2",
                network_id,
                new.device_id,
            )
            assert row is not None
            return row

        return _device(await self.db.write(work))

    async def list_devices(
        self, scope: Scope, network_id: str, *, cursor: str | None = None, limit: int = 50
    ) -> Page[Device]:
        """One page of a network's devices, ordered by id; an unknown cursor is ``Invalid``, a
        network the principal is no member of :class:`NotFound` (never an empty page)."""
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
        after = ""
        if cursor is not None:
            decoded = decode_cursor(cursor)
            if decoded is None:
                raise Invalid("malformed cursor")
            after = decoded
        scope.check_network(network_id)

        async def work(tx: Tx) -> list[Row]:
            # The membership row comes back even without devices (a NULL device), so one
            # query tells "no devices" from "not your network".
            return await tx.fetch(
                "SELECT d.* FROM memberships m LEFT JOIN devices d"
                " ON d.network_id = m.network_id AND d.device_id > $3"
                " WHERE m.user_id = $1 AND m.network_id = $2"
                " ORDER BY d.device_id LIMIT $4",
                scope.user_id,
                network_id,
                after,
                limit + 1,
            )

        rows = await self.db.read(work)
        if not rows:
            raise NotFound()
        rows = [row for row in rows if row["device_id"] is not None]
        more = len(rows) > limit
        items = [_device(row) for row in rows[:limit]]
        return Page(items, encode_cursor(items[-1].device_id) if more else None)

    async def get_device(self, scope: Scope, network_id: str, device_id: str) -> Device:
        scope.check_network(network_id)

        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT d.* FROM devices d JOIN memberships m ON m.network_id = d.network_id"
                " WHERE m.user_id = $1 AND d.network_id = $2 AND d.device_id = $3",
                scope.user_id,
                network_id,
                device_id,
            )

        row = await self.db.read(work)
        if row is None:
            raise NotFound()
        return _device(row)

    async def update_device(
        self, scope: Scope, network_id: str, device_id: str, update: DeviceUpdate
    ) -> Device:
        scope.check_network(network_id)
        changes: list[tuple[str, Any]] = []
        if update.name is not None:
            changes.append(("name", update.name))
        if update.world_type is not None:
            changes.append(("world_type", update.world_type))
        for field in ("capabilities", "hardware_specs", "metadata"):
            value = getattr(update, field)
            if value is not None:
                changes.append((field, to_json(value)))

        async def work(tx: Tx) -> Row:
            row = await tx.fetchrow(
                "SELECT d.device_id FROM devices d JOIN memberships m"
                " ON m.network_id = d.network_id"
                " WHERE m.user_id = $1 AND d.network_id = $2 AND d.device_id = $3",
                scope.user_id,
                network_id,
                device_id,
            )
            if row is None:
                raise NotFound()
            if changes:
                assignments = ", ".join(f"{name} = ${i + 3}" for i, (name, _) in enumerate(changes))
                await tx.execute(
                    f"UPDATE devices SET {assignments} WHERE network_id = $1 AND device_id = $2",
                    network_id,
                    device_id,
                    *[value for _, value in changes],
                )
                await append_audit(
                    tx,
                    scope.user_id,
                    "device.update",
                    f"{network_id}/{device_id}",
                    {"fields": [name for name, _ in changes]},
                )
            updated = await tx.fetchrow(
                "SELECT * FROM devices WHERE network_id = $1 AND device_id = $2",
                network_id,
                device_id,
            )
            assert updated is not None
            return updated

        return _device(await self.db.write(work))

    async def delete_device(self, scope: Scope, network_id: str, device_id: str) -> int:
        """Delete the device and revoke its tokens in the same transaction.

        Returns the revocation time (ms), for the caller's in-memory token check.
        """
        scope.check_network(network_id)
        at = now_ms()

        async def work(tx: Tx) -> None:
            deleted = await tx.execute(
                "DELETE FROM devices WHERE network_id = $1 AND device_id = $2 AND EXISTS ("
                " SELECT 1 FROM memberships m WHERE m.network_id = $1 AND m.user_id = $3)",
                network_id,
                device_id,
                scope.user_id,
            )
            if deleted != 1:
                raise NotFound()
            await revoke_device_tokens(tx, network_id, device_id, at)
            await append_audit(tx, scope.user_id, "device.delete", f"{network_id}/{device_id}")

        await self.db.write(work)
        return at

    async def network_devices(self, network_id: str) -> list[Device]:
        """Every device of one network, for that network's own actor (the relay's presence).

        Not for request handlers: they read devices through :meth:`list_devices` with a scope.
        """

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT * FROM devices WHERE network_id = $1 ORDER BY device_id", network_id
            )

        return [_device(row) for row in await self.db.read(work)]

    async def set_device_presence(
        self, network_id: str, changes: dict[str, tuple[Literal["online", "offline"], int]]
    ) -> None:
        """Record, in one transaction, which devices of a network came online or went offline
        and when (``device_id -> (status, last_seen)``); called by the network's actor."""

        async def work(tx: Tx) -> None:
            for device_id, (status, seen) in changes.items():
                await tx.execute(
                    "UPDATE devices SET status = $3, last_seen = $4"
                    " WHERE network_id = $1 AND device_id = $2",
                    network_id,
                    device_id,
                    status,
                    seen,
                )

        await self.db.write(work)

    # ----------------------------------------------------------------- audit

    async def audit(
        self, actor: str, action: str, subject: str = "", detail: dict[str, Any] | None = None
    ) -> int:
        return await AuditLog(self.db).append(actor, action, subject, detail)

    async def audit_entries(self, *, after: int = 0, limit: int = MAX_PAGE) -> list[AuditEntry]:
        """Operator read of the audit log (no tenant data beyond ids)."""
        return await AuditLog(self.db).entries(after=after, limit=limit)

    async def verify_audit_chain(self) -> int:
        """Recompute every hash; returns the number of entries, raises ``AuditChainBroken``."""
        return await AuditLog(self.db).verify_chain()
