"""Bounded mailboxes with an explicit overflow policy."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import msgspec
import trio

from ._errors import Overloaded, Unreachable

T = TypeVar("T")


class Overflow(enum.Enum):
    """What a full mailbox does with one more envelope."""

    WAIT = "wait"
    """The sender waits until there is room (backpressure)."""
    REJECT = "reject"
    """The sender gets :class:`Overloaded` at once."""
    DROP_OLDEST = "drop_oldest"
    """The oldest queued envelope is dropped and counted; the new one is queued."""


class MailboxStatistics(msgspec.Struct, frozen=True):
    size: int
    capacity: int
    peak: int
    delivered: int
    dropped: int
    rejected: int
    queued_bytes: int = 0
    max_bytes: int | None = None
    shed: bool = False


class ByteBudget:
    """The bytes queued in a group of mailboxes (say, every device session of an instance),
    bounded together.

    A mailbox that would take the group past ``max_bytes`` first makes room by shedding the
    mailboxes with the largest backlogs: each is closed, its queue dropped, and its owner told
    (its ``on_shed``), so one slow consumer never holds the memory every other one needs. Only
    mailboxes with bytes queued are looked at.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("a byte budget must be positive")
        self.max_bytes = max_bytes
        self.used = 0
        self.shed = 0
        """Mailboxes shed so far."""
        self._holders: set[Mailbox[Any]] = set()

    def _take(self, mailbox: Mailbox[Any], size: int) -> None:
        while self.used + size > self.max_bytes and self._holders:
            victim = max(self._holders, key=lambda m: m.queued_bytes)
            if victim.is_shed:
                # Shed already; what it still counts is a put in flight that is about to fail.
                self._holders.discard(victim)
                continue
            self.shed += 1
            victim.shed()
        if mailbox.closed:
            raise Unreachable()  # it was the largest backlog itself
        self.used += size
        self._holders.add(mailbox)

    def _release(self, mailbox: Mailbox[Any], size: int) -> None:
        self.used -= size
        if not mailbox.queued_bytes:
            self._holders.discard(mailbox)


