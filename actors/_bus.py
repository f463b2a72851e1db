"""The seam between routers of different instances.

A router delivers to its own mailboxes; for any other address it asks its bus, which knows which
instance holds the address and forwards the envelope there. Nothing above the router knows where
an actor lives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from ._address import Address
from ._envelope import Envelope
from ._errors import Unreachable

if TYPE_CHECKING:
    from ._router import Router


class Bus(Protocol):
    """What a router needs from the transport to other instances."""

    def attach(self, router: Router) -> None:
        """Called once by the router that owns this bus."""

    def announce(self, address: Address) -> None:
        """This instance now holds ``address``."""

    def withdraw(self, address: Address) -> None:
        """This instance no longer holds ``address``."""

    async def forward(self, envelope: Envelope) -> None:
        """Deliver to whichever instance holds ``envelope.dst`` (or, for a reply, waits for it).

        Raises :class:`Unreachable` when none does.
        """

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the receiving side until cancelled."""


class InProcessHub:
    """Connects the routers of one process, each with its own :class:`InProcessBus`.

    The embedded single-instance server uses one hub with one router; tests use several routers
    on one hub to exercise the same forwarding path that NATS serves between processes.
    """

    def __init__(self) -> None:
        self._routers: dict[str, Router] = {}
        self._holders: dict[Address, str] = {}

    def bus(self) -> InProcessBus:
        return InProcessBus(self)


class InProcessBus:
    def __init__(self, hub: InProcessHub) -> None:
        self._hub = hub
        self._router: Router | None = None

    def attach(self, router: Router) -> None:
        if router.instance_id in self._hub._routers:
            raise ValueError(f"instance {router.instance_id!r} is already on this hub")
        self._router = router
        self._hub._routers[router.instance_id] = router

    def announce(self, address: Address) -> None:
        assert self._router is not None
        self._hub._holders[address] = self._router.instance_id

    def withdraw(self, address: Address) -> None:
        assert self._router is not None
        if self._hub._holders.get(address) == self._router.instance_id:
            del self._hub._holders[address]

    async def forward(self, envelope: Envelope) -> None:
        if envelope.is_reply:
            instance = (envelope.corr or "").partition(":")[0]
        else:
            instance = self._hub._holders.get(envelope.dst, "")
        target = self._hub._routers.get(instance)
        if target is None or target is self._router:
            raise Unreachable()
        await target.deliver_local(envelope)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            if self._router is not None:
                self._hub._routers.pop(self._router.instance_id, None)
