"""What removing an account, a network or a device entails, once, for whoever asks: the user
for their own things, an operator for anyone's. Each is a unit of work inside the caller's
transaction; the caller checks who may, and audits who did it.

Every credential that reached what is removed ends in the same transaction (refresh tokens at
once, access tokens through ``token_revocations``, which every instance picks up); the callers
get the revoked subjects to apply them to the running token checks without waiting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .._errors import NotFound, YggdrasilError
from .._tokens import device_subject, user_subject
from ..devices import delete_devices_of_user, device_ids_of_network, remove_device
from ..networks import delete_network_row, remove_user_from_networks
from ..store import Tx
from ._revocations import revoke_device_tokens, revoke_user_tokens


class RoomData(Protocol):
    """Another room's part of a user's data (billing's ledger, say), handed to the accounts
    room by the composition so that this room imports none of them: ``export`` adds it to the
    user's export, ``forget`` removes or pseudonymizes it inside the deletion's unit."""

    async def export(self, tx: Tx, user_id: str) -> dict[str, Any]: ...

    async def forget(self, tx: Tx, user_id: str) -> None: ...


class HomeNetwork(YggdrasilError):
    status = 409
    code = "home_network"
    default_message = (
        "a user's home network cannot be deleted (their devices sign in there); "
        "deleting the account deletes it"
    )


async def delete_account(
    tx: Tx, user_id: str, at: int, rooms: Mapping[str, RoomData] | None = None
) -> list[str]:
    """Delete the account ``user_id``: everything user-linked is removed or pseudonymized, every
    token revoked as of ``at``. :class:`NotFound` if there is no such (undeleted) account.

    The users row stays as a pseudonym (random id, no e-mail, no name) so that the audit log,
    which must never change, keeps pointing at something; it identifies no one any more.
    """
    email_index = await tx.fetchval(
        "SELECT email_index FROM users WHERE user_id = $1 AND status != 'deleted'", user_id
    )
    exists = await tx.fetchval(
        "SELECT 1 FROM users WHERE user_id = $1 AND status != 'deleted'", user_id
    )
    if not exists:
        raise NotFound()
    await revoke_user_tokens(tx, user_id, at)
    await tx.execute("DELETE FROM refresh_tokens WHERE user_id = $1", user_id)
    await tx.execute("DELETE FROM identities WHERE user_id = $1", user_id)
    if email_index is not None:  # codes keep only the blind index of their address
        await tx.execute("DELETE FROM login_codes WHERE email = $1", email_index)
    await tx.execute("DELETE FROM enrollment_keys WHERE created_by = $1", user_id)
    await delete_devices_of_user(tx, user_id)
    await remove_user_from_networks(tx, user_id)
    for room in (rooms or {}).values():
        await room.forget(tx, user_id)
    await tx.execute(
        "UPDATE users SET email = NULL, email_index = NULL, display_name = '', status = 'deleted',"
        " home_network_id = NULL, updated_at = $2 WHERE user_id = $1",
        user_id,
        at,
    )
    return [user_subject(user_id)]


async def delete_network(tx: Tx, network_id: str, at: int) -> list[str]:
    """Delete ``network_id`` with its devices (each one's tokens revoked as of ``at``), its
    memberships and its enrolment keys; the revoked subjects. :class:`NotFound` if there is no
    such network, :class:`HomeNetwork` if it is someone's home network."""
    home_of = await tx.fetchval(
        "SELECT user_id FROM users WHERE home_network_id = $1 AND status != 'deleted'", network_id
    )
    if home_of is not None:
        raise HomeNetwork()
    device_ids = await device_ids_of_network(tx, network_id)
    for device_id in device_ids:
        await revoke_device_tokens(tx, network_id, device_id, at)
    await tx.execute("DELETE FROM enrollment_keys WHERE network_id = $1", network_id)
    await delete_network_row(tx, network_id)
    return [device_subject(network_id, device_id) for device_id in device_ids]


async def delete_device(tx: Tx, network_id: str, device_id: str, at: int) -> list[str]:
    """Delete one device and revoke its tokens as of ``at``; the revoked subjects.
    :class:`NotFound` if there is no such device."""
    await remove_device(tx, network_id, device_id, at, revoke_device_tokens)
    return [device_subject(network_id, device_id)]
