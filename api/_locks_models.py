"""Request and response bodies of the lock routes (``api/_locks.py``)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from yggdrasil.locks import LOCK_NAME, MAX_PRIORITY, MIN_LEASE_MS

from ._models import Cursor, OpaqueId, PageLimit

LockName = Annotated[str, msgspec.Meta(pattern=LOCK_NAME.pattern)]
LeaseMs = Annotated[int, msgspec.Meta(ge=MIN_LEASE_MS, le=24 * 3600 * 1000)]
Priority = Annotated[int, msgspec.Meta(ge=-MAX_PRIORITY, le=MAX_PRIORITY)]
Token = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class AcquireIn(_In, frozen=True):
    name: LockName
    lease_ms: LeaseMs
    """How long the grant lasts unless renewed (at most ``locks.max_lease_ms``)."""
    priority: Priority = 0
    """Waiters with a higher priority are served first; equal ones by arrival."""
    wait_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 0
    """0: answer 409 ``busy`` at once if the lock is held; otherwise wait up to this long (at
    most ``api.response_timeout_s`` less 10 s over HTTP)."""


class RenewIn(_In, frozen=True):
    name: LockName
    token: Token
    lease_ms: LeaseMs


class ReleaseIn(_In, frozen=True):
    name: LockName
    token: Token


class LockQuery(_In, frozen=True):
    network_id: OpaqueId | None = None


class LockPageQuery(_In, frozen=True):
    network_id: OpaqueId | None = None
    cursor: Cursor | None = None
    limit: PageLimit = 50


class AdminLockQuery(_In, frozen=True):
    cursor: Cursor | None = None
    limit: PageLimit = 50


class LockGrant(msgspec.Struct):
    """A grant: the caller holds ``name`` for ``lease_ms`` from now (until ``expires_at``, the
    server's wall clock in milliseconds). Send ``token`` with every write to the resource the
    lock guards, which refuses a token lower than the highest it has seen."""

    name: str
    token: int
    lease_ms: int
    expires_at: int


class LockWaiter(msgspec.Struct):
    holder: str
    priority: int
    waited_ms: int
    wait_left_ms: int


class LockOut(msgspec.Struct):
    """One lock held or waited for: its holder (``device:<id>`` or ``user:<id>``), fencing
    token, priority, how long it has been held and how long its lease still runs, and its
    waiters in the order they will be served."""

    name: str
    holder: str | None
    token: int | None
    priority: int | None
    age_ms: int | None
    expires_in_ms: int | None
    waiters: list[LockWaiter]


class LockPage(msgspec.Struct):
    items: list[LockOut]
    next_cursor: str | None
