"""A device session's transport over a WebRTC data channel (aiortc, on the trio-asyncio loop),
the same for both ends.

A device that cannot (or would rather not) hold a websocket opens an ``RTCPeerConnection`` with
one reliable, ordered data channel labelled ``yggdrasil`` (:data:`CHANNEL_LABEL`), posts the SDP
offer to ``POST /api/v1/devices/{id}/webrtc`` with its access token, and applies the answer. Once
the channel opens, it speaks the device protocol on it - one MessagePack frame per data-channel
message - with the same session behind it on the server as behind a websocket.

What a data channel lacks, the transport adds: the server's liveness check is a ``ping`` frame
that any message proves answered, the session's close code travels in a last ``bye`` frame, and
sends wait while the channel's buffer is above a high-water mark (the slow-consumer rule then
applies as on a websocket). aiortc gives no way to stop reading, so what a device sends beyond a
bounded inbound buffer ends its session instead.

The server's side of the negotiation is ``relay._webrtc``, the device's ``relay.client``'s
``open_webrtc``. Requires a running trio-asyncio loop (``trio_asyncio.open_loop()``).
"""

from __future__ import annotations

import contextlib
import itertools
import math

import trio
import trio_asyncio
from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.sdp import SessionDescription

from ._frames import CLOSE_SLOW_CONSUMER, MAX_FRAME_BYTES, Bye, Ping, encode
from ._transport import TransportClosed

CHANNEL_LABEL = "yggdrasil"
DEFAULT_MAX_MESSAGE_BYTES = 65536
"""What an SDP without ``a=max-message-size`` allows (RFC 8841, section 6)."""
MIN_MESSAGE_BYTES = 16 * 1024
"""Smaller data-channel messages could not carry a network map in ``welcome``."""
MAX_SDP_CHARS = 32 * 1024
_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024


class InvalidOffer(ValueError):
    """The offer is not SDP, or offers no data channel: nothing was set up."""


def max_message_bytes(sdp: str) -> int:
    """The largest message the side that wrote ``sdp`` accepts on its data channels (0 in the
    SDP: any size, taken as a websocket's frame limit); :class:`InvalidOffer` if it offers no data
    channel at all, or one too small for the protocol's frames."""
    if len(sdp) > MAX_SDP_CHARS:
        raise InvalidOffer("the SDP is too long")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the input provokes
        raise InvalidOffer(f"not a session description ({type(exc).__name__})") from None
    for media in description.media:
        if media.kind == "application" and media.sctp_port is not None:
            capabilities = media.sctpCapabilities
            if capabilities is None:
                return DEFAULT_MAX_MESSAGE_BYTES
            size = int(capabilities.maxMessageSize)
            if size == 0:
                return MAX_FRAME_BYTES
            if size < MIN_MESSAGE_BYTES:
                raise InvalidOffer(
                    f"a=max-message-size must allow at least {MIN_MESSAGE_BYTES} bytes"
                )
            return size
    raise InvalidOffer("the offer has no data channel (an m=application section with SCTP)")


class DataChannelTransport:
    """The :class:`~relay.protocol.Transport` of one data channel and its peer connection.

    ``server``: this end sends the liveness pings and the ``bye`` frame.
    """

    def __init__(
        self,
        pc: RTCPeerConnection,
        channel: RTCDataChannel,
        *,
        server: bool,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        inbound_limit_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.pc = pc
        self.channel = channel
        self.server = server
        self.max_message_bytes = max_message_bytes
        self.inbound_limit_bytes = inbound_limit_bytes
        self.opened = trio.Event()
        self.closed = trio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._inbox_send, self._inbox = trio.open_memory_channel[bytes | str](math.inf)
        self._inbound_bytes = 0
        self._activity = trio.Event()
        self._drained = trio.Event()
        self._nonces = itertools.count(1)
        self._closing = False
        channel.bufferedAmountLowThreshold = _LOW_WATER
        channel.on("open", self.opened.set)
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._mark_closed(None, "data channel closed"))
        channel.on("bufferedamountlow", self._on_drained)
        pc.on("connectionstatechange", self._on_state)
        if channel.readyState == "open":
            self.opened.set()

    # ----------------------------------------------------------------- aiortc's callbacks

    def _on_message(self, message: bytes | str) -> None:
        if self.closed.is_set():
            return
        size = len(message)
        if self._inbound_bytes + size > self.inbound_limit_bytes:
            self._mark_closed(CLOSE_SLOW_CONSUMER, "inbound buffer full")
            self.channel.close()
            return
        self._inbound_bytes += size
        self._inbox_send.send_nowait(message)
        self._activity.set()

    def _on_drained(self) -> None:
        self._drained.set()

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            self._mark_closed(None, f"connection {state}")

    def _mark_closed(self, code: int | None, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_code, self.close_reason = code, reason
        self.closed.set()
        self._inbox_send.close()
        self._activity.set()
        self._drained.set()

    # ----------------------------------------------------------------- Transport

    async def get_message(self) -> bytes | str:
        try:
            message = await self._inbox.receive()
        except trio.EndOfChannel:
            raise TransportClosed(self.close_code, self.close_reason) from None
        self._inbound_bytes -= len(message)
        return message

    async def send_message(self, message: bytes) -> None:
        if self.closed.is_set():
            raise TransportClosed(self.close_code, self.close_reason)
        if len(message) > self.max_message_bytes:
            raise ValueError(f"{len(message)} bytes exceed the channel's {self.max_message_bytes}")
        try:
            self.channel.send(message)
        except Exception:  # aiortc's InvalidStateError: the channel closed under us
            self._mark_closed(None, "data channel closed")
            raise TransportClosed(None, "data channel closed") from None
        while self.channel.bufferedAmount > _HIGH_WATER and not self.closed.is_set():
            self._drained = trio.Event()
            await self._drained.wait()
        if self.closed.is_set():
            raise TransportClosed(self.close_code, self.close_reason)

    async def ping(self) -> None:
        """Send a ``ping`` frame; any message from the device after it is proof of life."""
        self._activity = trio.Event()
        await self.send_message(encode(Ping(nonce=next(self._nonces))))
        await self._activity.wait()
        if self.closed.is_set():
            raise TransportClosed(self.close_code, self.close_reason)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        if self._closing:
            return
        self._closing = True
        if self.server and not self.closed.is_set():
            with contextlib.suppress(Exception):
                self.channel.send(encode(Bye(code=code, reason=reason or "")))
            # Let the bye leave, and likely arrive, before closing aborts the association.
            with trio.move_on_after(1):
                self.channel.bufferedAmountLowThreshold = 0
                if self.channel.bufferedAmount > 0 and not self.closed.is_set():
                    self._drained = trio.Event()
                    await self._drained.wait()
                await trio.sleep(0.05)
        self._mark_closed(code, reason or "")
        await trio_asyncio.aio_as_trio(self.pc.close)()
