"""A user's own account data: profile, GDPR export, deletion; their networks' deletion and
their enrolment keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from .._errors import Forbidden, NotFound
from .._ids import now_ms
from ..devices import devices_of_user
from ..networks import networks_of_user, require_member
from ..store import Database, Page, Row, Scope, Tx, append_audit, audit_entries_about
from ._keys import EnrollmentKeyInfo, list_keys, next_cursor, page_args, revoke_key
from ._removal import RoomData, delete_account, delete_network
from ._sealed import IDENTITIES
from ._users import USERS, User, _user


class AccountData:
    def __init__(self, db: Database, rooms: Mapping[str, RoomData] | None = None) -> None:
        """``rooms``: other rooms' parts of a user's data, by the name they have in the
        export."""
        self.db = db
        self.rooms = dict(rooms or {})

    async def update_profile(self, scope: Scope, *, display_name: str | None) -> User:
        vault = self.db.vault

        async def work(tx: Tx) -> Row:
            if display_name is not None:
                changed = await tx.execute(
                    "UPDATE users SET display_name = $2, updated_at = $3"
                    " WHERE user_id = $1 AND status != 'deleted'",
                    scope.user_id,
                    vault.seal_optional(display_name, USERS.place("display_name", scope.user_id)),
                    now_ms(),
                )
                if changed != 1:
                    raise NotFound()
                await append_audit(tx, scope.user_id, "user.update", scope.user_id)
            row = await tx.fetchrow(
                "SELECT * FROM users WHERE user_id = $1 AND status != 'deleted'", scope.user_id
            )
            if row is None:
                raise NotFound()
            return row

        return _user(await self.db.write(work), vault)

    async def export(self, scope: Scope) -> dict[str, Any]:
        """Everything stored about the user, machine-readable (GDPR art. 20).

        Secrets (hashes of codes, tokens and keys) are left out: they are ours, not the user's data,
        and useless to them.
        """
        user_id = scope.user_id
        vault = self.db.vault

        async def work(tx: Tx) -> dict[str, Any]:
            user = await tx.fetchrow(
                "SELECT * FROM users WHERE user_id = $1 AND status != 'deleted'", user_id
            )
            if user is None:
                raise NotFound()
            networks = await networks_of_user(tx, user_id)
            devices = await devices_of_user(tx, user_id, vault=vault)
            identities = [
                {
                    **row,
                    "subject": vault.open(row["subject"], IDENTITIES.place("subject", user_id)),
                    "email": vault.open_optional(row["email"], IDENTITIES.place("email", user_id)),
                }
                for row in await tx.fetch(
                    "SELECT issuer, subject, email, created_at FROM identities WHERE user_id = $1",
                    user_id,
                )
            ]
            sessions = await tx.fetch(
                "SELECT token_id, family_id, network_id, device_id, created_at, expires_at,"
                " used_at, revoked_at FROM refresh_tokens WHERE user_id = $1 ORDER BY created_at",
                user_id,
            )
            keys = await tx.fetch(
                "SELECT key_id, network_id, created_at, expires_at, used_at, used_by_device"
                " FROM enrollment_keys WHERE created_by = $1 ORDER BY created_at",
                user_id,
            )
            codes = await tx.fetch(
                "SELECT code_id, created_at, expires_at, attempts, consumed_at FROM login_codes"
                " WHERE email = $1 ORDER BY created_at",
                user["email_index"],
            )
            audit = [
                {**entry, "detail": vault.open_detail(entry["detail"])}
                for entry in await audit_entries_about(tx, user_id)
            ]
            opened = _user(user, vault)
            user = {
                **{k: v for k, v in user.items() if k != "email_index"},
                "email": opened.email,
                "display_name": opened.display_name,
            }
            others = {name: await room.export(tx, user_id) for name, room in self.rooms.items()}
            return {
                "user": user,
                "networks": networks,
                "devices": [msgspec.to_builtins(device) for device in devices],
                "identities": identities,
                "sessions": sessions,
                "enrollment_keys": keys,
                "login_codes": codes,
                "audit_log": audit,
                **others,
            }

        return await self.db.read(work)

    async def delete(self, scope: Scope) -> int:
        """Delete the account: everything user-linked is removed or pseudonymized, every token
        revoked, in one transaction (:func:`delete_account`). Returns the revocation time (ms).
        """
        user_id, at = scope.user_id, now_ms()

        async def work(tx: Tx) -> None:
            await delete_account(tx, user_id, at, self.rooms)
            await append_audit(tx, user_id, "user.delete", user_id)

        await self.db.write(work)
        return at

    # ----------------------------------------------------------------- their networks

    async def delete_network(self, scope: Scope, network_id: str) -> tuple[int, list[str]]:
        """Delete one of the principal's networks (its owner only; not their home network) with
        its devices, whose tokens are revoked. The revocation time (ms) and revoked subjects.

        A network the principal is no member of is :class:`NotFound`, exactly as one that does
        not exist."""
        if scope.network_id is not None:
            raise Forbidden("a device's token cannot delete networks")
        at = now_ms()

        async def work(tx: Tx) -> list[str]:
            await _require_owner(tx, scope, network_id, "delete it")
            revoked = await delete_network(tx, network_id, at)
            await append_audit(tx, scope.user_id, "network.delete", network_id)
            return revoked

        return at, await self.db.write(work)

    # ----------------------------------------------------------------- their enrolment keys

    async def enrollment_keys(
        self, scope: Scope, network_id: str, *, cursor: str | None = None, limit: int = 50
    ) -> Page[EnrollmentKeyInfo]:
        """The enrolment keys the principal created for one of their networks, oldest first."""
        if scope.network_id is not None:
            raise Forbidden("a device's token cannot list enrolment keys")
        after = page_args(cursor, limit)

        async def work(tx: Tx) -> list[EnrollmentKeyInfo]:
            await require_member(tx, scope.user_id, network_id)
            return await list_keys(
                tx,
                at=now_ms(),
                created_by=scope.user_id,
                network_id=network_id,
                after=after,
                limit=limit + 1,
            )

        keys = await self.db.read(work)
        more = len(keys) > limit
        keys = keys[:limit]
        return Page(keys, next_cursor(keys[-1].created_at, keys[-1].key_id) if more else None)

    async def revoke_enrollment_key(
        self, scope: Scope, network_id: str, key_id: str
    ) -> EnrollmentKeyInfo:
        """Revoke a key the principal created for one of their networks; someone else's key,
        or one of another network, is :class:`NotFound` like one that does not exist."""
        if scope.network_id is not None:
            raise Forbidden("a device's token cannot revoke enrolment keys")
        at = now_ms()

        async def work(tx: Tx) -> EnrollmentKeyInfo:
            await require_member(tx, scope.user_id, network_id)
            key = await revoke_key(tx, key_id, at, created_by=scope.user_id, network_id=network_id)
            await append_audit(tx, scope.user_id, "enrollment_key.revoke", key_id)
            return key

        return await self.db.write(work)


async def _require_owner(tx: Tx, scope: Scope, network_id: str, what: str) -> None:
    role = await require_member(tx, scope.user_id, network_id)
    if role != "owner":
        raise Forbidden(f"only the network's owner can {what}")
