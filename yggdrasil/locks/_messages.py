"""The protocol of ``locks/<network>``: one tagged union of requests, replies and events
(STYLE.md rule B), so that the bus carries them between instances unchanged.

Requests (``Acquire``, ``Renew``, ``Release``, ``ViewLocks``) are answered by ``Granted``,
``Released``, ``LockFailed`` or ``LockView``; ``Abandon`` (a device's session ended) is a plain
send. ``LockLost`` goes to a device that held a lock whose lease ended without a release.

Who asks is the envelope's sender: a device's session (``device/<network>/<device>``) acts as
``device:<device>``, whatever its body says; only a service (the HTTP API, which checked the
caller) names the holder in the body.
"""

from __future__ import annotations

from typing import Literal

import msgspec

FailureCode = Literal[
    "busy", "timeout", "deadlock", "not_held", "invalid", "overloaded", "unavailable", "not_found"
]
"""Why a lock request failed:

- ``busy``: held by another holder, and the acquire did not wait;
- ``timeout``: the wait ran out;
- ``deadlock``: the wait closed a cycle of waits and was chosen to break it;
- ``not_held``: renew or release of a grant that has ended or was never the caller's;
- ``invalid``: a name, lease or priority out of bounds;
- ``overloaded``: the network has too many locks or waiters;
- ``unavailable``: the store could not record the change (nothing changed);
- ``not_found``: the network is gone.
"""


class Acquire(msgspec.Struct, frozen=True, tag="locks.acquire"):
    name: str
    lease_ms: int
    priority: int = 0
    wait_ms: int = 0
    """0: answer ``busy`` at once if the lock is held; otherwise wait up to this long."""
    holder: str = ""
    """Only from a service; a device's session acts as its device."""
    session: str = ""
    """The device's session that asks (its waits end with it, not with a newer one's)."""


class Renew(msgspec.Struct, frozen=True, tag="locks.renew"):
    name: str
    token: int
    lease_ms: int
    holder: str = ""


class Release(msgspec.Struct, frozen=True, tag="locks.release"):
    name: str
    token: int
    holder: str = ""


class Abandon(msgspec.Struct, frozen=True, tag="locks.abandon"):
    """The holder went away: its waits end (its grants stay until their leases end)."""

    holder: str = ""
    name: str = ""
    """Only the waits for this lock; empty: every wait of the holder."""
    session: str = ""
    """Only the waits this session of the device asked for."""


class ViewLocks(msgspec.Struct, frozen=True, tag="locks.view"):
    """The network's locks for its owner or an operator (only from a service)."""

    after: str | None = None
    limit: int = 100


class Granted(msgspec.Struct, frozen=True, tag="locks.granted"):
    name: str
    token: int
    lease_ms: int
    """The lease runs this long from when the grant (or renewal) was written."""
    expires_at: int
    """Wall clock, milliseconds since the epoch."""


class Released(msgspec.Struct, frozen=True, tag="locks.released"):
    name: str
    token: int


class LockFailed(msgspec.Struct, frozen=True, tag="locks.failed"):
    name: str
    code: FailureCode
    message: str
    locks: list[str] = []
    """For ``deadlock``: the locks of the cycle (all of this network)."""


class LockLost(msgspec.Struct, frozen=True, tag="locks.lost"):
    """To a device: its lease on ``name`` (``token``) ended without a release."""

    name: str
    token: int


class WaiterInfo(msgspec.Struct, frozen=True):
    holder: str
    priority: int
    waited_ms: int
    wait_left_ms: int


class LockInfo(msgspec.Struct, frozen=True):
    name: str
    holder: str | None
    """``None``: free, with waiters whose grant is being written."""
    token: int | None
    priority: int | None
    age_ms: int | None
    """How long the current holder has held it."""
    expires_in_ms: int | None
    waiters: list[WaiterInfo]


class LockView(msgspec.Struct, frozen=True, tag="locks.list"):
    items: list[LockInfo]
    next_after: str | None = None


LOCK_MESSAGES: tuple[type[msgspec.Struct], ...] = (
    Acquire,
    Renew,
    Release,
    Abandon,
    ViewLocks,
    Granted,
    Released,
    LockFailed,
    LockLost,
    LockView,
)
"""Every message type of the protocol, for the codec between instances."""
