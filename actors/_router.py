"""The central router: addresses to mailboxes, the application's rule on every envelope, virtual
actors started on first use, and the bus to other instances."""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from ._address import Address, Rule
from ._bus import Bus, InProcessHub
from ._envelope import Envelope
from ._errors import AddressInUse, RequestTimeout, Unreachable
from ._mailbox import Mailbox
from ._supervisor import ChildSpec, Restart, Supervisor

if TYPE_CHECKING:
    from ._actor import Actor

log = logging.getLogger(__name__)


class Placement(enum.Enum):
    """Where the actors of a kind live."""

    CLUSTER = "cluster"
    """At most one holder of an address in the whole cluster: registering claims it on the bus,
    and a second holder is refused."""
    INSTANCE = "instance"
    """Every instance may hold its own actor at the address (a local service); envelopes reach
    the local one, and :meth:`Router.broadcast` reaches every instance's."""


@dataclass(frozen=True)
class Kind:
    """An address kind the application defines on its router.

    ``factory(address)`` makes a kind *virtual* (as in Orleans): the first envelope to an address
    nobody holds starts its actor under ``supervisor``; the actor stops itself when idle, and the
    next envelope starts it again, wherever it lands. A factory may return ``None``: no actor can
    live there (the sender gets :class:`Unreachable`).
    """

    name: str
    placement: Placement = Placement.CLUSTER
    factory: Callable[[Address], Actor | None] | None = None
    supervisor: Supervisor | None = None
    shutdown_s: float = 5.0


class RouterStatistics(msgspec.Struct, frozen=True):
    registered: int
    delivered: int
    forwarded: int
    unreachable: int
    pending_requests: int
    late_replies: int
    activated: int = 0


class _Pending:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None


