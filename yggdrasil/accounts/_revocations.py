"""Revoking tokens: refresh tokens end at once, access tokens through ``token_revocations``,
which every instance loads into its :class:`TokenService` (``Accounts.load_revocations``)."""

from __future__ import annotations

from ..store import Tx, append_audit


async def set_revocation(tx: Tx, subject: str, not_before_ms: int) -> None:
    """Refuse access tokens of ``subject`` issued before ``not_before_ms``, on every instance."""
    updated = await tx.execute(
        "UPDATE token_revocations SET not_before = $2 WHERE subject = $1 AND not_before < $2",
        subject,
        not_before_ms,
    )
    if updated == 0:
        exists = await tx.fetchval("SELECT 1 FROM token_revocations WHERE subject = $1", subject)
        if not exists:
            await tx.execute(
                "INSERT INTO token_revocations (subject, not_before) VALUES ($1, $2)",
                subject,
                not_before_ms,
            )


async def revoke_device_tokens(tx: Tx, network_id: str, device_id: str, at: int) -> None:
    """Every token of one device, as of ``at`` (the device is deleted)."""
    await tx.execute(
        "UPDATE refresh_tokens SET revoked_at = $3"
        " WHERE network_id = $1 AND device_id = $2 AND revoked_at IS NULL",
        network_id,
        device_id,
        at,
    )
    await set_revocation(tx, f"device:{network_id}/{device_id}", at)
    await append_audit(tx, "system", "token.revoke", f"device:{network_id}/{device_id}")


async def revoke_user_tokens(tx: Tx, user_id: str, at: int) -> None:
    """Every token of one user, on all their devices, as of ``at``."""
    await tx.execute(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        user_id,
        at,
    )
    await set_revocation(tx, f"user:{user_id}", at)
    await append_audit(tx, "system", "token.revoke", f"user:{user_id}")


async def revoke_account_tokens(tx: Tx, user_id: str, at: int) -> None:
    """The user's own tokens (signed in without a device), as of ``at``; their devices keep
    theirs. For a role change: the role is in the user's tokens, while a device's token acts
    only as that device, whatever the role."""
    await tx.execute(
        "UPDATE refresh_tokens SET revoked_at = $2"
        " WHERE user_id = $1 AND device_id IS NULL AND revoked_at IS NULL",
        user_id,
        at,
    )
    await set_revocation(tx, f"account:{user_id}", at)
    await append_audit(tx, "system", "token.revoke", f"account:{user_id}")
