"""A guard in front of the websocket library: what a client sends is checked frame header by frame
header (RFC 6455 section 5.2) before any parser sees it, and a violation closes the connection at
once, with the close code RFC 6455 section 7.4.1 names.

trio-websocket (through wsproto) turns a protocol error into a silent TCP close, and waits for the
payload of a frame whose header announces 2^62 bytes. The guard fails the connection instead
(section 7.1.7): it sends a close frame - 1002 for a protocol error (an unmasked client frame,
reserved bits, an unknown opcode, a fragmented or oversized control frame, a misplaced
continuation), 1009 for a message larger than the limit - and closes the TCP connection.

:class:`FrameScanner` is the sans-IO core (bytes in, a :class:`Violation` out); the stream and the
listener around it are the trio driver. The scanner keeps no payloads: it skips them by count.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG))
_MAX_CONTROL_PAYLOAD = 125
_END_OF_HEAD = b"\r\n\r\n"
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class Violation(Exception):
    """The client broke the protocol; ``code`` is the close code to fail the connection with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameScanner:
    """Follows a client's byte stream: the HTTP upgrade request, then frame headers, skipping
    payloads by their announced length. :meth:`feed` raises :class:`Violation` for the first
    header that breaks RFC 6455 or announces a message over ``max_message_bytes``.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._upgraded = False
        self._head_tail = b""  # the last bytes of the request seen so far, to find its end
        self._header = bytearray()
        self._skip = 0
        self._in_message = False
        self._message_bytes = 0

    def feed(self, data: bytes) -> None:
        """Take the next bytes the client sent (in order, each byte once)."""
        i, n = 0, len(data)
        if not self._upgraded:
            seen = self._head_tail + data
            end = seen.find(_END_OF_HEAD)
            if end < 0:
                self._head_tail = seen[-(len(_END_OF_HEAD) - 1) :]
                return
            self._upgraded = True
            i = end + len(_END_OF_HEAD) - len(self._head_tail)
            self._head_tail = b""
        header = self._header
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            if not header and n - i >= 14:
                # The whole header is here (at most 14 bytes): no copying byte by byte.
                i += self._frame(data, i)
                continue
            header.append(data[i])
            i += 1
            if len(header) >= 2 and len(header) == _header_size(header[0], header[1]):
                self._frame(bytes(header), 0)
                header.clear()

    def _frame(self, data: bytes, at: int) -> int:
        """Check the frame header starting at ``data[at]``; returns its size."""
        first, second = data[at], data[at + 1]
        opcode = first & 0x0F
        if first & 0x70:
            raise Violation(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
        if opcode not in _OPCODES:
            raise Violation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if not second & 0x80:
            raise Violation(CLOSE_PROTOCOL_ERROR, "unmasked client frame")  # section 5.1
        size = _header_size(first, second)
        short = second & 0x7F
        if short == 126:
            length = _U16.unpack_from(data, at + 2)[0]
        elif short == 127:
            length = _U64.unpack_from(data, at + 2)[0]
            if length >> 63:
                raise Violation(CLOSE_PROTOCOL_ERROR, "payload length with its top bit set")
        else:
            length = short
        fin = bool(first & 0x80)
        if opcode >= _CLOSE:
            if not fin or length > _MAX_CONTROL_PAYLOAD:
                raise Violation(CLOSE_PROTOCOL_ERROR, "fragmented or oversized control frame")
        else:
            if opcode == _CONTINUATION and not self._in_message:
                raise Violation(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
            if opcode != _CONTINUATION and self._in_message:
                raise Violation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            self._message_bytes = length + (self._message_bytes if self._in_message else 0)
            if self._message_bytes > self.max_message_bytes:
                raise Violation(
                    CLOSE_TOO_BIG, f"message larger than {self.max_message_bytes} bytes"
                )
            self._in_message = not fin
        self._skip = length
        return size


def _header_size(first: int, second: int) -> int:
    short = second & 0x7F
    extended = 2 if short == 126 else 8 if short == 127 else 0
    return 2 + extended + (4 if second & 0x80 else 0)


def close_frame(code: int, reason: str) -> bytes:
    """An unmasked (server) close frame with ``code`` and at most 123 bytes of ``reason``."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    return bytes((0x88, len(payload))) + payload


class GuardedStream(trio.abc.Stream):
    """A client connection whose incoming bytes pass a :class:`FrameScanner`.

    On a violation it sends the close frame (waiting at most ``close_timeout_s`` for the writer
    that may hold the stream), closes the connection and reports end of stream to the reader
    above it. ``violation`` then says what happened.
    """

    def __init__(
        self,
        inner: trio.SocketStream,
        max_message_bytes: int,
        close_timeout_s: float = 1.0,
        on_violation: Callable[[Violation], None] | None = None,
    ) -> None:
        self.inner = inner
        self.scanner = FrameScanner(max_message_bytes)
        self.close_timeout_s = close_timeout_s
        self.violation: Violation | None = None
        self._on_violation = on_violation
        self._send_lock = trio.Lock()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.violation is not None:
            return b""
        data = await self.inner.receive_some(max_bytes)
        try:
            self.scanner.feed(data)
        except Violation as violation:
            self.violation = violation
            if self._on_violation is not None:
                self._on_violation(violation)
            await self._fail(violation)
            return b""
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _fail(self, violation: Violation) -> None:
        log.info("websocket client failed: code=%d %s", violation.code, violation.reason)
        with trio.move_on_after(self.close_timeout_s):
            async with self._send_lock:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.inner.send_all(close_frame(violation.code, violation.reason))
        await trio.aclose_forcefully(self.inner)


class GuardedListener(trio.abc.Listener[trio.abc.Stream]):
    """A TCP listener whose connections are :class:`GuardedStream`\\ s."""

    def __init__(self, inner: trio.SocketListener, max_message_bytes: int) -> None:
        self.inner = inner
        self.max_message_bytes = max_message_bytes
        self.violations = 0
        """Connections failed for a protocol violation so far."""

    async def accept(self) -> trio.abc.Stream:
        stream = await self.inner.accept()
        return GuardedStream(stream, self.max_message_bytes, on_violation=self._count)

    def _count(self, violation: Violation) -> None:
        self.violations += 1

    async def aclose(self) -> None:
        await self.inner.aclose()
