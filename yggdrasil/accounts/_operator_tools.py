"""Operators' tools across tenants: finding, showing, suspending and deleting users, and the
same for devices, networks and enrolment keys. Mixed into :class:`Operators`.

Every call is checked to come from an operator (an operator's account token, or the command
line's :data:`CLI_OPERATOR`) and appended to the audit log with who did it, in the same
transaction. Deleting anything is what deleting it means for its owner (``_removal``), and
ends the credentials that reached it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

from .._errors import Forbidden, Invalid, NotFound
from .._ids import now_ms
from ..devices import Device, devices_of_user, find_devices
from ..networks import (
    Network,
    NetworkInfo,
    all_networks,
    network_info,
    networks_of_user,
    set_network_name,
)
from ..store import (
    MAX_PAGE,
    Database,
    Page,
    Row,
    Scope,
    Tx,
    append_audit,
    decode_cursor,
    encode_cursor,
)
from ._keys import EnrollmentKeyInfo, list_keys, next_cursor, page_args, revoke_key
from ._removal import RoomData, delete_account, delete_device, delete_network
from ._users import USERS, User, _user, email_index

UserStatus = Literal["active", "suspended", "deleted"]

CLI_OPERATOR = Scope(user_id="cli", role="operator")
"""Who the command line acts as: it runs on the server's own data, so it is an operator; the
audit log names it ``cli``."""


class UserDetail(msgspec.Struct, frozen=True):
    """A user for support: the account, its networks (with the user's role in each) and its
    devices (at most ``MAX_PAGE``)."""

    user: User
    networks: list[Network]
    devices: list[Device]


def _operator_only(scope: Scope) -> None:
    if scope.role != "operator" or scope.network_id is not None:
        raise Forbidden("operators only")


_SEARCH_BATCH = 500
"""Users whose addresses one round of a search opens."""


def _device_after(cursor: str | None, limit: int) -> tuple[str, str] | None:
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
    if cursor is None:
        return None
    network_id, _, device_id = (decode_cursor(cursor) or "").partition("\n")
    if not network_id or not device_id:
        raise Invalid("malformed cursor")
    return network_id, device_id


class OperatorTools:
    db: Database
    rooms: Mapping[str, RoomData]

    # ----------------------------------------------------------------- users

    async def list_users(
        self,
        scope: Scope,
        *,
        search: str | None = None,
        email: str | None = None,
        status: UserStatus | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[User]:
        """Users, oldest first: those whose e-mail address contains ``search`` (any case; a
        user id matches exactly), or whose address is ``email``; of one ``status`` (by default
        every account not deleted).

        Addresses are sealed (``_crypto``): ``email`` is found by its blind index, while
        ``search`` opens the addresses of the users after the cursor, oldest first, until the
        page is full (an operator's tool: it costs a decryption per user looked at)."""
        _operator_only(scope)
        after = page_args(cursor, limit)
        vault = self.db.vault
        needle = search.strip().lower() if search else ""
        wanted_id = search.strip() if search else ""

        def matches(row: Row) -> bool:
            if not needle or row["user_id"] == wanted_id:
                return True
            address = vault.open_optional(row["email"], USERS.place("email", row["user_id"]))
            return address is not None and needle in address

        async def work(tx: Tx) -> list[Row]:
            conditions: list[str] = []
            args: list[object] = []
            if status is None:
                conditions.append("status != 'deleted'")
            else:
                args.append(status)
                conditions.append(f"status = ${len(args)}")
            if email is not None:
                args.append(email_index(vault, email))
                conditions.append(f"email_index = ${len(args)}")
            found: list[Row] = []
            position = after
            while True:
                page_args_ = list(args)
                page_conditions = list(conditions)
                if position is not None:
                    page_args_.extend(position)
                    at, ident = f"${len(page_args_) - 1}", f"${len(page_args_)}"
                    page_conditions.append(
                        f"(created_at > {at} OR (created_at = {at} AND user_id > {ident}))"
                    )
                batch = limit + 1 if not needle else _SEARCH_BATCH
                page_args_.append(batch)
                rows = await tx.fetch(
                    f"SELECT * FROM users WHERE {' AND '.join(page_conditions)}"
                    f" ORDER BY created_at, user_id LIMIT ${len(page_args_)}",
                    *page_args_,
                )
                found += [row for row in rows if matches(row)]
                if len(rows) < batch or len(found) > limit:
                    break
                position = (rows[-1]["created_at"], rows[-1]["user_id"])
            found = found[: limit + 1]
            await append_audit(tx, scope.user_id, "admin.list_users", "", {"found": len(found)})
            return found

        rows = await self.db.write(work)
        users = [_user(row, vault) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(users, next_cursor(users[-1].created_at, users[-1].user_id) if more else None)

    async def find_user(self, scope: Scope, ref: str) -> User:
        """The user with the e-mail address or user id ``ref``; :class:`NotFound`."""
        _operator_only(scope)

        async def work(tx: Tx) -> Row:
            if "@" in ref:
                row = await tx.fetchrow(
                    "SELECT * FROM users WHERE email_index = $1", email_index(self.db.vault, ref)
                )
            else:
                row = await tx.fetchrow("SELECT * FROM users WHERE user_id = $1", ref.strip())
            if row is None:
                raise NotFound(f"no such user: {ref}")
            await append_audit(tx, scope.user_id, "admin.find_user", row["user_id"])
            return row

        return _user(await self.db.write(work), self.db.vault)

    async def user_detail(self, scope: Scope, user_id: str) -> UserDetail:
        _operator_only(scope)

        async def work(tx: Tx) -> UserDetail:
            row = await tx.fetchrow("SELECT * FROM users WHERE user_id = $1", user_id)
            if row is None:
                raise NotFound("no such user")
            networks = [
                Network(n["network_id"], n["name"], n["role"], n["created_at"])
                for n in await networks_of_user(tx, user_id)
            ]
            devices = await devices_of_user(tx, user_id, limit=MAX_PAGE, vault=self.db.vault)
            await append_audit(tx, scope.user_id, "admin.show_user", user_id)
            return UserDetail(_user(row, self.db.vault), networks, devices)

        return await self.db.write(work)

    async def delete_user(self, scope: Scope, user_id: str) -> tuple[int, list[str]]:
        """Delete an account exactly as its owner would (:func:`delete_account`); the
        revocation time (ms) and the revoked subjects."""
        _operator_only(scope)
        at = now_ms()

        async def work(tx: Tx) -> list[str]:
            revoked = await delete_account(tx, user_id, at, self.rooms)
            await append_audit(tx, scope.user_id, "admin.delete_user", user_id)
            return revoked

        return at, await self.db.write(work)

    # ----------------------------------------------------------------- devices

    async def list_devices(
        self,
        scope: Scope,
        *,
        user_id: str | None = None,
        network_id: str | None = None,
        device_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Device]:
        """Devices of every network by network and id, or of one user, one network, or with
        one id (device ids are unique within their network only)."""
        _operator_only(scope)
        after = _device_after(cursor, limit)

        async def work(tx: Tx) -> list[Device]:
            found = await find_devices(
                tx,
                user_id=user_id,
                network_id=network_id,
                device_id=device_id,
                after=after,
                limit=limit + 1,
                vault=self.db.vault,
            )
            await append_audit(
                tx, scope.user_id, "admin.list_devices", user_id or "", {"found": len(found)}
            )
            return found

        devices = await self.db.write(work)
        more = len(devices) > limit
        devices = devices[:limit]
        last = devices[-1] if devices else None
        return Page(
            devices,
            encode_cursor(f"{last.network_id}\n{last.device_id}") if more and last else None,
        )

    async def get_device(self, scope: Scope, network_id: str, device_id: str) -> Device:
        _operator_only(scope)

        async def work(tx: Tx) -> Device:
            found = await find_devices(
                tx, network_id=network_id, device_id=device_id, limit=1, vault=self.db.vault
            )
            if not found:
                raise NotFound("no such device")
            await append_audit(tx, scope.user_id, "admin.show_device", f"{network_id}/{device_id}")
            return found[0]

        return await self.db.write(work)

    async def delete_device(
        self, scope: Scope, network_id: str, device_id: str
    ) -> tuple[int, list[str]]:
        """Delete a device exactly as its user would; the revocation time and subjects."""
        _operator_only(scope)
        at = now_ms()

        async def work(tx: Tx) -> list[str]:
            try:
                revoked = await delete_device(tx, network_id, device_id, at)
            except NotFound:
                raise NotFound("no such device") from None
            await append_audit(
                tx, scope.user_id, "admin.delete_device", f"{network_id}/{device_id}"
            )
            return revoked

        return at, await self.db.write(work)

    # ----------------------------------------------------------------- networks

    async def list_networks(
        self,
        scope: Scope,
        *,
        user_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[NetworkInfo]:
        """Every network, oldest first, or those ``user_id`` belongs to."""
        _operator_only(scope)
        after = page_args(cursor, limit)

        async def work(tx: Tx) -> list[NetworkInfo]:
            found = await all_networks(tx, member=user_id, after=after, limit=limit + 1)
            await append_audit(
                tx, scope.user_id, "admin.list_networks", user_id or "", {"found": len(found)}
            )
            return found

        networks = await self.db.write(work)
        more = len(networks) > limit
        networks = networks[:limit]
        return Page(
            networks,
            next_cursor(networks[-1].created_at, networks[-1].network_id) if more else None,
        )

    async def get_network(self, scope: Scope, network_id: str) -> NetworkInfo:
        _operator_only(scope)

        async def work(tx: Tx) -> NetworkInfo:
            network = await _network(tx, network_id)
            await append_audit(tx, scope.user_id, "admin.show_network", network_id)
            return network

        return await self.db.write(work)

    async def rename_network(self, scope: Scope, network_id: str, name: str) -> NetworkInfo:
        _operator_only(scope)
        name = name.strip()
        if not 1 <= len(name) <= 100:
            raise Invalid("a network's name has 1 to 100 characters")

        async def work(tx: Tx) -> NetworkInfo:
            await _network(tx, network_id)
            await set_network_name(tx, network_id, name)
            await append_audit(tx, scope.user_id, "admin.rename_network", network_id)
            return await network_info(tx, network_id)

        return await self.db.write(work)

    async def delete_network(self, scope: Scope, network_id: str) -> tuple[int, list[str]]:
        """Delete a network exactly as its owner would (never a home network); the revocation
        time (ms) and the revoked subjects."""
        _operator_only(scope)
        at = now_ms()

        async def work(tx: Tx) -> list[str]:
            await _network(tx, network_id)
            revoked = await delete_network(tx, network_id, at)
            await append_audit(tx, scope.user_id, "admin.delete_network", network_id)
            return revoked

        return at, await self.db.write(work)

    # ----------------------------------------------------------------- enrolment keys

    async def list_enrollment_keys(
        self,
        scope: Scope,
        *,
        user_id: str | None = None,
        network_id: str | None = None,
        usable: bool = False,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[EnrollmentKeyInfo]:
        """Enrolment keys, oldest first: all, or created by ``user_id``, or for
        ``network_id``; only the ``usable`` ones if asked."""
        _operator_only(scope)
        after = page_args(cursor, limit)

        async def work(tx: Tx) -> list[EnrollmentKeyInfo]:
            found = await list_keys(
                tx,
                at=now_ms(),
                created_by=user_id,
                network_id=network_id,
                usable=usable,
                after=after,
                limit=limit + 1,
            )
            await append_audit(
                tx, scope.user_id, "admin.list_enrollment_keys", "", {"found": len(found)}
            )
            return found

        keys = await self.db.write(work)
        more = len(keys) > limit
        keys = keys[:limit]
        return Page(keys, next_cursor(keys[-1].created_at, keys[-1].key_id) if more else None)

    async def revoke_enrollment_key(self, scope: Scope, key_id: str) -> EnrollmentKeyInfo:
        """End a key's validity now; :class:`KeyUsed` if it was used already."""
        _operator_only(scope)
        at = now_ms()

        async def work(tx: Tx) -> EnrollmentKeyInfo:
            try:
                key = await revoke_key(tx, key_id, at)
            except NotFound:
                raise NotFound("no such enrolment key") from None
            await append_audit(tx, scope.user_id, "admin.revoke_enrollment_key", key_id)
            return key

        return await self.db.write(work)


async def _network(tx: Tx, network_id: str) -> NetworkInfo:
    try:
        return await network_info(tx, network_id)
    except NotFound:
        raise NotFound("no such network") from None
