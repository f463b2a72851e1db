"""TURN credentials: static users from the configuration, and ephemeral ones for devices.

Ephemeral credentials follow the TURN REST API convention coturn implements (``use-auth-secret``):
the username is ``<expiry unix time>:<user>/<network>/<device>``, the password the base64
HMAC-SHA1 of the username under the server's ``turn-secret``. Any server that shares the secret can
check them statelessly, and knows whose allocation it is (for the quotas per account and device).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable

import msgspec

from stun_turn import Owner, long_term_key

from .._config import TurnConfig


class TurnCredentials(msgspec.Struct, frozen=True):
    username: str
    password: str
    ttl_s: int


def ephemeral_password(secret: bytes, username: str) -> str:
    return base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()


def issue_credentials(
    secret: bytes, subject: str, ttl_s: int, *, clock: Callable[[], float] = time.time
) -> TurnCredentials:
    username = f"{int(clock()) + ttl_s}:{subject}"
    return TurnCredentials(username, ephemeral_password(secret, username), ttl_s)


def static_users(config: TurnConfig) -> dict[str, str]:
    """The configured ``user:password`` pairs (entries without both parts are ignored)."""
    found: dict[str, str] = {}
    for entry in config.static_users:
        user, _, password = entry.partition(":")
        if user and password:
            found[user] = password
    return found


def key_lookup(
    config: TurnConfig, secret: bytes, *, clock: Callable[[], float] = time.time
) -> Callable[[str, float], bytes | None]:
    """``key_for(username, now)`` for the TURN core: static users first, then ephemeral ones."""
    static = {
        user: long_term_key(user, config.realm, password)
        for user, password in static_users(config).items()
    }

    def key_for(username: str, now: float) -> bytes | None:
        key = static.get(username)
        if key is not None:
            return key
        expiry, colon, _ = username.partition(":")
        if not colon or not expiry.isdigit() or int(expiry) < clock():
            return None
        return long_term_key(username, config.realm, ephemeral_password(secret, username))

    return key_for


def owner_lookup(config: TurnConfig) -> Callable[[str], Owner]:
    """``owner_of(username)`` for the allocation quotas.

    A static user (looked up first, as by :func:`key_lookup`) is an account and a device of its
    own, with a quota of its own, ``max_allocations_per_static_user``: an operator's test client
    or a benchmark opens more allocations than one device would. Ephemeral credentials name the
    account and the device; they share the per-account and per-device quotas.
    """
    static = set(static_users(config))
    static_quota = config.max_allocations_per_static_user

    def owner_of(username: str) -> Owner:
        if username in static:
            return Owner(f"static:{username}", f"static:{username}", static_quota)
        expiry, colon, subject = username.partition(":")
        parts = subject.split("/")
        if colon and expiry.isdigit() and len(parts) == 3 and all(parts):
            return Owner(f"user:{parts[0]}", f"device:{subject}")
        return Owner(f"other:{username}", f"other:{username}")

    return owner_of
