"""The actor template: one address, one mailbox, a nursery for side tasks, and a lifecycle the
runtime owns (registration, hooks, idle stop, unregistration)."""

from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from ._address import Address
from ._envelope import Envelope, Urgent
from ._mailbox import Mailbox, Overflow
from ._router import Router
from ._supervisor import ChildSpec, Restart

log = logging.getLogger(__name__)


class Actor(abc.ABC):
    """Subclass it, give it :meth:`handle`, and run it with :meth:`run` (or let the router start
    it, for a virtual kind). Nobody but the actor itself touches its state: other actors reach it
    only through the router, by its address.

    Lifecycle: :meth:`run` registers the address (:class:`AddressInUse` if it is held), opens the
    actor's nursery, awaits :meth:`on_start`, reports ready, then hands each envelope to
    :meth:`handle` in order (requests whose deadline has passed are dropped first). It returns
    when :meth:`stop` is called, when the actor has been idle for ``idle_timeout_s`` (while
    :meth:`idle` says so), or when the mailbox is closed; an exception from ``handle``, a hook or
    a side task ends it too, as in Erlang (its supervisor decides what follows). On the way out,
    always: the side tasks are cancelled, the mailbox closes, the address is given up, and
    :meth:`on_stop` runs (shielded, for at most ``stop_timeout_s``).
    """

    mailbox_capacity = 256
    overflow = Overflow.WAIT
    idle_timeout_s: float | None = None
    """Stop after this long without an envelope while :meth:`idle`; ``None``: never."""
    stop_timeout_s = 5.0

    def __init__(self, address: Address) -> None:
        self.address = address
        self.mailbox: Mailbox[Envelope] = self.make_mailbox()
        self.expired = 0
        """Requests dropped because their deadline passed while they waited."""
        self._router: Router | None = None
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._stop_requested = False
        self._running = False

    # ----------------------------------------------------------------- for subclasses

    def make_mailbox(self) -> Mailbox[Envelope]:
        """The actor's mailbox; override to bound it differently (bytes, a shared budget), and
        keep ``urgent=is_urgent, on_urgent=self.interrupt`` if it should take urgent messages."""
        return Mailbox(
            self.mailbox_capacity, self.overflow, urgent=is_urgent, on_urgent=self.interrupt
        )

    def interrupt(self, envelope: Envelope) -> None:  # noqa: B027 - an optional hook
        """An :class:`Urgent` message, seen at once (synchronously, from the sender's task):
        note it, or :meth:`stop`; never await here. By default it is ignored."""

    async def claim(self, router: Router) -> None:
        """Take the address (:meth:`run` calls this first); override to negotiate with a
        current holder, e.g. ask it to step down and try again."""
        await router.register(self.address, self.mailbox)

    async def on_start(self) -> None:  # noqa: B027 - an optional hook
        """Runs after registration, before the actor reports ready; side tasks started here
        (``self.nursery.start_soon``) live as long as the actor."""

    async def on_stop(self) -> None:  # noqa: B027 - an optional hook
        """Runs last, after the address is given up (shielded, bounded by ``stop_timeout_s``)."""

    @abc.abstractmethod
    async def handle(self, envelope: Envelope) -> None:
        """Process one envelope; answer a request with :meth:`reply`."""

    def idle(self) -> bool:
        """Whether the actor may stop when nothing arrives for ``idle_timeout_s``."""
        return True

    # ----------------------------------------------------------------- helpers

    @property
    def router(self) -> Router:
        if self._router is None:
            raise RuntimeError(f"actor {self.address} is not running")
        return self._router

    @property
    def nursery(self) -> trio.Nursery:
        """The actor's own nursery, for side tasks that end with it."""
        if self._nursery is None:
            raise RuntimeError(f"actor {self.address} is not running")
        return self._nursery

    async def send(self, dst: Address, body: msgspec.Struct) -> None:
        await self.router.send(Envelope(self.address, dst, body))

    async def request(self, dst: Address, body: msgspec.Struct, *, timeout_s: float) -> Any:
        return await self.router.request(self.address, dst, body, timeout_s=timeout_s)

    async def reply(self, request: Envelope, body: msgspec.Struct) -> None:
        """Answer ``request`` if it is one (a plain send gets nothing back)."""
        if request.corr is not None and not request.is_reply:
            await self.router.reply(request, body)

    def stop(self) -> None:
        """Ask the actor to end; :meth:`run` returns soon after, through the usual way out."""
        self._stop_requested = True
        if self._scope is not None:
            self._scope.cancel()

    # ----------------------------------------------------------------- runtime

    async def run(
        self, router: Router, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve at ``self.address`` through ``router`` until stopped; see the class docstring.
        Reports the address (never the actor object) as ready."""
        if self._running:
            raise RuntimeError(f"actor {self.address} runs already")
        self._running = True
        try:
            await self.claim(router)
        except BaseException:
            self._running = False
            raise
        self._router = router
        try:
            with trio.CancelScope() as self._scope:
                if self._stop_requested:
                    self._scope.cancel()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await self.on_start()
                    task_status.started(self.address)
                    await self._serve()
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self.mailbox.close()
            with trio.CancelScope(shield=True), trio.move_on_after(self.stop_timeout_s) as late:
                try:
                    await router.unregister(self.address, self.mailbox)
                finally:
                    await self.on_stop()
            if late.cancelled_caught:
                log.warning("actor %s took too long to stop", self.address)

    async def _serve(self) -> None:
        while True:
            idle_s = self.idle_timeout_s if self.idle() else None
            envelope: Envelope | None = None
            with trio.move_on_after(math.inf if idle_s is None else idle_s):
                try:
                    envelope = await self.mailbox.get()
                except trio.EndOfChannel:
                    return
            if envelope is None:
                log.debug("actor %s idle, stopping", self.address)
                return
            if envelope.deadline is not None and envelope.deadline < time.time():
                self.expired += 1
                continue
            await self.handle(envelope)


def is_urgent(envelope: Envelope) -> bool:
    return isinstance(envelope.body, Urgent)


def actor_spec(
    child_id: str,
    factory: Callable[[], Actor],
    router: Router,
    *,
    restart: Restart = Restart.PERMANENT,
    shutdown_s: float = 5.0,
) -> ChildSpec:
    """A child spec that builds a fresh actor (fresh state, fresh mailbox) for every incarnation."""

    async def start(*, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        await factory().run(router, task_status=task_status)

    return ChildSpec(child_id, start, restart=restart, shutdown_s=shutdown_s)
