"""Enrolment keys after their creation: listing them (never their secrets) and revoking them.

A key is revoked by ending its validity now, with the same compare-and-set a redemption uses:
of a revocation and a redemption racing for one key, exactly one wins. A revoked key is listed
as ``expired``; the audit log says who ended it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .._errors import Invalid, NotFound, YggdrasilError
from ..store import MAX_PAGE, Row, Tx, decode_cursor, encode_cursor

KeyStatus = Literal["usable", "used", "expired"]


class KeyUsed(YggdrasilError):
    status = 409
    code = "key_used"
    default_message = "the enrolment key was used already; delete the device it enrolled instead"


class EnrollmentKeyInfo(msgspec.Struct, frozen=True):
    """An enrolment key as listed: everything but its secret."""

    key_id: str
    network_id: str
    created_by: str
    created_at: int
    expires_at: int
    used_at: int | None
    used_by_device: str | None
    status: KeyStatus
    """``usable`` until it is used (``used``) or its time is up or it was revoked
    (``expired``)."""


def _info(row: Row, at: int) -> EnrollmentKeyInfo:
    status: KeyStatus = "usable"
    if row["used_at"] is not None:
        status = "used"
    elif int(row["expires_at"]) <= at:
        status = "expired"
    return EnrollmentKeyInfo(
        key_id=row["key_id"],
        network_id=row["network_id"],
        created_by=row["created_by"],
        created_at=int(row["created_at"]),
        expires_at=int(row["expires_at"]),
        used_at=row["used_at"],
        used_by_device=row["used_by_device"],
        status=status,
    )


def page_args(cursor: str | None, limit: int) -> tuple[int, str] | None:
    """Check a page's ``limit`` and read its cursor: the (time, id) after which the page
    starts, or ``None`` for the first page. :class:`Invalid` for a bad limit or cursor."""
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
    if cursor is None:
        return None
    decoded = decode_cursor(cursor)
    at, _, ident = (decoded or "").partition("\n")
    if not at.isdigit() or not ident:
        raise Invalid("malformed cursor")
    return int(at), ident


def next_cursor(at: int, ident: str) -> str:
    return encode_cursor(f"{at}\n{ident}")


async def list_keys(
    tx: Tx,
    *,
    at: int,
    created_by: str | None = None,
    network_id: str | None = None,
    usable: bool = False,
    after: tuple[int, str] | None = None,
    limit: int,
) -> list[EnrollmentKeyInfo]:
    """Enrolment keys, oldest first: those ``created_by`` someone, of ``network_id``, only the
    ``usable`` ones (as of ``at``), after ``after`` (``created_at``, ``key_id``), at most
    ``limit``. The caller checked who may see them."""
    conditions: list[str] = []
    args: list[object] = []
    for column, value in (("created_by", created_by), ("network_id", network_id)):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if usable:
        args.append(at)
        conditions.append(f"used_at IS NULL AND expires_at > ${len(args)}")
    if after is not None:
        args.extend(after)
        when, ident = f"${len(args) - 1}", f"${len(args)}"
        conditions.append(f"(created_at > {when} OR (created_at = {when} AND key_id > {ident}))")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit)
    rows = await tx.fetch(
        "SELECT key_id, network_id, created_by, created_at, expires_at, used_at, used_by_device"
        f" FROM enrollment_keys{where} ORDER BY created_at, key_id LIMIT ${len(args)}",
        *args,
    )
    return [_info(row, at) for row in rows]


async def revoke_key(
    tx: Tx,
    key_id: str,
    at: int,
    *,
    created_by: str | None = None,
    network_id: str | None = None,
) -> EnrollmentKeyInfo:
    """End the key's validity as of ``at`` (when ``created_by`` and ``network_id`` are given,
    only a key of theirs). Revoking an expired key changes nothing; a used one is
    :class:`KeyUsed`; none (or not theirs) :class:`NotFound`. The key as it is now."""
    conditions = ["key_id = $1"]
    args: list[object] = [key_id]
    for column, value in (("created_by", created_by), ("network_id", network_id)):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    where = " AND ".join(conditions)
    args.append(at)
    await tx.execute(
        f"UPDATE enrollment_keys SET expires_at = ${len(args)}"
        f" WHERE {where} AND used_at IS NULL AND expires_at > ${len(args)}",
        *args,
    )
    row = await tx.fetchrow(
        "SELECT key_id, network_id, created_by, created_at, expires_at, used_at, used_by_device"
        f" FROM enrollment_keys WHERE {where}",
        *args[:-1],
    )
    if row is None:
        raise NotFound()
    if row["used_at"] is not None:
        raise KeyUsed()
    return _info(row, at)
