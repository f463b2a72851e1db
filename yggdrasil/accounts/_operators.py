"""What operators may do across tenants for support; every action is audited."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from .._errors import Forbidden, NotFound
from .._ids import now_ms
from ..devices import Device, devices_of_user
from ..store import MAX_PAGE, Database, Row, Scope, Tx, append_audit
from ._operator_tools import OperatorTools
from ._removal import RoomData
from ._revocations import revoke_account_tokens, revoke_user_tokens
from ._users import User, _user, email_index


def _require_operator(scope: Scope) -> None:
    if scope.role != "operator" or scope.network_id is not None:
        raise Forbidden("operators only")


class Operators(OperatorTools):
    def __init__(self, db: Database, rooms: Mapping[str, RoomData] | None = None) -> None:
        """``rooms`` as for :class:`AccountData` (deleting a user forgets their data there)."""
        self.db = db
        self.rooms = dict(rooms or {})

    async def find_users(self, scope: Scope, *, email: str) -> list[User]:
        _require_operator(scope)

        async def work(tx: Tx) -> list[Row]:
            rows = await tx.fetch(
                "SELECT * FROM users WHERE email_index = $1", email_index(self.db.vault, email)
            )
            await append_audit(tx, scope.user_id, "admin.find_user", "", {"found": len(rows)})
            return rows

        return [_user(row, self.db.vault) for row in await self.db.write(work)]

    async def set_status(
        self, scope: Scope, user_id: str, status: Literal["active", "suspended"]
    ) -> tuple[User, int]:
        """Suspend (revoking every token at once) or reactivate a user."""
        _require_operator(scope)
        at = now_ms()

        async def work(tx: Tx) -> Row:
            changed = await tx.execute(
                "UPDATE users SET status = $2, updated_at = $3"
                " WHERE user_id = $1 AND status != 'deleted'",
                user_id,
                status,
                at,
            )
            if changed != 1:
                raise NotFound()
            if status == "suspended":
                await revoke_user_tokens(tx, user_id, at)
            await append_audit(tx, scope.user_id, f"admin.{status}", user_id)
            row = await tx.fetchrow("SELECT * FROM users WHERE user_id = $1", user_id)
            assert row is not None
            return row

        return _user(await self.db.write(work), self.db.vault), at

    async def user_devices(self, scope: Scope, user_id: str) -> list[Device]:
        _require_operator(scope)

        async def work(tx: Tx) -> list[Device]:
            exists = await tx.fetchval("SELECT 1 FROM users WHERE user_id = $1", user_id)
            if not exists:
                raise NotFound()
            devices = await devices_of_user(tx, user_id, limit=MAX_PAGE, vault=self.db.vault)
            await append_audit(tx, scope.user_id, "admin.list_devices", user_id)
            return devices

        return await self.db.write(work)

    async def grant_role(self, email: str, role: Literal["user", "operator"]) -> bool:
        """For the command line (``yggdrasil admin grant``): there is no API to become operator.

        Whether the role changed; :class:`NotFound` for an unknown address. A change revokes the
        user's own tokens (they carry the role) and not their devices': a device acts only as
        itself, whatever its user's role, so its sessions stay up."""
        address = email_index(self.db.vault, email)

        async def work(tx: Tx) -> bool:
            row = await tx.fetchrow(
                "SELECT user_id, role FROM users WHERE email_index = $1 AND status != 'deleted'",
                address,
            )
            if row is None:
                raise NotFound()
            if row["role"] == role:
                return False
            at = now_ms()
            await tx.execute(
                "UPDATE users SET role = $2, updated_at = $3 WHERE user_id = $1",
                row["user_id"],
                role,
                at,
            )
            await revoke_account_tokens(tx, row["user_id"], at)
            await append_audit(tx, "cli", f"admin.grant_{role}", row["user_id"])
            return True

        return await self.db.write(work)
