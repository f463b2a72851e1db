"""A device session's lock frames: each becomes a request to the network's lock manager
(``locks/<network>``) from the session's own address, so the manager knows the holder as this
device whatever the frame says, and its answer becomes the frame the device reads."""

from __future__ import annotations

from actors import Address, Overloaded, RequestTimeout, Router, Unreachable
from yggdrasil.locks import (
    LOCK_REPLY_S,
    Acquire,
    Granted,
    LockFailed,
    LockLost,
    Release,
    Released,
    Renew,
    locks_address,
)

from .protocol import (
    LockAcquire,
    LockErrorCode,
    LockExpired,
    LockGranted,
    LockRelease,
    LockRenew,
    LockResult,
)

_MAX_WAIT_S = 24 * 3600.0
"""However long a frame says to wait (the manager refuses more than ``locks.max_wait_ms``)."""


def refused(frame: LockAcquire | LockRenew | LockRelease, code: LockErrorCode) -> LockResult:
    return LockResult(id=frame.id, name=frame.name, ok=False, error=code, message=code)


async def ask_lock(
    router: Router,
    src: Address,
    network_id: str,
    frame: LockAcquire | LockRenew | LockRelease,
    session: str,
) -> LockGranted | LockResult:
    """Send ``frame`` to the lock manager of ``network_id`` as ``src`` (for its ``session``) and
    turn its answer into the device's frame. A manager that cannot be reached or does not
    answer in time (it moved with a dying instance) is ``unavailable``: the device may ask
    again."""
    wait_s = 0.0
    body: Acquire | Renew | Release
    match frame:
        case LockAcquire():
            body = Acquire(
                frame.name, frame.lease_ms, frame.priority, frame.wait_ms, session=session
            )
            wait_s = min(max(frame.wait_ms, 0) / 1000, _MAX_WAIT_S)
        case LockRenew():
            body = Renew(frame.name, frame.token, frame.lease_ms)
        case LockRelease():
            body = Release(frame.name, frame.token)
    try:
        answer = await router.request(
            src, locks_address(network_id), body, timeout_s=wait_s + LOCK_REPLY_S
        )
    except (Unreachable, Overloaded, RequestTimeout):
        return refused(frame, "unavailable")
    match answer:
        case Granted(name=name, token=token, lease_ms=lease_ms, expires_at=expires_at):
            return LockGranted(
                id=frame.id, name=name, token=token, lease_ms=lease_ms, expires_at=expires_at
            )
        case Released(name=name):
            return LockResult(id=frame.id, name=name, ok=True)
        case LockFailed(name=name, code=code, message=message, locks=locks):
            return LockResult(
                id=frame.id, name=name, ok=False, error=code, message=message, locks=locks
            )
    return refused(frame, "unavailable")


def expired(lost: LockLost) -> LockExpired:
    return LockExpired(name=lost.name, token=lost.token)