class Mailbox(Generic[T]):
    """A bounded trio memory channel owned by one actor.

    The mailbox holds both ends of the channel, which is what lets ``DROP_OLDEST`` take the oldest
    item out before queueing a new one. Closing it wakes the reader (its iteration ends) and makes
    every later ``put`` raise :class:`Unreachable`, as if the actor were gone.

    An item that ``urgent(item)`` calls urgent is not queued: ``on_urgent(item)`` sees it at
    once, ahead of everything waiting (a "stop now" must not wait behind a full queue).

    Besides ``capacity`` items, a mailbox can be bounded in bytes: ``sizer(item)`` says what an
    item costs, at most ``max_bytes`` are queued (an empty mailbox always takes one item, however
    large), and a shared :class:`ByteBudget` bounds a group of mailboxes together. A full mailbox
    applies its overflow policy to bytes as to items.
    """

    def __init__(
        self,
        capacity: int,
        overflow: Overflow = Overflow.WAIT,
        *,
        max_bytes: int | None = None,
        sizer: Callable[[T], int] | None = None,
        budget: ByteBudget | None = None,
        on_shed: Callable[[], None] | None = None,
        urgent: Callable[[T], bool] | None = None,
        on_urgent: Callable[[T], None] | None = None,
    ) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError("mailbox capacity must be a positive integer")
        if (max_bytes is not None or budget is not None) and sizer is None:
            raise ValueError("a mailbox bounded in bytes needs a sizer")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.capacity = capacity
        self.overflow = overflow
        self.max_bytes = max_bytes
        self._sizer = sizer
        self._budget = budget
        self._on_shed = on_shed
        self._urgent = urgent if on_urgent is not None else None
        self._on_urgent = on_urgent
        self._send, self._receive = trio.open_memory_channel[T](capacity)
        self._room = trio.lowlevel.ParkingLot()
        self.queued_bytes = 0
        self.closed = False
        self.is_shed = False
        self._peak = 0
        self._delivered = 0
        self._dropped = 0
        self._rejected = 0

    def put_nowait(self, item: T) -> None:
        """Queue ``item`` without blocking.

        A full mailbox drops its oldest item under ``DROP_OLDEST`` and raises
        :class:`Overloaded` under both other policies.
        """
        if self.closed:
            raise Unreachable()
        if self._urgent is not None and self._urgent(item):
            self._take_urgent(item)
            return
        size = self._sizer(item) if self._sizer is not None else 0
        if self.max_bytes is not None and self.queued_bytes:
            while self.queued_bytes + size > self.max_bytes:
                if self.overflow is not Overflow.DROP_OLDEST or not self._drop_oldest():
                    self._rejected += 1
                    raise Overloaded()
        self._reserve(size)
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            if self.overflow is not Overflow.DROP_OLDEST:
                self._unreserve(size)
                self._rejected += 1
                raise Overloaded() from None
            self._drop_oldest()
            self._send.send_nowait(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._unreserve(size)
            raise Unreachable() from None
        self._count()

    async def put(self, item: T, *, overflow: Overflow | None = None) -> None:
        """Queue ``item``; under ``WAIT`` block until there is room, otherwise as ``put_nowait``.

        ``overflow`` overrides the mailbox's policy for this one item: an actor that queues its own
        work (a session queueing its acknowledgements) waits, while others are refused.
        """
        if (overflow or self.overflow) is not Overflow.WAIT or (
            self._urgent is not None and self._urgent(item)
        ):
            self.put_nowait(item)
            return
        size = self._sizer(item) if self._sizer is not None else 0
        if self.max_bytes is not None:
            while self.queued_bytes and self.queued_bytes + size > self.max_bytes:
                if self.closed:
                    raise Unreachable()
                await self._room.park()
        if self.closed:
            raise Unreachable()
        self._reserve(size)
        try:
            await self._send.send(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._unreserve(size)
            raise Unreachable() from None
        except BaseException:
            self._unreserve(size)
            raise
        self._count()

    async def get(self) -> T:
        """The next item; raises ``trio.EndOfChannel`` once the mailbox is closed and drained."""
        return self._taken(await self._receive.receive())

    def get_nowait(self) -> T:
        return self._taken(self._receive.receive_nowait())

    def close(self) -> None:
        """Refuse new items; the reader still drains what is queued."""
        self.closed = True
        self._send.close()
        self._room.unpark_all()

    def shed(self) -> None:
        """Close the mailbox and drop everything queued (its bytes are free at once), then tell
        the owner: it has fallen too far behind to keep."""
        if self.is_shed:
            return
        self.is_shed = True
        self.close()
        while True:
            try:
                self._taken(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._dropped += 1
        if self._on_shed is not None:
            self._on_shed()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                item = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            yield self._taken(item)

    def statistics(self) -> MailboxStatistics:
        size = self._send.statistics().current_buffer_used
        return MailboxStatistics(
            size=size,
            capacity=self.capacity,
            peak=self._peak,
            delivered=self._delivered,
            dropped=self._dropped,
            rejected=self._rejected,
            queued_bytes=self.queued_bytes,
            max_bytes=self.max_bytes,
            shed=self.is_shed,
        )

    # ----------------------------------------------------------------- byte accounting

    def _reserve(self, size: int) -> None:
        if not size:
            return
        if self._budget is not None:
            self._budget._take(self, size)
        self.queued_bytes += size

    def _unreserve(self, size: int) -> None:
        if not size:
            return
        self.queued_bytes -= size
        if self._budget is not None:
            self._budget._release(self, size)
        self._room.unpark_all()

    def _taken(self, item: T) -> T:
        if self._sizer is not None:
            self._unreserve(self._sizer(item))
        return item

    def _take_urgent(self, item: T) -> None:
        assert self._on_urgent is not None
        self._delivered += 1
        self._on_urgent(item)

    def _drop_oldest(self) -> bool:
        try:
            self._taken(self._receive.receive_nowait())
        except trio.WouldBlock:
            return False
        self._dropped += 1
        return True

    def _count(self) -> None:
        self._delivered += 1
        used = self._send.statistics().current_buffer_used
        if used > self._peak:
            self._peak = used
