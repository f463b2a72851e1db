"""Device sessions over a WebRTC data channel: aiortc, on the trio-asyncio loop.

A device that cannot (or would rather not) hold a websocket opens an ``RTCPeerConnection`` with
one reliable, ordered data channel labelled ``yggdrasil``, posts the SDP offer to
``POST /api/v1/devices/{id}/webrtc`` with its access token, and applies the answer. Once the
channel opens, it speaks the device protocol on it - one MessagePack frame per data-channel
message - with the same :class:`DeviceSession` behind it as behind a websocket.

What a data channel lacks, the transport adds: the server's liveness check is a ``ping`` frame
that any message proves answered, the session's close code travels in a last ``bye`` frame, and
sends wait while the channel's buffer is above a high-water mark (the slow-consumer rule then
applies as on a websocket). aiortc gives no way to stop reading, so what a device sends beyond a
bounded inbound buffer ends its session instead.

Requires a running trio-asyncio loop (``trio_asyncio.open_loop()``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import trio
import trio_asyncio
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import SessionDescription

from ._protocol import CLOSE_SLOW_CONSUMER, MAX_FRAME_BYTES, Bye, Ping, encode
from ._transport import SessionRefused, TransportClosed

log = logging.getLogger(__name__)

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


def reachable_candidates(
    sdp: str, allowed: Callable[[str], bool], aliases: dict[str, str] | None = None
) -> tuple[str, int]:
    """``sdp`` without the ICE candidates the server must not send to, and how many are left.

    The server's ICE agent sends connectivity checks to every candidate it is given: a device
    could otherwise aim them at the server's own network, at loopback or at a cloud's metadata
    address. Only IP literals the TURN peer policy allows are kept (no mDNS ``.local`` names, no
    host names: the server resolves nothing a device names). ``aliases`` rewrites addresses
    first: the public address of the server's own TURN relays to the one they bind to, so that
    the server reaches them without a NAT hairpin.
    """
    kept: list[str] = []
    left = 0
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 8 or not _is_ip(fields[4]):
                continue
            if aliases and fields[4] in aliases:
                fields[4] = aliases[fields[4]]
                line = " ".join(fields)
            if not allowed(fields[4]):
                continue
            left += 1
        kept.append(line)
    return "\r\n".join(kept) + "\r\n", left


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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
    """The :class:`~relay._transport.Transport` of one data channel and its peer connection.

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


class Offer:
    """The server's side of one negotiation: the answer to send back, then the open channel."""

    def __init__(self, pc: RTCPeerConnection, max_bytes: int, inbound_limit: int) -> None:
        self.pc = pc
        self.answer = ""
        self.transport: DataChannelTransport | None = None
        self.max_bytes = max_bytes
        """The largest message both ends accept (fixed once the answer is made)."""
        self._inbound_limit = inbound_limit
        self._arrived = trio.Event()
        pc.on("datachannel", self._on_channel)
        pc.on("connectionstatechange", self._on_state)

    def _on_channel(self, channel: RTCDataChannel) -> None:
        if self.transport is not None or channel.label != CHANNEL_LABEL:
            channel.close()  # one session per peer connection, on the agreed channel
            return
        self.transport = DataChannelTransport(
            self.pc,
            channel,
            server=True,
            max_message_bytes=self.max_bytes,
            inbound_limit_bytes=self._inbound_limit,
        )
        self._arrived.set()

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._arrived.set()

    async def wait_open(self, timeout_s: float) -> DataChannelTransport:
        """The transport once the channel is open; closes everything and raises
        :class:`TransportClosed` if that does not happen within ``timeout_s``."""
        try:
            return await self._wait_open(timeout_s)
        except BaseException:
            await self.abandon()
            raise

    async def _wait_open(self, timeout_s: float) -> DataChannelTransport:
        with trio.move_on_after(timeout_s):
            await self._arrived.wait()
            transport = self.transport
            if transport is not None:
                with trio.CancelScope() as scope:
                    # An open channel, or a closed one: whichever comes first.
                    async with trio.open_nursery() as nursery:

                        async def closed() -> None:
                            await transport.closed.wait()
                            scope.cancel()

                        nursery.start_soon(closed)
                        await transport.opened.wait()
                        nursery.cancel_scope.cancel()
                if transport.opened.is_set() and not transport.closed.is_set():
                    return transport
        raise TransportClosed(None, "the data channel did not open")

    def local_endpoints(self) -> list[tuple[str, int]]:
        """The server's own UDP endpoints of this peer connection (its host candidates)."""
        sctp = self.pc.sctp
        if sctp is None:
            return []
        gatherer = sctp.transport.transport.iceGatherer
        return [(c.ip, c.port) for c in gatherer.getLocalCandidates() if c.type == "host"]

    async def abandon(self) -> None:
        with trio.CancelScope(shield=True):
            await trio_asyncio.aio_as_trio(self.pc.close)()


