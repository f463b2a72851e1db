"""The server's side of a WebRTC session: answer a device's offer, then hand the open data
channel to a device session.

The offer arrives at ``POST /api/v1/devices/{id}/webrtc`` (the gateway's ``accept_webrtc``); what
the channel carries, and how, is :class:`relay.protocol.DataChannelTransport`'s. The server's ICE
agent sends only to candidates it may reach (:func:`reachable_candidates`).

Requires a running trio-asyncio loop (``trio_asyncio.open_loop()``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import trio
import trio_asyncio
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from .protocol import (
    CHANNEL_LABEL,
    DataChannelTransport,
    InvalidOffer,
    TransportClosed,
    max_message_bytes,
)


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
