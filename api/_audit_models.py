"""Request and response bodies of the audit log's routes (``/api/v1/users/me/audit`` in
``api/_users.py``, ``/api/admin/audit`` in ``api/_admin.py``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from yggdrasil import Invalid
from yggdrasil.store import decode_cursor, encode_cursor

Cursor = Annotated[str, msgspec.Meta(max_length=256)]
PageLimit = Annotated[int, msgspec.Meta(ge=1, le=100)]
Ms = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
AuditText = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class AuditQuery(_In, frozen=True):
    cursor: Cursor | None = None
    limit: PageLimit = 50


class AdminAuditQuery(_In, frozen=True):
    """Filters of the operators' read; each optional, all must hold."""

    actor: AuditText | None = None
    """Who acted: a user id, ``cli``, ``retention``, ``anonymous``..."""
    subject: AuditText | None = None
    """What it was about, exactly (a user, network or device id...)."""
    action: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*\.?$")] | None = None
    """An action (``login.success``), or every action under a prefix ending in a dot
    (``login.``)."""
    since: Ms | None = None
    """Written at or after this time (ms since the epoch)."""
    until: Ms | None = None
    """Written before this time (ms since the epoch)."""
    cursor: Cursor | None = None
    limit: PageLimit = 50


class MyAuditEntry(msgspec.Struct):
    """One entry of the user's own trail: what they did, or what was done about them."""

    seq: int
    at: int
    by: Literal["self", "other"]
    """``self`` when the user acted; ``other`` when an operator or the system did (who, the
    user's trail does not say)."""
    action: str
    subject: str
    detail: dict[str, Any]


class MyAuditPage(msgspec.Struct):
    items: list[MyAuditEntry]
    next_cursor: str | None


class AuditEntryOut(msgspec.Struct):
    seq: int
    at: int
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(msgspec.Struct):
    items: list[AuditEntryOut]
    next_cursor: str | None


def after_seq(cursor: str | None) -> int:
    """The seq a page continues after: 0 without a cursor; a cursor that is not one of ours is
    :class:`Invalid`."""
    if cursor is None:
        return 0
    value = decode_cursor(cursor)
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise Invalid("cursor is not valid")
    return int(value)


def seq_cursor(seq: int) -> str:
    return encode_cursor(str(seq))