class Router:
    """Delivers envelopes to local mailboxes, or through the bus to other instances.

    Every envelope passes ``rule(src, dst)`` first (the application's tenant boundary); a refused
    envelope and one whose destination does not exist raise the same :class:`Unreachable`.
    """

    def __init__(self, instance_id: str, bus: Bus | None = None, *, rule: Rule) -> None:
        if ":" in instance_id or not instance_id:
            raise ValueError("instance id must be non-empty and free of ':'")
        self.instance_id = instance_id
        self.bus: Bus = bus if bus is not None else InProcessHub().bus()
        self.bus.attach(self)
        self._rule = rule
        self._kinds: dict[str, Kind] = {}
        self._boxes: dict[Address, Mailbox[Envelope]] = {}
        self._activating: dict[Address, trio.Event] = {}
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._children = itertools.count(1)
        self._delivered = 0
        self._forwarded = 0
        self._unreachable = 0
        self._late = 0
        self._activated = 0
        self.on_unreachable: Callable[[Envelope], None] | None = None
        """Called with each envelope :meth:`send` refuses as unreachable (the application's
        watch for probing); it must not block or raise."""

    # ----------------------------------------------------------------- kinds and registry

    def define(
        self,
        name: str,
        *,
        placement: Placement = Placement.CLUSTER,
        factory: Callable[[Address], Actor | None] | None = None,
        supervisor: Supervisor | None = None,
        shutdown_s: float = 5.0,
    ) -> None:
        """Declare an address kind. A kind never defined is a cluster-wide kind without a
        factory (its actors register themselves)."""
        if name in self._kinds:
            raise ValueError(f"kind {name!r} is defined already")
        if factory is not None and supervisor is None:
            raise ValueError("a virtual kind needs the supervisor its actors run under")
        if factory is not None and placement is not Placement.CLUSTER:
            raise ValueError("virtual actors are placed in the cluster")
        self._kinds[name] = Kind(name, placement, factory, supervisor, shutdown_s)

    def kind(self, name: str) -> Kind:
        return self._kinds.get(name) or Kind(name)

    async def register(self, address: Address, mailbox: Mailbox[Envelope]) -> None:
        """Make ``mailbox`` the one at ``address``: :class:`AddressInUse` if this instance, or
        (for a cluster-wide kind) any live instance, holds it already."""
        if address in self._boxes:
            raise AddressInUse(str(address))
        self._boxes[address] = mailbox  # reserved before the bus is asked: no local race
        if self.kind(address.kind).placement is Placement.CLUSTER:
            try:
                await self.bus.claim(address)
            except BaseException:
                if self._boxes.get(address) is mailbox:
                    del self._boxes[address]
                raise

    async def unregister(self, address: Address, mailbox: Mailbox[Envelope] | None = None) -> None:
        """Forget ``address`` (only if it still maps to ``mailbox``, when one is given) and give
        up its claim on the bus."""
        current = self._boxes.get(address)
        if current is None or (mailbox is not None and current is not mailbox):
            return
        del self._boxes[address]
        if self.kind(address.kind).placement is Placement.CLUSTER:
            await self.bus.release(address)

    def fence(self) -> None:
        """The cluster has given this instance up (it lost the bus for too long): every actor
        of a cluster-wide kind here ends, its mailbox closed, since another instance may take
        its address now. Per-instance actors go on."""
        for address, box in list(self._boxes.items()):
            if self.kind(address.kind).placement is Placement.CLUSTER:
                box.close()

    def is_local(self, address: Address) -> bool:
        return address in self._boxes

    def mailboxes(self) -> Iterator[tuple[Address, Mailbox[Envelope]]]:
        return iter(list(self._boxes.items()))

    # ----------------------------------------------------------------- sending

    async def send(self, envelope: Envelope, *, activate: bool = True) -> None:
        """Deliver one envelope, fire and forget.

        Raises :class:`Unreachable` or, from a full mailbox that rejects, :class:`Overloaded`.
        Under the ``WAIT`` policy this waits for room: that is the backpressure. An envelope to
        a virtual actor nobody holds starts it here first, unless ``activate`` is false (a
        goodbye to an actor that is gone need not wake it).
        """
        if not self._rule(envelope.src, envelope.dst):
            self._refused(envelope)
            raise Unreachable()
        if envelope.is_reply:
            if self._owns(envelope.corr):
                self._resolve(envelope)
                return
        elif await self._deliver_here(envelope, wait=True, activate=activate):
            return
        try:
            await self.bus.forward(envelope)
        except Unreachable:
            self._refused(envelope)
            raise
        self._forwarded += 1

    def _refused(self, envelope: Envelope) -> None:
        self._unreachable += 1
        if self.on_unreachable is not None:
            self.on_unreachable(envelope)

    async def request(
        self, src: Address, dst: Address, body: msgspec.Struct, *, timeout_s: float
    ) -> Any:
        """Send ``body`` and wait for the reply's body.

        Raises :class:`RequestTimeout` after ``timeout_s``.
        """
        corr = f"{self.instance_id}:{next(self._ids)}"
        slot = _Pending()
        self._pending[corr] = slot
        try:
            envelope = Envelope(src, dst, body, corr=corr, deadline=time.time() + timeout_s)
            with trio.move_on_after(timeout_s):
                await self.send(envelope)
                await slot.event.wait()
            if not slot.event.is_set():
                raise RequestTimeout()
            return slot.value
        finally:
            del self._pending[corr]

    async def reply(self, request: Envelope, body: msgspec.Struct) -> None:
        """Answer ``request``; a reply nobody waits for any more is dropped and counted."""
        if request.corr is None or request.is_reply:
            raise ValueError("only requests can be answered")
        await self.send(Envelope(request.dst, request.src, body, corr=request.corr, is_reply=True))

    async def broadcast(self, envelope: Envelope) -> None:
        """Deliver to ``envelope.dst`` on every instance that holds it locally (a kind placed
        per instance), this one included; where nobody holds it, nothing happens."""
        if not self._rule(envelope.src, envelope.dst):
            self._unreachable += 1
            raise Unreachable()
        box = self._boxes.get(envelope.dst)
        if box is not None:
            await self._put(box, envelope, wait=False)
        await self.bus.broadcast(envelope)

    async def serve_work(self, address: Address, mailbox: Mailbox[Envelope]) -> None:
        """Take a share of the work sent to ``address`` with :meth:`dispatch` (a kind placed
        per instance): the mailbox is this instance's, and the bus tells the others."""
        if self.kind(address.kind).placement is not Placement.INSTANCE:
            raise ValueError("work is served by kinds placed per instance")
        await self.register(address, mailbox)
        await self.bus.serve_work(address)

    async def dispatch(self, envelope: Envelope) -> None:
        """Deliver to exactly one of the instances that serve ``envelope.dst`` (queue groups on
        NATS): work that must be done once in the cluster, wherever."""
        if not self._rule(envelope.src, envelope.dst):
            self._unreachable += 1
            raise Unreachable()
        await self.bus.dispatch(envelope)

    async def deliver_local(self, envelope: Envelope, *, wait: bool = True) -> None:
        """Entry point for envelopes that arrive from the bus: checked by the rule like a local
        one. ``wait=False`` never blocks on a full mailbox (a bus receiver must not stall on
        one actor): a full mailbox then raises :class:`Overloaded`."""
        if not self._rule(envelope.src, envelope.dst):
            self._unreachable += 1
            raise Unreachable()
        if envelope.is_reply:
            self._resolve(envelope)
            return
        if not await self._deliver_here(envelope, wait=wait):
            self._unreachable += 1
            raise Unreachable()

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(
            registered=len(self._boxes),
            delivered=self._delivered,
            forwarded=self._forwarded,
            unreachable=self._unreachable,
            pending_requests=len(self._pending),
            late_replies=self._late,
            activated=self._activated,
        )

    # ----------------------------------------------------------------- internals

    async def _deliver_here(self, envelope: Envelope, *, wait: bool, activate: bool = True) -> bool:
        """Put the envelope into a local mailbox, starting a virtual actor for it if this
        instance should; ``False`` when the address lives elsewhere (or nowhere)."""
        dst = envelope.dst
        for _ in range(2):  # a virtual actor may be stopping for idleness right now: once more
            box = self._boxes.get(dst)
            if box is None:
                kind = self._kinds.get(dst.kind)
                if kind is None or kind.factory is None or not activate:
                    return False
                holder = self.bus.holder(dst)
                if holder is not None and holder != self.instance_id:
                    return False
                box = await self._activate(dst, kind)
                if box is None:
                    return False
            try:
                await self._put(box, envelope, wait=wait)
            except Unreachable:
                if self._kinds.get(dst.kind) is None:
                    raise
                continue
            return True
        raise Unreachable()

    async def _activate(self, address: Address, kind: Kind) -> Mailbox[Envelope] | None:
        """Start the actor at ``address`` under the kind's supervisor; ``None`` if it cannot
        live here (no actor for that address, or another instance claimed it first)."""
        starting = self._activating.get(address)
        if starting is not None:
            await starting.wait()
            return self._boxes.get(address)
        self._activating[address] = done = trio.Event()
        try:
            assert kind.factory is not None
            assert kind.supervisor is not None
            actor = kind.factory(address)
            if actor is None:
                return None
            spec = ChildSpec(
                f"{address}#{next(self._children)}",
                functools.partial(actor.run, self),
                restart=Restart.TEMPORARY,
                shutdown_s=kind.shutdown_s,
            )
            try:
                await kind.supervisor.start_child(spec)
            except AddressInUse:
                return None  # another instance was first: the bus forwards to it
            except Exception:
                log.exception("actor %s failed to start", address)
                return None
            self._activated += 1
            return self._boxes.get(address)
        finally:
            del self._activating[address]
            done.set()

    def _owns(self, corr: str | None) -> bool:
        return corr is not None and corr.partition(":")[0] == self.instance_id

    def _resolve(self, envelope: Envelope) -> None:
        slot = self._pending.get(envelope.corr or "")
        if slot is None or slot.event.is_set():
            self._late += 1
            return
        slot.value = envelope.body
        slot.event.set()

    async def _put(self, box: Mailbox[Envelope], envelope: Envelope, *, wait: bool) -> None:
        try:
            if wait:
                await box.put(envelope)
            else:
                box.put_nowait(envelope)
        except Unreachable:
            self._unreachable += 1
            raise
        self._delivered += 1
