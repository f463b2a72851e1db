"""Revocation that reaches every instance at once: ``service/revocations`` runs on each instance
(an actor placed per instance), applies a revocation to this process's token check, tells the
local listeners (the gateway, which ends the sessions it runs whose tokens are now refused), and
broadcasts it over the bus to the same service on every other instance.

The store stays the record (``token_revocations``, written in the revoking transaction) and the
periodic sync from it stays the backstop: a broadcast is at most once, and an instance that
missed one catches up within ``auth.revocation_sync_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
import trio

from actors import Actor, Envelope, Router, Unreachable

from ._addresses import service_address
from ._tokens import TokenService

log = logging.getLogger(__name__)

REVOCATIONS = service_address("revocations")


class Revoked(msgspec.Struct, frozen=True, tag="revocation.revoked"):
    """Tokens of ``subject`` (``user:<id>``, ``device:<net>/<dev>``, ``family:<id>``) issued
    before ``not_before_ms`` are refused."""

    subject: str
    not_before_ms: int


MESSAGE_TYPES: tuple[type[msgspec.Struct], ...] = (Revoked,)


class Revocations:
    """This instance's revocations: :meth:`revoke` from anywhere in the process, and
    :meth:`serve` runs the ``service/revocations`` actor that carries them to and from the
    other instances (restartable: each run is a fresh actor over the same outbox)."""

    def __init__(self, tokens: TokenService, *, outbox_size: int = 4096) -> None:
        self.tokens = tokens
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._outbox_send, self._outbox = trio.open_memory_channel[Revoked](outbox_size)
        self._changed = trio.Event()
        self.dropped = 0
        """Revocations not broadcast because the outbox was full (the store sync catches up)."""

    def add_listener(self, listener: Callable[[], Awaitable[None]]) -> None:
        """``await listener()`` after revocations changed this process's token check."""
        self._listeners.append(listener)

    def revoke(self, subject: str, not_before_ms: int) -> None:
        """Revoke here at once, and on every instance soon (never blocks)."""
        self.applied(self.tokens.revoke(subject, not_before_ms))
        try:
            self._outbox_send.send_nowait(Revoked(subject, not_before_ms))
        except trio.WouldBlock:
            self.dropped += 1

    def applied(self, changed: bool) -> None:
        """Revocations changed this process's token check (here, from another instance, or
        from the store sync): the listeners hear of it."""
        if changed:
            self._changed.set()

    async def serve(
        self, router: Router, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await _RevocationActor(self).run(router, task_status=task_status)


class _RevocationActor(Actor):
    mailbox_capacity = 4096

    def __init__(self, service: Revocations) -> None:
        super().__init__(REVOCATIONS)
        self.service = service

    async def on_start(self) -> None:
        self.nursery.start_soon(self._broadcast)
        self.nursery.start_soon(self._notify)

    async def handle(self, envelope: Envelope) -> None:
        body = envelope.body
        if isinstance(body, Revoked):
            self.service.applied(self.service.tokens.revoke(body.subject, body.not_before_ms))

    async def _broadcast(self) -> None:
        async for revoked in self.service._outbox:
            try:
                await self.router.broadcast(Envelope(self.address, self.address, revoked))
            except Unreachable:
                log.warning("a revocation could not be broadcast; the store sync will carry it")

    async def _notify(self) -> None:
        service = self.service
        while True:
            await service._changed.wait()
            service._changed = trio.Event()
            for listener in list(service._listeners):
                await listener()
