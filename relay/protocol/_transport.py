"""What a device session runs over: a websocket or a WebRTC data channel.

A device session (the server's ``DeviceSession``, and the device client) needs four things of its
transport, and trio-websocket's ``WebSocketConnection`` has them as they are (no wrapper on the
hot path); the data channel transport (``_datachannel.DataChannelTransport``) provides the same
four.
"""

from __future__ import annotations

from typing import Protocol


class TransportClosed(Exception):
    """The transport is gone; ``code`` is the close code the other side gave, if any."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(reason or "transport closed")
        self.code = code
        self.reason = reason


class Transport(Protocol):
    async def get_message(self, /) -> bytes | str:
        """The next whole message; raises when the transport closes."""
        ...

    async def send_message(self, message: bytes, /) -> None:
        """Send one message, waiting while the transport's buffers are full."""
        ...

    async def ping(self, /) -> None:
        """Return once the other side has shown it is alive after this call."""
        ...

    async def aclose(self, code: int = 1000, reason: str | None = None, /) -> None:
        """Close with ``code`` and ``reason`` (idempotent)."""
        ...
