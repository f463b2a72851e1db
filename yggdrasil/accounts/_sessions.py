"""Sessions as stored: a refresh token per session, in families that rotate.

A session is opened inside the sign-in transaction (the device, if any, joins its network in the
same one); each refresh replaces the token by a new one of the same family.
"""

from __future__ import annotations

import msgspec

from .._config import AuthConfig
from .._crypto import Vault
from .._errors import NotFound
from .._hashing import hash_secret, new_token
from .._ids import new_id, now_ms
from ..devices import NewDevice, claim_device
from ..networks import require_member
from ..store import Tx


class Grant(msgspec.Struct, frozen=True):
    """What a successful credential check hands to session creation."""

    user_id: str
    role: str
    network_id: str | None
    device_id: str | None
    family_id: str
    home_network_id: str | None = None
    """The user's home network, which their access tokens carry (it never changes)."""


async def new_refresh() -> tuple[str, tuple[str, str, str]]:
    token = new_token("rt")
    return await hash_secret(token[1]), token


async def insert_refresh(
    tx: Tx,
    refresh: tuple[str, str, str],
    secret_hash: str,
    family_id: str,
    user_id: str,
    network_id: str | None,
    device_id: str | None,
    config: AuthConfig,
) -> None:
    at = now_ms()
    await tx.execute(
        "INSERT INTO refresh_tokens (token_id, family_id, user_id, network_id, device_id,"
        " secret_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        refresh[0],
        family_id,
        user_id,
        network_id,
        device_id,
        secret_hash,
        at,
        at + config.refresh_ttl_s * 1000,
    )


async def open_session(
    tx: Tx,
    user_id: str,
    role: str,
    device: NewDevice | None,
    network_id: str | None,
    secret_hash: str,
    refresh: tuple[str, str, str],
    config: AuthConfig,
    *,
    vault: Vault,
    fresh_device: bool = False,
) -> Grant:
    """Inside the sign-in transaction: join the device to the network and store the refresh token.

    Network ID synchronisation: a signing-in device joins the network the user picked among
    theirs, or their home network. A device id that another member uses there is a conflict.
    """
    home: str | None = await tx.fetchval(
        "SELECT home_network_id FROM users WHERE user_id = $1", user_id
    )
    chosen: str | None = None
    if device is not None:
        if network_id is not None:
            await require_member(tx, user_id, network_id)
            chosen = network_id
        else:
            chosen = home
            if chosen is None:
                raise NotFound()
        await claim_device(tx, user_id, chosen, device, fresh=fresh_device, vault=vault)
    family_id = new_id("f")
    await insert_refresh(
        tx,
        refresh,
        secret_hash,
        family_id,
        user_id,
        chosen,
        device.device_id if device else None,
        config,
    )
    return Grant(user_id, role, chosen, device.device_id if device else None, family_id, home)
