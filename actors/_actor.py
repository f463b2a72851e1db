"""A base class for actors: one mailbox, one address, one task reading it."""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable

import trio

from ._address import Address
from ._envelope import Envelope
from ._mailbox import Mailbox, Overflow
from ._router import Router
from ._supervisor import ChildSpec, Restart

log = logging.getLogger(__name__)


class Actor(abc.ABC):
    """Registers at ``address`` while :meth:`run` runs and hands each envelope to :meth:`handle`.

    An exception from ``handle`` ends the actor (it is the error boundary's business, i.e. its
    supervisor's); the mailbox dies with it, as in Erlang. Requests whose deadline has passed are
    dropped before they reach ``handle``.
    """

    capacity = 256
    overflow = Overflow.WAIT

    def __init__(self, address: Address, router: Router) -> None:
        self.address = address
        self.router = router
        self.mailbox: Mailbox[Envelope] = Mailbox(self.capacity, self.overflow)
        self.expired = 0

    async def run(self, *, task_status: trio.TaskStatus[Actor] = trio.TASK_STATUS_IGNORED) -> None:
        self.router.register(self.address, self.mailbox)
        try:
            await self.on_start()
            task_status.started(self)
            async for envelope in self.mailbox:
                if envelope.deadline is not None and envelope.deadline < time.time():
                    self.expired += 1
                    continue
                await self.handle(envelope)
        finally:
            self.mailbox.close()
            self.router.unregister(self.address, self.mailbox)

    async def on_start(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Called after registration, before the actor reports ready."""

    @abc.abstractmethod
    async def handle(self, envelope: Envelope) -> None:
        """Process one envelope; reply with ``self.router.reply`` when it is a request."""


def actor_spec(
    child_id: str,
    factory: Callable[[], Actor],
    *,
    restart: Restart = Restart.PERMANENT,
    shutdown_s: float = 5.0,
) -> ChildSpec:
    """A child spec that builds a fresh actor (fresh state, fresh mailbox) for every incarnation."""

    async def start(*, task_status: trio.TaskStatus[Actor] = trio.TASK_STATUS_IGNORED) -> None:
        await factory().run(task_status=task_status)

    return ChildSpec(child_id, start, restart=restart, shutdown_s=shutdown_s)
