"""argon2id for every secret that is verified by hash: one-time codes, refresh tokens, keys.

Hashing costs milliseconds of CPU by design, so it runs on a worker thread, never on the loop.
"""

from __future__ import annotations

import secrets

import argon2
import trio

# OWASP's minimum for argon2id: m = 19 MiB, t = 2, p = 1.
_hasher = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verifying against this when there is nothing to verify keeps "no such token" as slow as
# "wrong secret".
_DUMMY = _hasher.hash(secrets.token_urlsafe(16))


async def hash_secret(secret: str) -> str:
    return await trio.to_thread.run_sync(_hasher.hash, secret)


def _verify(encoded: str | None, secret: str) -> bool:
    try:
        return _hasher.verify(encoded or _DUMMY, secret) and encoded is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


async def verify_secret(encoded: str | None, secret: str) -> bool:
    """Whether ``secret`` matches ``encoded``.

    ``None`` (nothing stored) costs the same and fails.
    """
    return await trio.to_thread.run_sync(_verify, encoded, secret)


def split_token(token: str, prefix: str) -> tuple[str, str] | None:
    """``<prefix>_<id>.<secret>`` into its id and secret, or ``None`` if it is not of that shape."""
    if not token.startswith(prefix + "_") or len(token) > 200:
        return None
    public, dot, secret = token[len(prefix) + 1 :].partition(".")
    if not dot or not public or not secret:
        return None
    return f"{prefix}_{public}", secret


def new_token(prefix: str) -> tuple[str, str, str]:
    """A fresh ``(id, secret, token)``; the token is what the client keeps."""
    public = secrets.token_urlsafe(12)
    secret = secrets.token_urlsafe(32)
    token_id = f"{prefix}_{public}"
    return token_id, secret, f"{token_id}.{secret}"
