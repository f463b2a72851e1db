"""The accounts room's part of retention (``store.Retention``): sign-in leftovers past their age.

Each purge deletes up to ``limit`` rows whose age counts from before ``before`` (ms) and says how
many. What a running check still needs is never past its age: a rotated refresh token stays
until it expires (its reuse revokes the family), a code until the sending budget's window is
over (the configuration refuses a shorter retention), a revocation until every access token it
refuses has expired (the composition adds the access tokens' lifetime to its age).
"""

from __future__ import annotations

from ..store import Tx


async def purge_login_codes(tx: Tx, before: int, limit: int) -> int:
    """One-time codes that expired before ``before`` (used or not)."""
    return await tx.execute(
        "DELETE FROM login_codes WHERE code_id IN"
        " (SELECT code_id FROM login_codes WHERE expires_at < $1 LIMIT $2)",
        before,
        limit,
    )


async def purge_refresh_tokens(tx: Tx, before: int, limit: int) -> int:
    """Refresh tokens that expired, or were revoked, before ``before``."""
    return await tx.execute(
        "DELETE FROM refresh_tokens WHERE token_id IN (SELECT token_id FROM refresh_tokens"
        " WHERE expires_at < $1 OR revoked_at < $1 LIMIT $2)",
        before,
        limit,
    )


async def purge_oauth_states(tx: Tx, before: int, limit: int) -> int:
    """OpenID Connect sign-ins begun and never finished, expired before ``before``."""
    return await tx.execute(
        "DELETE FROM oauth_states WHERE state IN"
        " (SELECT state FROM oauth_states WHERE expires_at < $1 LIMIT $2)",
        before,
        limit,
    )


async def purge_token_revocations(tx: Tx, before: int, limit: int) -> int:
    """Revocations of tokens issued before ``before``: the caller makes ``before`` early enough
    that every access token they refuse has expired."""
    return await tx.execute(
        "DELETE FROM token_revocations WHERE subject IN"
        " (SELECT subject FROM token_revocations WHERE not_before < $1 LIMIT $2)",
        before,
        limit,
    )
