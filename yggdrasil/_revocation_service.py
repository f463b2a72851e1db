"""Revocation that reaches every instance at once: ``service/revocations`` runs on each instance
(an actor placed per instance), applies a revocation to this process's token check, tells the
local listeners (the gateway, which ends the sessions it runs whose tokens are now refused), and
broadcasts it over the bus to the same service on every other instance.

The store stays the record (``token_revocations``, written in the revoking transaction) and the
periodic sync from it stays the backstop: a broadcast is at most once, and an instance that
missed one catches up within ``auth.revocation_sync_s``. Both run as children of the tree:
:func:`revocations_child` and :func:`revocation_sync_child`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
import trio

from actors import Actor, ChildSpec, Envelope, Router, Unreachable

from ._addresses import service_address
from ._config import AuthConfig
from ._ids import now_ms
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


def revocations_child(revocations: Revocations, router: Router) -> ChildSpec:
    """The ``revocations`` child: the ``service/revocations`` actor of this instance."""
    return ChildSpec("revocations", functools.partial(revocations.serve, router), shutdown_s=1.0)


class _Record(Protocol):
    async def load_revocations(self, since_ms: int, /) -> int:
        """Apply every revocation newer than ``since_ms``; the newest ``not_before``."""
        ...


class _Domain(Protocol):
    @property
    def accounts(self) -> _Record: ...


class _DomainHandle(Protocol):
    """What the sync needs of ``yggdrasil.DomainHandle``, which sits above this module: the
    accounts' record of revocations in the running store."""

    def get(self) -> _Domain: ...


def revocation_sync_child(
    revocations: Revocations, domain: _DomainHandle, config: AuthConfig
) -> ChildSpec:
    """The ``revocation-sync`` child: keeps this process's token check current with the store's
    record of revocations, every ``auth.revocation_sync_s`` (the backstop for broadcasts this
    instance missed). It starts after the store and uses that run's accounts until it stops."""

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        accounts = domain.get().accounts
        tokens = revocations.tokens
        # Older revocations cannot matter: every token they refuse has expired.
        since = now_ms() - (config.access_ttl_s + 60) * 1000
        since = await accounts.load_revocations(since)
        task_status.started()
        while True:
            await trio.sleep(config.revocation_sync_s)
            revision = tokens.revision
            # Look back a little: another instance's clock may run behind ours.
            since = await accounts.load_revocations(since - 60_000)
            revocations.applied(tokens.revision != revision)

    return ChildSpec("revocation-sync", run, shutdown_s=1.0)
