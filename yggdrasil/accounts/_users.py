"""Users: the account row, created together with the home network its owner gets."""

from __future__ import annotations

from typing import Literal

import msgspec

from .._crypto import Vault
from .._errors import NotFound
from .._ids import new_id, now_ms
from ..networks import Network, insert_network
from ..store import Database, Row, Scope, SealedColumns, Tx, append_audit


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


USERS = SealedColumns(
    "users",
    key=("user_id",),
    owner="user_id",
    columns=("email", "display_name"),
    indexes={"email": ("email_index", "email")},
)
"""A user's e-mail address and display name are sealed; the address's blind index finds it."""


def email_index(vault: Vault, address: str) -> str:
    """The blind index of a normalized e-mail address (``users.email_index``,
    ``login_codes.email``): any case, no surrounding spaces."""
    return vault.index("email", address.strip().lower())


def _user(row: Row, vault: Vault) -> User:
    user_id = row["user_id"]
    fields = {k: v for k, v in row.items() if k in User.__struct_fields__}
    fields["email"] = vault.open_optional(row["email"], USERS.place("email", user_id))
    fields["display_name"] = vault.open(row["display_name"], USERS.place("display_name", user_id))
    return User(**fields)


async def insert_user(
    tx: Tx,
    vault: Vault,
    email: str | None,
    display_name: str = "",
    network_name: str = "Home",
    role: Literal["user", "operator"] = "user",
) -> tuple[str, str]:
    """Create a user and the home network they own, inside ``tx``; returns the user's id and
    their home network's id. ``UniqueViolation`` if the e-mail exists.

    Every account gets its home network at creation; nobody else is ever put into it implicitly.
    """
    user_id, network_id, at = new_id("u"), new_id("n"), now_ms()
    await tx.execute(
        "INSERT INTO users (user_id, email, email_index, display_name, role, home_network_id,"
        " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        user_id,
        vault.seal_optional(email, USERS.place("email", user_id)),
        None if email is None else email_index(vault, email),
        vault.seal_optional(display_name, USERS.place("display_name", user_id)),
        role,
        network_id,
        at,
    )
    await insert_network(tx, network_id, network_name, user_id, at)
    await append_audit(tx, user_id, "user.create", user_id)
    return user_id, network_id


class UserStore:
    """Creating users and reading one's own account, over a :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

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
            user_id, home = await insert_user(
                tx, self.db.vault, email, display_name, network_name, role
            )
            row = await tx.fetchrow("SELECT * FROM users WHERE user_id = $1", user_id)
            assert row is not None
            return _user(row, self.db.vault), Network(
                home, network_name, "owner", row["created_at"]
            )

        return await self.db.write(work)

    async def get_me(self, scope: Scope) -> User:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM users WHERE user_id = $1 AND status != 'deleted'", scope.user_id
            )

        row = await self.db.read(work)
        if row is None:
            raise NotFound()
        return _user(row, self.db.vault)
