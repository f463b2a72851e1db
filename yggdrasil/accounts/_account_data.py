"""A user's own account data: profile, GDPR export, and deletion."""

from __future__ import annotations

from typing import Any

import msgspec

from .._errors import NotFound
from .._ids import now_ms
from ..devices import delete_devices_of_user, devices_of_user
from ..networks import networks_of_user, remove_user_from_networks
from ..store import Database, Row, Scope, Tx, append_audit, audit_entries_about
from ._revocations import revoke_user_tokens
from ._users import User, _user


class AccountData:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def update_profile(self, scope: Scope, *, display_name: str | None) -> User:
        async def work(tx: Tx) -> Row:
            if display_name is not None:
                changed = await tx.execute(
                    "UPDATE users SET display_name = $2, updated_at = $3"
                    " WHERE user_id = $1 AND status != 'deleted'",
                    scope.user_id,
                    display_name,
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

        return _user(await self.db.write(work))

    async def export(self, scope: Scope) -> dict[str, Any]:
        """Everything stored about the user, machine-readable (GDPR art. 20).

        Secrets (hashes of codes, tokens and keys) are left out: they are ours, not the user's data,
        and useless to them.
        """
        user_id = scope.user_id

        async def work(tx: Tx) -> dict[str, Any]:
            user = await tx.fetchrow(
                "SELECT * FROM users WHERE user_id = $1 AND status != 'deleted'", user_id
            )
            if user is None:
                raise NotFound()
            networks = await networks_of_user(tx, user_id)
            devices = await devices_of_user(tx, user_id)
            identities = await tx.fetch(
                "SELECT issuer, subject, email, created_at FROM identities WHERE user_id = $1",
                user_id,
            )
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
                user["email"],
            )
            audit = await audit_entries_about(tx, user_id)
            return {
                "user": user,
                "networks": networks,
                "devices": [msgspec.to_builtins(device) for device in devices],
                "identities": identities,
                "sessions": sessions,
                "enrollment_keys": keys,
                "login_codes": codes,
                "audit_log": audit,
            }

        return await self.db.read(work)

    async def delete(self, scope: Scope) -> int:
        """Delete the account: everything user-linked is removed or pseudonymized, every token
        revoked, in one transaction. Returns the revocation time (ms).

        The users row stays as a pseudonym (random id, no e-mail, no name) so that the audit log,
        which must never change, keeps pointing at something; it identifies no one any more.
        """
        user_id, at = scope.user_id, now_ms()

        async def work(tx: Tx) -> None:
            email = await tx.fetchval(
                "SELECT email FROM users WHERE user_id = $1 AND status != 'deleted'", user_id
            )
            exists = await tx.fetchval(
                "SELECT 1 FROM users WHERE user_id = $1 AND status != 'deleted'", user_id
            )
            if not exists:
                raise NotFound()
            await revoke_user_tokens(tx, user_id, at)
            await tx.execute("DELETE FROM refresh_tokens WHERE user_id = $1", user_id)
            await tx.execute("DELETE FROM identities WHERE user_id = $1", user_id)
            if email is not None:
                await tx.execute("DELETE FROM login_codes WHERE email = $1", email)
            await tx.execute("DELETE FROM enrollment_keys WHERE created_by = $1", user_id)
            await delete_devices_of_user(tx, user_id)
            await remove_user_from_networks(tx, user_id)
            await tx.execute(
                "UPDATE users SET email = NULL, display_name = '', status = 'deleted',"
                " home_network_id = NULL, updated_at = $2 WHERE user_id = $1",
                user_id,
                at,
            )
            await append_audit(tx, user_id, "user.delete", user_id)

        await self.db.write(work)
        return at
