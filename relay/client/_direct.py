"""Direct connections between two devices of one network (the seed's Relay-Workflow).

The devices try ICE first - aioice, on the trio-asyncio loop, with the STUN and TURN servers
Yggdrasil hands out (``GET /api/v1/devices/{id}/ice-servers``) - and exchange their candidates as
``signal`` frames through the relay. If ICE does not connect in time, the channel falls back to
the relay itself. ``relay_only`` restricts ICE to TURN relay candidates (the user forcing relay
mode): traffic then always passes Yggdrasil's TURN server, never a direct path between the homes.

Requires a running trio-asyncio loop (``trio_asyncio.open_loop()``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import aioice
import msgspec
import trio
import trio.lowlevel
import trio_asyncio

from ._client import ClientError, DeviceClient

log = logging.getLogger(__name__)

OFFER = "ice-offer"
ANSWER = "ice-answer"
ABORT = "ice-abort"
"""Sent by the side that gives up, so that the other falls back to the relay at once."""
RELAY = "ice-relay"
"""Sent instead of an offer when ICE could not even start: use the relay from the outset."""
IceServers = list[dict[str, Any]]


class IceDescription(msgspec.Struct, frozen=True):
    session: str
    ufrag: str
    pwd: str
    candidates: list[str]
    relay_only: bool = False


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(IceDescription).decode


class DirectChannel:
    """A byte channel to one peer device: over ICE (``path == "direct"``) or the relay."""

    def __init__(
        self,
        client: DeviceClient,
        peer: str,
        path: Literal["direct", "relay"],
        agent: aioice.Connection | None = None,
    ) -> None:
        self.client = client
        self.peer = peer
        self.path = path
        self._agent = agent
        self._inbox = client.open_inbox(peer) if agent is None else None

    async def send(self, data: bytes) -> None:
        if self._agent is not None:
            await trio_asyncio.aio_as_trio(self._agent.send)(data)
        else:
            await self.client.send(self.peer, data)

    async def receive(self) -> bytes:
        if self._agent is not None:
            data: bytes = await trio_asyncio.aio_as_trio(self._agent.recv)()
            return data
        assert self._inbox is not None
        return await self._inbox.receive()

    async def aclose(self) -> None:
        if self._agent is not None:
            with trio.move_on_after(2) as scope:
                scope.shield = True
                await trio_asyncio.aio_as_trio(self._agent.close)()
        else:
            self.client.close_inbox(self.peer)


_TURN_ORDER = {("turn", "udp"): 0, ("turn", "tcp"): 1, ("turns", "tcp"): 2}
"""aioice takes one TURN server: UDP when offered, else TCP, else TLS (RFC 7065 URLs)."""


def _agent(ice_servers: IceServers, *, controlling: bool, relay_only: bool) -> aioice.Connection:
    stun: tuple[str, int] | None = None
    turn: tuple[int, tuple[str, int], str | None, str | None] | None = None
    for server in ice_servers:
        for url in server.get("urls", []):
            scheme, _, rest = url.partition(":")
            address, _, query = rest.partition("?")
            host_port = urlsplit(f"//{address}")
            if host_port.hostname is None or host_port.port is None:
                continue
            where = (host_port.hostname, host_port.port)
            if scheme == "stun" and stun is None:
                stun = where
                continue
            transport = "udp" if scheme == "turn" else "tcp"
            for parameter in query.split("&"):
                name, _, value = parameter.partition("=")
                if name == "transport":
                    transport = value.lower()
            rank = _TURN_ORDER.get((scheme, transport))
            if rank is not None and (turn is None or rank < turn[0]):
                turn = (rank, where, server.get("username"), server.get("credential"))
    policy = aioice.TransportPolicy.RELAY if relay_only else aioice.TransportPolicy.ALL
    return aioice.Connection(
        ice_controlling=controlling,
        stun_server=stun,
        turn_server=None if turn is None else turn[1],
        turn_username=None if turn is None else turn[2],
        turn_password=None if turn is None else turn[3],
        turn_ssl=turn is not None and turn[0] == 2,
        turn_transport="udp" if turn is None or turn[0] == 0 else "tcp",
        use_ipv6=False,
        transport_policy=policy,
    )


async def _connect(agent: aioice.Connection, remote: IceDescription) -> None:
    aio = trio_asyncio.aio_as_trio
    for line in remote.candidates:
        await aio(agent.add_remote_candidate)(aioice.Candidate.from_sdp(line))
    await aio(agent.add_remote_candidate)(None)
    agent.remote_username, agent.remote_password = remote.ufrag, remote.pwd
    await aio(agent.connect)()


async def _connect_or_abort(
    client: DeviceClient,
    peer: str,
    agent: aioice.Connection,
    remote: IceDescription,
    timeout_s: float,
) -> bool:
    """Connect, unless the peer gives up first or the time runs out; whether it connected."""
    outcome: list[bool] = []
    async with trio.open_nursery() as nursery:

        async def connect() -> None:
            try:
                await _connect(agent, remote)
                outcome.append(True)
            except (ConnectionError, OSError, ValueError):
                outcome.append(False)
            nursery.cancel_scope.cancel()

        async def aborted() -> None:
            with contextlib.suppress(trio.TooSlowError, ClientError):
                await client.wait_signal(peer, ABORT, timeout_s=timeout_s)
            outcome.append(False)
            nursery.cancel_scope.cancel()

        nursery.start_soon(connect)
        nursery.start_soon(aborted)
    return bool(outcome) and outcome[0]


async def _give_up(
    client: DeviceClient, peer: str, agent: aioice.Connection, kind: str = ABORT
) -> None:
    with trio.move_on_after(2) as scope:
        scope.shield = True
        with contextlib.suppress(ClientError):
            await client.signal(peer, kind, b"")
        await trio_asyncio.aio_as_trio(agent.close)()


def _describe(agent: aioice.Connection, session: str, relay_only: bool) -> bytes:
    return _encode(
        IceDescription(
            session=session,
            ufrag=agent.local_username,
            pwd=agent.local_password,
            candidates=[c.to_sdp() for c in agent.local_candidates],
            relay_only=relay_only,
        )
    )


async def connect_direct(
    client: DeviceClient,
    peer: str,
    ice_servers: IceServers,
    *,
    relay_only: bool = False,
    timeout_s: float = 10.0,
) -> DirectChannel:
    """Offer ICE to ``peer``; a direct channel if it connects in time, else the relay."""
    agent = _agent(ice_servers, controlling=True, relay_only=relay_only)
    session = secrets.token_urlsafe(8)
    offered = False
    try:
        with trio.fail_after(timeout_s):
            await trio_asyncio.aio_as_trio(agent.gather_candidates)()
            async with trio.open_nursery() as nursery:
                answer: list[bytes] = []

                async def wait_answer() -> None:
                    answer.append(await client.wait_signal(peer, ANSWER, timeout_s=timeout_s))

                nursery.start_soon(wait_answer)
                await trio.lowlevel.checkpoint()  # the waiter is in place before the offer leaves
                await client.signal(peer, OFFER, _describe(agent, session, relay_only))
                offered = True
        remote = _decode(answer[0])
        if await _connect_or_abort(client, peer, agent, remote, timeout_s):
            return DirectChannel(client, peer, "direct", agent)
        reason = "no path"
    except (trio.TooSlowError, ClientError, ConnectionError, OSError, ValueError) as exc:
        reason = type(exc).__name__
    log.info("direct connection to %s failed (%s); using the relay", peer, reason)
    await _give_up(client, peer, agent, RELAY if not offered else ABORT)
    return DirectChannel(client, peer, "relay")


def accept_direct(
    client: DeviceClient,
    ice_servers: Callable[[], Awaitable[IceServers]],
    on_channel: Callable[[DirectChannel], Awaitable[None]],
    *,
    timeout_s: float = 10.0,
) -> None:
    """Answer ICE offers from the devices of the network; each channel goes to ``on_channel``."""

    async def answer(sender: str, payload: bytes) -> None:
        try:
            offer = _decode(payload)
        except msgspec.DecodeError:
            return
        agent = _agent(await ice_servers(), controlling=False, relay_only=offer.relay_only)
        connected = False
        try:
            with trio.fail_after(timeout_s):
                await trio_asyncio.aio_as_trio(agent.gather_candidates)()
                await client.signal(
                    sender, ANSWER, _describe(agent, offer.session, offer.relay_only)
                )
            connected = await _connect_or_abort(client, sender, agent, offer, timeout_s)
        except (trio.TooSlowError, ClientError, ConnectionError, OSError, ValueError):
            connected = False
        if connected:
            channel = DirectChannel(client, sender, "direct", agent)
        else:
            await _give_up(client, sender, agent)
            channel = DirectChannel(client, sender, "relay")
        await on_channel(channel)

    async def relay_from_the_start(sender: str, payload: bytes) -> None:
        await on_channel(DirectChannel(client, sender, "relay"))

    client.signal_handlers[OFFER] = answer
    client.signal_handlers[RELAY] = relay_from_the_start
