"""The central router: addresses to mailboxes, the tenant rule on every envelope."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import trio

from ._address import Address, may_deliver
from ._bus import Bus, InProcessHub
from ._envelope import Envelope
from ._errors import AddressInUse, RequestTimeout, Unreachable
from ._mailbox import Mailbox


class RouterStatistics(msgspec.Struct, frozen=True):
    registered: int
    delivered: int
    forwarded: int
    unreachable: int
    pending_requests: int
    late_replies: int


class _Pending:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None


class Router:
    """Delivers envelopes to local mailboxes, or through the bus to other instances.

    Every envelope passes :func:`may_deliver` first; a refused envelope and one whose destination
    does not exist raise the same :class:`Unreachable`.
    """

    def __init__(self, instance_id: str, bus: Bus | None = None) -> None:
        if ":" in instance_id or not instance_id:
            raise ValueError("instance id must be non-empty and free of ':'")
        self.instance_id = instance_id
        self.bus: Bus = bus if bus is not None else InProcessHub().bus()
        self.bus.attach(self)
        self._boxes: dict[Address, Mailbox[Envelope]] = {}
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._delivered = 0
        self._forwarded = 0
        self._unreachable = 0
        self._late = 0

    # ----------------------------------------------------------------- registry

    def register(self, address: Address, mailbox: Mailbox[Envelope]) -> None:
        if address in self._boxes:
            raise AddressInUse(str(address))
        self._boxes[address] = mailbox
        self.bus.announce(address)

    def unregister(self, address: Address, mailbox: Mailbox[Envelope] | None = None) -> None:
        """Forget ``address`` (only if it still maps to ``mailbox``, when one is given)."""
        current = self._boxes.get(address)
        if current is None or (mailbox is not None and current is not mailbox):
            return
        del self._boxes[address]
        self.bus.withdraw(address)

    def is_local(self, address: Address) -> bool:
        return address in self._boxes

    def mailboxes(self) -> Iterator[tuple[Address, Mailbox[Envelope]]]:
        return iter(list(self._boxes.items()))

    # ----------------------------------------------------------------- sending

    async def send(self, envelope: Envelope) -> None:
        """Deliver one envelope, fire and forget.

        Raises :class:`Unreachable` or, from a full mailbox that rejects, ``Overloaded``. Under the
        ``WAIT`` policy this waits for room: that is the backpressure.
        """
        if not may_deliver(envelope.src, envelope.dst):
            self._unreachable += 1
            raise Unreachable()
        if envelope.is_reply:
            if self._owns(envelope.corr):
                self._resolve(envelope)
                return
        else:
            box = self._boxes.get(envelope.dst)
            if box is not None:
                await self._put(box, envelope)
                return
        try:
            await self.bus.forward(envelope)
        except Unreachable:
            self._unreachable += 1
            raise
        self._forwarded += 1

    async def request(self, src: Address, dst: Address, body: Any, *, timeout_s: float) -> Any:
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

    async def reply(self, request: Envelope, body: Any) -> None:
        """Answer ``request``; a reply nobody waits for any more is dropped and counted."""
        if request.corr is None or request.is_reply:
            raise ValueError("only requests can be answered")
        await self.send(Envelope(request.dst, request.src, body, corr=request.corr, is_reply=True))

    async def deliver_local(self, envelope: Envelope) -> None:
        """Entry point for envelopes that arrive from the bus."""
        if not may_deliver(envelope.src, envelope.dst):
            self._unreachable += 1
            raise Unreachable()
        if envelope.is_reply:
            self._resolve(envelope)
            return
        box = self._boxes.get(envelope.dst)
        if box is None:
            self._unreachable += 1
            raise Unreachable()
        await self._put(box, envelope)

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(
            registered=len(self._boxes),
            delivered=self._delivered,
            forwarded=self._forwarded,
            unreachable=self._unreachable,
            pending_requests=len(self._pending),
            late_replies=self._late,
        )

    # ----------------------------------------------------------------- internals

    def _owns(self, corr: str | None) -> bool:
        return corr is not None and corr.partition(":")[0] == self.instance_id

    def _resolve(self, envelope: Envelope) -> None:
        slot = self._pending.get(envelope.corr or "")
        if slot is None or slot.event.is_set():
            self._late += 1
            return
        slot.value = envelope.body
        slot.event.set()

    async def _put(self, box: Mailbox[Envelope], envelope: Envelope) -> None:
        try:
            await box.put(envelope)
        except Unreachable:
            self._unreachable += 1
            raise
        self._delivered += 1
