"""How a service (the HTTP API) reaches a network's lock manager: requests through the router
from ``service/locks``, answers as values, failures as :class:`LockError`.

The caller has checked that the principal belongs to the network and names the holder
(``device:<id>`` for a device's token, ``user:<id>`` for a user's); the manager trusts a
service's holder and nobody else's.
"""

from __future__ import annotations

import contextlib
from typing import TypeVar

import trio

from actors import Envelope, Overloaded, RequestTimeout, Router, Unreachable

from .._addresses import locks_address, service_address
from .._errors import YggdrasilError
from ._messages import (
    Abandon,
    Acquire,
    FailureCode,
    Granted,
    LockFailed,
    LockView,
    Release,
    Released,
    Renew,
    ViewLocks,
)

T = TypeVar("T")

LOCK_REPLY_S = 10.0
"""How long a requester waits for the lock manager beyond an acquire's own wait."""

_STATUS: dict[str, int] = {
    "busy": 409,
    "timeout": 409,
    "deadlock": 409,
    "not_held": 409,
    "invalid": 422,
    "overloaded": 503,
    "unavailable": 503,
    "not_found": 404,
}


class LockError(YggdrasilError):
    """A lock request that failed; ``code`` as in :data:`FailureCode`, ``locks`` the cycle's
    locks for a ``deadlock``."""

    def __init__(self, code: FailureCode, message: str, locks: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = _STATUS.get(code, 409)
        self.locks = locks or []


class Locks:
    """The lock managers of every network, for a service of this instance."""

    def __init__(self, router: Router, *, reply_s: float = LOCK_REPLY_S) -> None:
        self._router = router
        self._reply_s = reply_s
        self.address = service_address("locks")

    async def acquire(
        self,
        network_id: str,
        holder: str,
        name: str,
        *,
        lease_ms: int,
        priority: int = 0,
        wait_ms: int = 0,
    ) -> Granted:
        """Acquire ``name`` in ``network_id`` for ``holder``, waiting up to ``wait_ms``.
        Cancelled while it waits, the wait is withdrawn (a grant written meanwhile runs out
        with its lease)."""
        body = Acquire(name, lease_ms, priority, wait_ms, holder)
        try:
            answer = await self._ask(network_id, body, wait_ms / 1000)
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._tell(network_id, Abandon(holder, name))
            raise
        return _expect(answer, Granted)

    async def renew(
        self, network_id: str, holder: str, name: str, *, token: int, lease_ms: int
    ) -> Granted:
        return _expect(await self._ask(network_id, Renew(name, token, lease_ms, holder)), Granted)

    async def release(self, network_id: str, holder: str, name: str, *, token: int) -> Released:
        return _expect(await self._ask(network_id, Release(name, token, holder)), Released)

    async def view(self, network_id: str, *, after: str | None, limit: int) -> LockView:
        """The network's locks, holders and waiters, by name after ``after``."""
        return _expect(await self._ask(network_id, ViewLocks(after, limit)), LockView)

    async def _ask(
        self, network_id: str, body: Acquire | Renew | Release | ViewLocks, wait_s: float = 0.0
    ) -> object:
        try:
            return await self._router.request(
                self.address, locks_address(network_id), body, timeout_s=wait_s + self._reply_s
            )
        except (Unreachable, Overloaded):
            raise LockError("unavailable", "the lock manager is unavailable, try again") from None
        except RequestTimeout:
            raise LockError("unavailable", "the lock manager did not answer in time") from None

    async def _tell(self, network_id: str, body: Abandon) -> None:
        with contextlib.suppress(Unreachable, Overloaded):
            await self._router.send(
                Envelope(self.address, locks_address(network_id), body), activate=False
            )


def _expect(answer: object, kind: type[T]) -> T:
    if isinstance(answer, LockFailed):
        raise LockError(answer.code, answer.message, answer.locks)
    if not isinstance(answer, kind):
        raise LockError("unavailable", "the lock manager gave an unexpected answer")
    return answer
