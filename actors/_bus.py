"""The seam between routers of different instances.

A router delivers to its own mailboxes; for any other address it asks its bus, which knows which
instance holds the address and forwards the envelope there. Nothing above the router knows where
an actor lives. A bus is also the cluster's directory: an address of a cluster-wide kind has at
most one holder, and a second claim is refused (:class:`AddressInUse`), never a silent overwrite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from ._address import Address
from ._envelope import Codec, Envelope
from ._errors import AddressInUse, Unreachable

if TYPE_CHECKING:
    from ._router import Router


class Bus(Protocol):
    """What a router needs from the transport to other instances."""

    def attach(self, router: Router) -> None:
        """Called once by the router that owns this bus."""

    async def claim(self, address: Address) -> None:
        """Make this instance the holder of ``address``; :class:`AddressInUse` if another live
        instance holds it."""

    async def release(self, address: Address) -> None:
        """Give ``address`` up, if this instance holds it."""

    def holder(self, address: Address) -> str | None:
        """The instance that holds ``address`` (this one's id included), or ``None``: from what
        the bus knows locally, without a round trip."""

    def alive(self, instance: str) -> bool:
        """Whether ``instance`` is a live member of the cluster, as far as this bus knows."""

    async def forward(self, envelope: Envelope) -> None:
        """Deliver to whichever instance holds ``envelope.dst`` (for a reply: the instance its
        ``corr`` names). Raises :class:`Unreachable` when none does."""

    async def broadcast(self, envelope: Envelope) -> None:
        """Deliver to ``envelope.dst`` on every other instance that holds it locally."""

    async def serve_work(self, address: Address) -> None:
        """From now on this instance takes its share of the work sent to ``address``."""

    async def dispatch(self, envelope: Envelope) -> None:
        """Deliver to exactly one of the instances that serve ``envelope.dst`` (this one
        included); :class:`Unreachable` when none does."""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the receiving side until cancelled."""

    @property
    def ready(self) -> bool:
        """Whether the bus is connected (readiness)."""


class InProcessHub:
    """Connects the routers of one process, each with its own :class:`InProcessBus`.

    The embedded single-instance server uses one hub with one router; tests use several routers
    on one hub to exercise the same paths a bus between processes serves. With a ``codec``, every
    envelope that crosses from one router to another is encoded and decoded on the way, as it
    would be on the wire.
    """

    def __init__(self, codec: Codec | None = None) -> None:
        self.codec = codec
        self._routers: dict[str, Router] = {}
        self._holders: dict[Address, str] = {}
        self._workers: dict[Address, list[str]] = {}
        self._turn = 0

    def bus(self) -> InProcessBus:
        return InProcessBus(self)


class InProcessBus:
    def __init__(self, hub: InProcessHub) -> None:
        self._hub = hub
        self._router: Router | None = None

    @property
    def ready(self) -> bool:
        return True

    def attach(self, router: Router) -> None:
        if router.instance_id in self._hub._routers:
            raise ValueError(f"instance {router.instance_id!r} is already on this hub")
        self._router = router
        self._hub._routers[router.instance_id] = router

    async def claim(self, address: Address) -> None:
        me = self._me()
        holder = self._hub._holders.get(address)
        if holder is not None and holder != me:
            raise AddressInUse(str(address))
        self._hub._holders[address] = me

    async def release(self, address: Address) -> None:
        if self._hub._holders.get(address) == self._me():
            del self._hub._holders[address]

    def holder(self, address: Address) -> str | None:
        return self._hub._holders.get(address)

    def alive(self, instance: str) -> bool:
        return instance in self._hub._routers

    async def forward(self, envelope: Envelope) -> None:
        if envelope.is_reply:
            instance = (envelope.corr or "").partition(":")[0]
        else:
            instance = self._hub._holders.get(envelope.dst, "")
        target = self._hub._routers.get(instance)
        if target is None or target is self._router:
            raise Unreachable()
        await target.deliver_local(self._carried(envelope))

    async def broadcast(self, envelope: Envelope) -> None:
        for router in list(self._hub._routers.values()):
            if router is not self._router:
                try:
                    await router.deliver_local(self._carried(envelope))
                except Unreachable:
                    continue

    async def serve_work(self, address: Address) -> None:
        workers = self._hub._workers.setdefault(address, [])
        if self._me() not in workers:
            workers.append(self._me())

    async def dispatch(self, envelope: Envelope) -> None:
        workers = [w for w in self._hub._workers.get(envelope.dst, []) if w in self._hub._routers]
        if not workers:
            raise Unreachable()
        self._hub._turn += 1
        target = self._hub._routers[workers[self._hub._turn % len(workers)]]
        envelope = envelope if target is self._router else self._carried(envelope)
        await target.deliver_local(envelope)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            if self._router is not None:
                me = self._router.instance_id
                self._hub._routers.pop(me, None)
                for workers in self._hub._workers.values():
                    if me in workers:
                        workers.remove(me)
                for address in [a for a, held in self._hub._holders.items() if held == me]:
                    del self._hub._holders[address]

    def _me(self) -> str:
        assert self._router is not None, "attach the bus to a router first"
        return self._router.instance_id

    def _carried(self, envelope: Envelope) -> Envelope:
        codec = self._hub.codec
        return envelope if codec is None else codec.decode(codec.encode(envelope))
