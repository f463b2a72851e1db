"""Networks and memberships: the tenant boundary every other room checks through this one.

A user reaches a network only through a membership row. Other rooms never write SQL about
``networks`` or ``memberships`` themselves: they ask :func:`member_role` / :func:`require_member`
inside their own unit of work, or - to check and read in one statement - put this room's
:func:`is_member` condition into their query.
"""

from __future__ import annotations

import msgspec

from .._errors import Forbidden, NotFound
from .._ids import new_id, now_ms
from ..store import Database, Row, Scope, Tx, append_audit


class Network(msgspec.Struct, frozen=True):
    network_id: str
    name: str
    role: str
    """The principal's role in this network."""
    created_at: int


async def insert_network(tx: Tx, network_id: str, name: str, owner_id: str, at: int) -> None:
    """Create a network with ``owner_id`` as its owning member, inside ``tx`` (not audited here:
    the caller says why the network exists)."""
    await tx.execute(
        "INSERT INTO networks (network_id, name, owner_id, created_at) VALUES ($1, $2, $3, $4)",
        network_id,
        name,
        owner_id,
        at,
    )
    await tx.execute(
        "INSERT INTO memberships (network_id, user_id, role, created_at)"
        " VALUES ($1, $2, 'owner', $3)",
        network_id,
        owner_id,
        at,
    )


async def member_role(tx: Tx, network_id: str, user_id: str) -> str | None:
    """``user_id``'s role in ``network_id`` (``owner`` or ``member``), ``None`` if no member."""
    role: str | None = await tx.fetchval(
        "SELECT role FROM memberships WHERE network_id = $1 AND user_id = $2",
        network_id,
        user_id,
    )
    return role


def is_member(network: str, user: str) -> str:
    """An SQL condition, true when the user is a member of the network; ``network`` and
    ``user`` are SQL expressions (placeholders such as ``"$1"``, or columns). Lets a query about
    another room's rows check the tenant in the same statement::

        f"SELECT * FROM things WHERE network_id = $1 AND {is_member('$1', '$2')}"
    """
    return (
        "EXISTS (SELECT 1 FROM memberships"
        f" WHERE memberships.network_id = {network} AND memberships.user_id = {user})"
    )


async def require_member(tx: Tx, user_id: str, network_id: str) -> str:
    """The tenant check: ``user_id``'s role in ``network_id``, or :class:`NotFound` when they
    are no member, exactly as when the network does not exist."""
    role = await member_role(tx, network_id, user_id)
    if role is None:
        raise NotFound()
    return role


async def networks_of_user(tx: Tx, user_id: str) -> list[Row]:
    """Every network ``user_id`` belongs to, with their role and when they joined (their data
    export), oldest first."""
    return await tx.fetch(
        "SELECT n.network_id, n.name, m.role, n.created_at, m.created_at AS joined_at"
        " FROM networks n JOIN memberships m ON m.network_id = n.network_id"
        " WHERE m.user_id = $1 ORDER BY n.created_at",
        user_id,
    )


async def remove_user_from_networks(tx: Tx, user_id: str) -> None:
    """Account deletion: the networks ``user_id`` owns go (with everything in them), and so do
    their memberships elsewhere."""
    await tx.execute("DELETE FROM networks WHERE owner_id = $1", user_id)
    await tx.execute("DELETE FROM memberships WHERE user_id = $1", user_id)


class NetworkStore:
    """The principal's networks, over a :class:`Database`; every read takes a :class:`Scope`."""

    def __init__(self, db: Database) -> None:
        self.db = db

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
            await insert_network(tx, network_id, name, scope.user_id, at)
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

    async def rename_network(self, scope: Scope, network_id: str, name: str) -> Network:
        """Rename one of the principal's networks (its owner only; not from a device's token).

        A network the principal is no member of is :class:`NotFound`, exactly as one that does
        not exist; a member who is not the owner gets :class:`Forbidden`."""
        if scope.network_id is not None:
            raise Forbidden("a device's token cannot rename networks")

        async def work(tx: Tx) -> Row:
            role = await require_member(tx, scope.user_id, network_id)
            if role != "owner":
                raise Forbidden("only the network's owner can rename it")
            await set_network_name(tx, network_id, name)
            await append_audit(tx, scope.user_id, "network.rename", network_id)
            row = await tx.fetchrow(
                "SELECT n.network_id, n.name, m.role, n.created_at FROM networks n"
                " JOIN memberships m ON m.network_id = n.network_id"
                " WHERE m.user_id = $1 AND n.network_id = $2",
                scope.user_id,
                network_id,
            )
            assert row is not None
            return row

        return Network(**await self.db.write(work))


# --------------------------------------------------------------------- for operators and deletion


class NetworkInfo(msgspec.Struct, frozen=True):
    """A network as operators see it: who owns it and how many belong to it."""

    network_id: str
    name: str
    owner_id: str
    members: int
    created_at: int


_INFO = (
    "SELECT n.network_id, n.name, n.owner_id, n.created_at,"
    " (SELECT COUNT(*) FROM memberships m WHERE m.network_id = n.network_id) AS members"
    " FROM networks n"
)


def _info(row: Row) -> NetworkInfo:
    return NetworkInfo(
        network_id=row["network_id"],
        name=row["name"],
        owner_id=row["owner_id"],
        members=int(row["members"]),
        created_at=int(row["created_at"]),
    )


async def set_network_name(tx: Tx, network_id: str, name: str) -> None:
    """Rename ``network_id`` inside ``tx`` (the caller checked who may); :class:`NotFound` if
    it does not exist. Not audited here: the caller says who did it."""
    changed = await tx.execute(
        "UPDATE networks SET name = $2 WHERE network_id = $1", network_id, name
    )
    if changed != 1:
        raise NotFound()


async def delete_network_row(tx: Tx, network_id: str) -> None:
    """Delete ``network_id`` inside ``tx``, and with it (by the schema's cascades) its
    memberships, devices and enrolment keys; :class:`NotFound` if it does not exist.

    Only for the accounts room's network deletion, which ends the devices' credentials first."""
    deleted = await tx.execute("DELETE FROM networks WHERE network_id = $1", network_id)
    if deleted != 1:
        raise NotFound()


async def network_info(tx: Tx, network_id: str) -> NetworkInfo:
    """One network for an operator (who is checked by the caller); :class:`NotFound`."""
    row = await tx.fetchrow(_INFO + " WHERE n.network_id = $1", network_id)
    if row is None:
        raise NotFound()
    return _info(row)


async def all_networks(
    tx: Tx, *, member: str | None = None, after: tuple[int, str] | None = None, limit: int
) -> list[NetworkInfo]:
    """Networks for an operator (checked by the caller), oldest first: all of them, or those
    ``member`` belongs to; those after ``after`` (``created_at``, ``network_id``), at most
    ``limit``."""
    conditions: list[str] = []
    args: list[object] = []
    if member is not None:
        args.append(member)
        conditions.append(is_member("n.network_id", f"${len(args)}"))
    if after is not None:
        args.extend(after)
        at, ident = f"${len(args) - 1}", f"${len(args)}"
        conditions.append(
            f"(n.created_at > {at} OR (n.created_at = {at} AND n.network_id > {ident}))"
        )
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit)
    rows = await tx.fetch(
        f"{_INFO}{where} ORDER BY n.created_at, n.network_id LIMIT ${len(args)}", *args
    )
    return [_info(row) for row in rows]
