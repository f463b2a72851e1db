"""The ddns room's tables: the current public address of each device (``device_addresses``)
and the DNS names users gave their devices (``ddns_names``), with the checks of what goes in.

Every read for a request handler goes through the devices room's :func:`scoped_device` first, so
a device of a network the caller does not belong to is :class:`NotFound`, exactly like one that
does not exist. A label is unique in the zone whoever holds it; taking one that is held is
:class:`NameTaken`, which says nothing of the holder.

A device's addresses are personal data: ``seen`` and ``reported`` are sealed at rest
(:data:`ADDRESSES_SEALED`, bound to the device's network and id) and opened only here.
"""

from __future__ import annotations

import ipaddress
import re

import msgspec

from .._crypto import Vault
from .._errors import Forbidden, Invalid, NotFound, UniqueViolation
from .._ids import now_ms
from ..devices import device_ids_of_network, find_devices, scoped_device
from ..store import Row, Scope, SealedColumns, Tx, append_audit, from_json, to_json

MAX_ADDRESSES = 4
"""The most addresses one device may report at once (one IPv4 and a few IPv6 in practice)."""

ADDRESSES_SEALED = SealedColumns(
    "device_addresses",
    key=("network_id", "device_id"),
    owner=("network_id", "device_id"),
    columns=("seen", "reported"),
)
"""Where a device's sessions come from and what it reported (a JSON list) are sealed."""

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class NameTaken(UniqueViolation):
    """The label is held in the zone (by whom is not said)."""

    code = "name_taken"


class InvalidAddress(Invalid):
    """What a device reported is not a list of addresses it could be reached at."""


class DdnsName(msgspec.Struct, frozen=True):
    """A device's DNS name: ``label`` under the zone, and its addresses as last seen."""

    label: str
    network_id: str
    device_id: str
    created_at: int
    addresses: list[str] = []
    """The device's current public addresses (what it reported, else what the server saw)."""


def check_label(label: str, reserved: list[str]) -> str:
    """``label`` as it goes into the zone (lower case), or :class:`Invalid`: one DNS label of
    letters, digits and inner hyphens (RFC 1123 section 2.1), at most 63 characters, not
    ``xn--`` style (two hyphens at 3-4) and not one of the zone's ``reserved`` names."""
    normal = label.strip().lower()
    if not _LABEL.match(normal):
        raise Invalid(
            "a label is 1 to 63 letters, digits or hyphens, and neither starts nor ends with"
            " a hyphen"
        )
    if normal[2:4] == "--":
        raise Invalid("a label may not have hyphens in its third and fourth characters")
    if normal in {name.lower() for name in reserved}:
        raise Invalid(f"the label {normal!r} is reserved")
    return normal


def check_addresses(addresses: list[str]) -> list[str]:
    """What a device reports as its public addresses, normalized (compressed IPv6, duplicates
    dropped, order kept), or :class:`InvalidAddress`: at most :data:`MAX_ADDRESSES` unicast IP
    addresses (not unspecified, multicast or link-local)."""
    if len(addresses) > MAX_ADDRESSES:
        raise InvalidAddress(f"at most {MAX_ADDRESSES} addresses")
    found: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise InvalidAddress(f"{text[:64]!r} is not an IP address") from None
        if address.is_unspecified or address.is_multicast or address.is_link_local:
            raise InvalidAddress(f"{address} is not a unicast address another device could reach")
        if str(address) not in found:
            found.append(str(address))
    return found


def current_addresses(seen: str, reported: list[str]) -> list[str]:
    """The addresses a device is reached at: what it reported, else what the server saw."""
    if reported:
        return list(reported)
    return [seen] if seen else []


def publishable(addresses: list[str], *, private: bool) -> list[str]:
    """The addresses that go into the zone: global ones only, unless ``private``."""
    found = []
    for text in addresses:
        address = ipaddress.ip_address(text)
        if private or address.is_global:
            found.append(text)
    return found


# --------------------------------------------------------------------- units of work


def _place(column: str, network_id: str, device_id: str) -> str:
    return ADDRESSES_SEALED.place(column, f"{network_id}/{device_id}")


def open_addresses(row: Row, vault: Vault) -> tuple[str, list[str]]:
    """``(seen, reported)`` of a ``device_addresses`` row (with its key columns), opened."""
    network_id, device_id = row["network_id"], row["device_id"]
    seen = vault.open(row["seen"], _place("seen", network_id, device_id))
    reported = vault.open(row["reported"], _place("reported", network_id, device_id))
    return seen, list(from_json(reported))


async def record_address(
    tx: Tx, vault: Vault, network_id: str, device_id: str, seen: str, reported: list[str]
) -> None:
    """Store a device's current address, sealed (a device deleted meanwhile: the foreign key
    refuses it, and the caller drops the change)."""
    await tx.execute(
        "INSERT INTO device_addresses (network_id, device_id, seen, reported, updated_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (network_id, device_id) DO UPDATE"
        " SET seen = excluded.seen, reported = excluded.reported,"
        " updated_at = excluded.updated_at",
        network_id,
        device_id,
        vault.seal_optional(seen, _place("seen", network_id, device_id)),
        vault.seal(to_json(reported), _place("reported", network_id, device_id)),
        now_ms(),
    )


