"""Bounded mailboxes with an explicit overflow policy."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

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


class Mailbox(Generic[T]):
    """A bounded trio memory channel owned by one actor.

    The mailbox holds both ends of the channel, which is what lets ``DROP_OLDEST`` take the oldest
    item out before queueing a new one. Closing it wakes the reader (its iteration ends) and makes
    every later ``put`` raise :class:`Unreachable`, as if the actor were gone.
    """

    def __init__(self, capacity: int, overflow: Overflow = Overflow.WAIT) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError("mailbox capacity must be a positive integer")
        self.capacity = capacity
        self.overflow = overflow
        self._send, self._receive = trio.open_memory_channel[T](capacity)
        self._peak = 0
        self._delivered = 0
        self._dropped = 0
        self._rejected = 0

    def put_nowait(self, item: T) -> None:
        """Queue ``item`` without blocking.

        A full mailbox drops its oldest item under ``DROP_OLDEST`` and raises
        :class:`Overloaded` under both other policies.
        """
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            if self.overflow is not Overflow.DROP_OLDEST:
                self._rejected += 1
                raise Overloaded() from None
            self._receive.receive_nowait()
            self._dropped += 1
            self._send.send_nowait(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise Unreachable() from None
        self._count()

    async def put(self, item: T, *, overflow: Overflow | None = None) -> None:
        """Queue ``item``; under ``WAIT`` block until there is room, otherwise as ``put_nowait``.

        ``overflow`` overrides the mailbox's policy for this one item: an actor that queues its own
        work (a session queueing its acknowledgements) waits, while others are refused.
        """
        if (overflow or self.overflow) is not Overflow.WAIT:
            self.put_nowait(item)
            return
        try:
            await self._send.send(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise Unreachable() from None
        self._count()

    async def get(self) -> T:
        """The next item; raises ``trio.EndOfChannel`` once the mailbox is closed and drained."""
        return await self._receive.receive()

    def get_nowait(self) -> T:
        return self._receive.receive_nowait()

    def close(self) -> None:
        """Refuse new items; the reader still drains what is queued."""
        self._send.close()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return

    def statistics(self) -> MailboxStatistics:
        size = self._send.statistics().current_buffer_used
        return MailboxStatistics(
            size=size,
            capacity=self.capacity,
            peak=self._peak,
            delivered=self._delivered,
            dropped=self._dropped,
            rejected=self._rejected,
        )

    def _count(self) -> None:
        self._delivered += 1
        used = self._send.statistics().current_buffer_used
        if used > self._peak:
            self._peak = used
