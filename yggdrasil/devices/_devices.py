"""The device registry: registration, listing, update, deletion and presence of devices.

A device id is chosen by its user and unique within its network only. Every request handler's
read goes through :func:`scoped_device` or :meth:`DeviceStore.list_devices`, both behind the
networks room's membership check; a device row is inserted only by :func:`insert_device`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec

from .._crypto import Vault
from .._errors import Invalid, NotFound, UniqueViolation
from .._ids import now_ms
from ..networks import is_member, require_member
from ..store import (
    MAX_PAGE,
    Database,
    Page,
    Row,
    Scope,
    SealedColumns,
    Tx,
    append_audit,
    decode_cursor,
    encode_cursor,
    from_json,
    to_json,
)

WorldType = Literal["midgard", "asgard", "alfheim", "jotnar"]

RevokeDevice = Callable[[Tx, str, str, int], Awaitable[None]]
"""``revoke(tx, network_id, device_id, at)``: end every credential of a deleted device, inside
the deleting transaction (the accounts room's ``revoke_device_tokens``)."""


class NewDevice(msgspec.Struct, frozen=True):
    device_id: str
    name: str
    world_type: WorldType
    capabilities: dict[str, Any] = {}
    hardware_specs: dict[str, Any] = {}
    metadata: dict[str, Any] = {}


class DeviceUpdate(msgspec.Struct, frozen=True):
    name: str | None = None
    world_type: WorldType | None = None
    capabilities: dict[str, Any] | None = None
    hardware_specs: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


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


DEVICES_SEALED = SealedColumns(
    "devices", key=("network_id", "device_id"), owner="user_id", columns=("name",)
)
"""A device's name (often its owner's: "Ada's laptop") is sealed."""


def _device(row: Row, vault: Vault | None) -> Device:
    """A device row as a :class:`Device`; without ``vault`` its ``name`` stays sealed (for
    callers that need only ids)."""
    name = row["name"]
    if vault is not None:
        name = vault.open(name, DEVICES_SEALED.place("name", row["user_id"]))
    return Device(
        device_id=row["device_id"],
        network_id=row["network_id"],
        user_id=row["user_id"],
        name=name,
        world_type=row["world_type"],
        capabilities=from_json(row["capabilities"]),
        hardware_specs=from_json(row["hardware_specs"]),
        metadata=from_json(row["metadata"]),
        status=row["status"],
        registered_at=row["registered_at"],
        last_seen=row["last_seen"],
    )


# --------------------------------------------------------------------- units of work


async def insert_device(
    tx: Tx,
    network_id: str,
    user_id: str,
    new: NewDevice,
    *,
    vault: Vault,
    member: bool = False,
) -> Row | None:
    """Register ``new`` in ``network_id`` for ``user_id``, audited, inside ``tx``: the only
    insert of a device row; the new row. An id taken in the network is
    :class:`UniqueViolation`.

    ``member``: check in the same statement that the user is a member of the network (nothing
    is inserted, and ``None`` returned, if not); otherwise the caller has checked it.
    """
    values = "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9"
    if member:
        values += f" WHERE {is_member('$1', '$3')}"
    row = await tx.fetchrow(
        "INSERT INTO devices (network_id, device_id, user_id, name, world_type,"
        f" capabilities, hardware_specs, metadata, registered_at) {values} RETURNING *",
        network_id,
        new.device_id,
        user_id,
        vault.seal_optional(new.name, DEVICES_SEALED.place("name", user_id)),
        new.world_type,
        to_json(new.capabilities),
        to_json(new.hardware_specs),
        to_json(new.metadata),
        now_ms(),
    )
    if row is not None:
        await append_audit(tx, user_id, "device.register", f"{network_id}/{new.device_id}")
    return row


async def claim_device(
    tx: Tx, user_id: str, network_id: str, device: NewDevice, *, fresh: bool, vault: Vault
) -> None:
    """A signing-in device in one of ``user_id``'s networks (membership checked by the caller):
    registered now if its id is new there, else it must be the user's own device.

    An id that another member uses there is :class:`UniqueViolation`, and so is any taken id
    when ``fresh`` (an enrolment always brings a new device).
    """
    owner = await tx.fetchval(
        "SELECT user_id FROM devices WHERE network_id = $1 AND device_id = $2",
        network_id,
        device.device_id,
    )
    if owner is None:
        await insert_device(tx, network_id, user_id, device, vault=vault)
    elif owner != user_id or fresh:
        raise UniqueViolation("a device with that id exists in this network")


async def scoped_device(tx: Tx, scope: Scope, network_id: str, device_id: str) -> Row:
    """The tenant-scoped read of one device row, in one statement: :class:`NotFound` unless the
    principal is a member of ``network_id`` (the networks room's condition) and the device is
    there."""
    scope.check_network(network_id)
    row = await tx.fetchrow(
        "SELECT * FROM devices WHERE network_id = $1 AND device_id = $2"
        f" AND {is_member('$1', '$3')}",
        network_id,
        device_id,
        scope.user_id,
    )
    if row is None:
        raise NotFound()
    return row


async def devices_of_user(
    tx: Tx, user_id: str, *, vault: Vault | None = None, limit: int | None = None
) -> list[Device]:
    """``user_id``'s devices in every network, by network and id: for the user's own data export
    and for operators (who are checked by their caller). At most ``limit`` when given. Names
    are opened with ``vault``; without it they stay sealed."""
    sql = "SELECT * FROM devices WHERE user_id = $1 ORDER BY network_id, device_id"
    rows = (
        await tx.fetch(sql, user_id)
        if limit is None
        else await tx.fetch(sql + " LIMIT $2", user_id, limit)
    )
    return [_device(row, vault) for row in rows]


async def delete_devices_of_user(tx: Tx, user_id: str) -> None:
    """Account deletion: every device ``user_id`` registered, in any network."""
    await tx.execute("DELETE FROM devices WHERE user_id = $1", user_id)


async def remove_device(
    tx: Tx, network_id: str, device_id: str, at: int, revoke: RevokeDevice
) -> None:
    """Delete one device and end its credentials as of ``at``, inside ``tx``: what deleting a
    device means, for its user and for operators alike (who checked who may; the caller
    audits). :class:`NotFound` if there is no such device."""
    deleted = await tx.execute(
        "DELETE FROM devices WHERE network_id = $1 AND device_id = $2", network_id, device_id
    )
    if deleted != 1:
        raise NotFound()
    await revoke(tx, network_id, device_id, at)


async def device_ids_of_network(tx: Tx, network_id: str) -> list[str]:
    """The ids of every device in ``network_id`` (a network's deletion ends their credentials)."""
    rows = await tx.fetch(
        "SELECT device_id FROM devices WHERE network_id = $1 ORDER BY device_id", network_id
    )
    return [row["device_id"] for row in rows]


async def find_devices(
    tx: Tx,
    *,
    user_id: str | None = None,
    network_id: str | None = None,
    device_id: str | None = None,
    after: tuple[str, str] | None = None,
    limit: int,
    vault: Vault | None = None,
) -> list[Device]:
    """Devices in every network, for operators (who are checked by their caller), by network
    and id: those of ``user_id``, in ``network_id``, with the id ``device_id``, after ``after``
    (``network_id``, ``device_id``), at most ``limit``."""
    conditions: list[str] = []
    args: list[object] = []
    for column, value in (
        ("user_id", user_id),
        ("network_id", network_id),
        ("device_id", device_id),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if after is not None:
        args.extend(after)
        net, dev = f"${len(args) - 1}", f"${len(args)}"
        conditions.append(f"(network_id > {net} OR (network_id = {net} AND device_id > {dev}))")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit)
    rows = await tx.fetch(
        f"SELECT * FROM devices{where} ORDER BY network_id, device_id LIMIT ${len(args)}", *args
    )
    return [_device(row, vault) for row in rows]


# --------------------------------------------------------------------- the repository


class DeviceStore:
    """Tenant-scoped device operations over a :class:`Database`, plus the two unscoped ones the
    network's own actor needs (:meth:`network_devices`, :meth:`set_device_presence`).

    ``revoke`` ends a deleted device's credentials in the deleting transaction.
    """

    def __init__(self, db: Database, *, revoke: RevokeDevice) -> None:
        self.db = db
        self._revoke = revoke

    async def register_device(self, scope: Scope, network_id: str, new: NewDevice) -> Device:
        """Register a device in one of the principal's networks.

        ``NotFound`` when the network is not the principal's (or does not exist);
        ``UniqueViolation`` when the id is taken in that network. An id taken in another network
        is no conflict.
        """
        scope.check_network(network_id)

        async def work(tx: Tx) -> Row:
            row = await insert_device(
                tx, network_id, scope.user_id, new, member=True, vault=self.db.vault
            )
            if row is None:
                raise NotFound()
            return row

        return _device(await self.db.write(work), self.db.vault)

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
            rows = await tx.fetch(
                "SELECT * FROM devices WHERE network_id = $1 AND device_id > $2"
                f" AND {is_member('$1', '$4')} ORDER BY device_id LIMIT $3",
                network_id,
                after,
                limit + 1,
                scope.user_id,
            )
            if not rows:  # an empty page, or no member: only then is a second look needed
                await require_member(tx, scope.user_id, network_id)
            return rows

        rows = await self.db.read(work)
        more = len(rows) > limit
        items = [_device(row, self.db.vault) for row in rows[:limit]]
        return Page(items, encode_cursor(items[-1].device_id) if more else None)

    async def get_device(self, scope: Scope, network_id: str, device_id: str) -> Device:
        scope.check_network(network_id)

        async def work(tx: Tx) -> Row:
            return await scoped_device(tx, scope, network_id, device_id)

        return _device(await self.db.read(work), self.db.vault)

    async def update_device(
        self, scope: Scope, network_id: str, device_id: str, update: DeviceUpdate
    ) -> Device:
        scope.check_network(network_id)
        changes: list[tuple[str, Any]] = []
        if update.name is not None:
            changes.append(("name", update.name))  # sealed below, for the device's owner
        if update.world_type is not None:
            changes.append(("world_type", update.world_type))
        for field in ("capabilities", "hardware_specs", "metadata"):
            value = getattr(update, field)
            if value is not None:
                changes.append((field, to_json(value)))

        async def work(tx: Tx) -> Row:
            row = await scoped_device(tx, scope, network_id, device_id)
            if not changes:
                return row
            place = DEVICES_SEALED.place("name", row["user_id"])
            values = [
                self.db.vault.seal_optional(value, place) if name == "name" else value
                for name, value in changes
            ]
            assignments = ", ".join(f"{name} = ${i + 3}" for i, (name, _) in enumerate(changes))
            await tx.execute(
                f"UPDATE devices SET {assignments} WHERE network_id = $1 AND device_id = $2",
                network_id,
                device_id,
                *values,
            )
            await append_audit(
                tx,
                scope.user_id,
                "device.update",
                f"{network_id}/{device_id}",
                {"fields": [name for name, _ in changes]},
            )
            return await scoped_device(tx, scope, network_id, device_id)

        return _device(await self.db.write(work), self.db.vault)

    async def delete_device(self, scope: Scope, network_id: str, device_id: str) -> int:
        """Delete the device and revoke its tokens in the same transaction.

        Returns the revocation time (ms), for the caller's in-memory token check.
        """
        scope.check_network(network_id)
        at = now_ms()

        async def work(tx: Tx) -> None:
            await require_member(tx, scope.user_id, network_id)
            await remove_device(tx, network_id, device_id, at, self._revoke)
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

        return [_device(row, self.db.vault) for row in await self.db.read(work)]

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