async def device_addresses(tx: Tx, vault: Vault, network_id: str, device_id: str) -> list[str]:
    """The device's current addresses (empty before its first session)."""
    row = await tx.fetchrow(
        "SELECT network_id, device_id, seen, reported FROM device_addresses"
        " WHERE network_id = $1 AND device_id = $2",
        network_id,
        device_id,
    )
    if row is None:
        return []
    return current_addresses(*open_addresses(row, vault))


async def current_label(tx: Tx, network_id: str, device_id: str) -> str | None:
    """The label of the device as it is now: ``None`` without a name, and for a name left by
    an earlier device of the same id and another user (deleted, not swept yet)."""
    row = await tx.fetchrow(
        "SELECT label, user_id FROM ddns_names WHERE network_id = $1 AND device_id = $2",
        network_id,
        device_id,
    )
    if row is None:
        return None
    found = await find_devices(tx, network_id=network_id, device_id=device_id, limit=1)
    if not found or found[0].user_id != row["user_id"]:
        return None
    label: str = row["label"]
    return label


def _name(row: Row, addresses: list[str]) -> DdnsName:
    return DdnsName(
        label=row["label"],
        network_id=row["network_id"],
        device_id=row["device_id"],
        created_at=row["created_at"],
        addresses=addresses,
    )


async def orphaned_names(tx: Tx) -> list[str]:
    """Remove the names whose device is gone (deleted, with its account or network); their
    labels. One look at each network that has names."""
    rows = await tx.fetch("SELECT label, network_id, device_id FROM ddns_names ORDER BY label")
    devices: dict[str, set[str]] = {}
    gone = []
    for row in rows:
        network_id = row["network_id"]
        if network_id not in devices:
            devices[network_id] = set(await device_ids_of_network(tx, network_id))
        if row["device_id"] not in devices[network_id]:
            gone.append(row["label"])
    for label in gone:
        await tx.execute("DELETE FROM ddns_names WHERE label = $1", label)
    return gone


async def _own_device(tx: Tx, scope: Scope, network_id: str, device_id: str) -> None:
    """The device is in one of the caller's networks (else :class:`NotFound`) and the caller's
    own (else :class:`Forbidden`: its network's members see it, but only its user names it)."""
    row = await scoped_device(tx, scope, network_id, device_id)
    if row["user_id"] != scope.user_id:
        raise Forbidden("only the device's own user gives it a DNS name")


async def set_name(
    tx: Tx, vault: Vault, scope: Scope, network_id: str, device_id: str, label: str
) -> tuple[DdnsName, str | None]:
    """Give the caller's device the name ``label`` (checked by :func:`check_label`), replacing
    its earlier one; the name and the label it replaced (``None`` if none, or the same).
    :class:`NameTaken` if another device holds the label."""
    await _own_device(tx, scope, network_id, device_id)
    current = await tx.fetchrow(
        "SELECT label, user_id FROM ddns_names WHERE network_id = $1 AND device_id = $2",
        network_id,
        device_id,
    )
    before = None if current is None else current["label"]
    # A name left by an earlier device of the same id (deleted, not swept yet) is not this one's.
    stale = current is not None and current["user_id"] != scope.user_id
    if before != label or stale:
        holder = await tx.fetchval("SELECT 1 FROM ddns_names WHERE label = $1", label)
        if holder is not None and label != before:
            raise NameTaken("that name is taken")
        if before is not None:
            await tx.execute("DELETE FROM ddns_names WHERE label = $1", before)
        try:
            await tx.execute(
                "INSERT INTO ddns_names (label, network_id, device_id, user_id, created_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                label,
                network_id,
                device_id,
                scope.user_id,
                now_ms(),
            )
        except UniqueViolation:  # taken by a concurrent request meanwhile
            raise NameTaken("that name is taken") from None
        await append_audit(
            tx, scope.user_id, "ddns.set", f"{network_id}/{device_id}", {"label": label}
        )
    row = await tx.fetchrow("SELECT * FROM ddns_names WHERE label = $1", label)
    assert row is not None
    addresses = await device_addresses(tx, vault, network_id, device_id)
    return _name(row, addresses), (before if before != label else None)


async def get_name(tx: Tx, vault: Vault, scope: Scope, network_id: str, device_id: str) -> DdnsName:
    """The device's name; :class:`NotFound` if it has none (or is not the caller's to see)."""
    device = await scoped_device(tx, scope, network_id, device_id)
    row = await tx.fetchrow(
        "SELECT * FROM ddns_names WHERE network_id = $1 AND device_id = $2 AND user_id = $3",
        network_id,
        device_id,
        device["user_id"],
    )
    if row is None:
        raise NotFound()
    return _name(row, await device_addresses(tx, vault, network_id, device_id))


async def remove_name(tx: Tx, scope: Scope, network_id: str, device_id: str) -> str:
    """Take the caller's device's name away; the label it had. :class:`NotFound` if none."""
    await _own_device(tx, scope, network_id, device_id)
    label: str | None = await tx.fetchval(
        "SELECT label FROM ddns_names WHERE network_id = $1 AND device_id = $2 AND user_id = $3",
        network_id,
        device_id,
        scope.user_id,
    )
    if label is None:
        raise NotFound()
    await tx.execute("DELETE FROM ddns_names WHERE label = $1", label)
    await append_audit(
        tx, scope.user_id, "ddns.remove", f"{network_id}/{device_id}", {"label": label}
    )
    return label