async def accept_offer(
    sdp: str,
    *,
    peer_allowed: Callable[[str], bool],
    aliases: dict[str, str] | None = None,
    ice_servers: list[RTCIceServer] | None = None,
    inbound_limit_bytes: int = 4 * 1024 * 1024,
) -> Offer:
    """Answer a device's offer; :class:`InvalidOffer` (and nothing kept) if it is unusable.

    Candidates toward addresses ``peer_allowed`` refuses are dropped first (see
    :func:`reachable_candidates`); an offer left without any is refused.
    """
    remote_max = max_message_bytes(sdp)
    sdp, left = reachable_candidates(sdp, peer_allowed, aliases)
    if left == 0:
        raise InvalidOffer(
            "the offer has no candidate the server may reach (gather all candidates first; "
            "relay candidates from GET /api/v1/devices/{id}/ice-servers always qualify)"
        )
    aio = trio_asyncio.aio_as_trio
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers or []))
    offer = Offer(pc, remote_max, inbound_limit_bytes)
    try:
        await aio(pc.setRemoteDescription)(RTCSessionDescription(sdp=sdp, type="offer"))
        answer = await aio(pc.createAnswer)()
        await aio(pc.setLocalDescription)(answer)
    except BaseException as exc:
        await offer.abandon()
        if isinstance(exc, Exception):
            raise InvalidOffer(f"the offer cannot be answered ({type(exc).__name__})") from None
        raise
    offer.answer = pc.localDescription.sdp
    # Neither end sends a message larger than the other accepts: the device learns the smaller
    # of the two limits as welcome.max_data_bytes.
    offer.max_bytes = min(remote_max, max_message_bytes(offer.answer))
    return offer


def ice_server_list(body: dict[str, Any]) -> list[RTCIceServer]:
    """``GET /api/v1/devices/{id}/ice-servers``'s answer as aiortc's configuration."""
    return [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in body["ice_servers"]
    ]


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except Exception:
        return response.reason_phrase


@contextlib.asynccontextmanager
async def open_webrtc(
    api_url: str,
    device_id: str,
    access_token: str,
    *,
    relay_only: bool = False,
    connect_timeout_s: float = 15.0,
) -> AsyncIterator[DataChannelTransport]:
    """The device's side: a data channel to Yggdrasil, negotiated over the HTTP API.

    ``relay_only`` uses only TURN relay candidates (Yggdrasil's own TURN server).
    Raises :class:`SessionRefused` if the API refuses, ``trio.TooSlowError`` if the channel does
    not open within ``connect_timeout_s``.
    """
    headers = {"authorization": f"Bearer {access_token}"}
    aio = trio_asyncio.aio_as_trio
    async with httpx.AsyncClient(base_url=api_url, timeout=connect_timeout_s) as http:
        response = await http.get(f"/api/v1/devices/{device_id}/ice-servers", headers=headers)
        if response.status_code != 200:
            raise SessionRefused(response.status_code, _message(response))
        policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=ice_server_list(response.json()), iceTransportPolicy=policy)
        )
        transport = DataChannelTransport(pc, pc.createDataChannel(CHANNEL_LABEL), server=False)
        try:
            await aio(pc.setLocalDescription)(await aio(pc.createOffer)())
            response = await http.post(
                f"/api/v1/devices/{device_id}/webrtc",
                json={"type": "offer", "sdp": pc.localDescription.sdp},
                headers=headers,
            )
            if response.status_code != 200:
                raise SessionRefused(response.status_code, _message(response))
            answer = response.json()["sdp"]
            transport.max_message_bytes = max_message_bytes(answer)
            await aio(pc.setRemoteDescription)(RTCSessionDescription(sdp=answer, type="answer"))
            with trio.fail_after(connect_timeout_s):
                await transport.opened.wait()
            yield transport
        finally:
            with trio.CancelScope(shield=True):
                await transport.aclose()
