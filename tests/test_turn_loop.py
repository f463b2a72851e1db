"""The TURN driver's readiness loop over real loopback sockets: many relays drained by one loop,
TCP frames batched in one segment or split across segments, a broken stream ending its
allocation; and the core's expiry bookkeeping (``due``) that lets ``expire`` skip allocations."""

from __future__ import annotations

import itertools
import os
import resource
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio

from stun_turn import (
    Attr,
    Class,
    Message,
    Method,
    PeerPolicy,
    TurnCore,
    TurnListener,
    TurnSettings,
    decode,
    encode,
    encode_channel_data,
    long_term_key,
    pack_xor_address,
    stream_frame_length,
)
from tests.test_turn_core import CLIENT, PEER, allocate, challenge, make, request, tid

REALM = "loop"
KEY = long_term_key("bob", REALM, "pw")
_ids = itertools.count(1)


@asynccontextmanager
async def turn_server() -> AsyncIterator[tuple[TurnListener, TurnCore]]:
    listener = TurnListener("127.0.0.1", 0, "127.0.0.1", range(47000, 47999))
    core = TurnCore(
        TurnSettings(realm=REALM, max_allocations_per_user=100, max_allocations_per_device=100),
        secret=b"k" * 32,
        key_for=lambda user, now: KEY if user == "bob" else None,
        open_relay=listener.open_relay,
        peer_allowed=PeerPolicy(allow=["127.0.0.0/8"]).allowed,
        relay_families=listener.relay_families,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.serve, core)
        yield listener, core
        nursery.cancel_scope.cancel()


def stun(method: int, attributes: Sequence[tuple[int, bytes]], nonce: bytes = b"") -> bytes:
    transaction = next(_ids).to_bytes(12, "big")
    attrs = list(attributes)
    if nonce:
        attrs += [(Attr.USERNAME, b"bob"), (Attr.REALM, REALM.encode()), (Attr.NONCE, nonce)]
    message = Message(method, Class.REQUEST, transaction, attrs)
    return encode(message, integrity_key=KEY if nonce else None)


def bind(channel: int, peer: tuple[str, int]) -> list[tuple[int, bytes]]:
    # The transaction id only matters for IPv6 peers; the XOR with the cookie is enough here.
    return [
        (Attr.CHANNEL_NUMBER, struct.pack("!HH", channel, 0)),
        (Attr.XOR_PEER_ADDRESS, pack_xor_address(peer, b"\0" * 12)),
    ]


class Stream:
    """A TURN client over TCP that reads frames off the stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def frame(self) -> bytes:
        with trio.fail_after(5):
            while True:
                size = stream_frame_length(self.buffer)
                if size is not None and len(self.buffer) >= size:
                    frame = bytes(self.buffer[:size])
                    del self.buffer[:size]
                    return frame
                chunk = await self.stream.receive_some(65536)
                assert chunk, "the server closed the connection"
                self.buffer += chunk

    async def call(
        self, method: int, attributes: Sequence[tuple[int, bytes]], nonce: bytes = b""
    ) -> Message:
        await self.stream.send_all(stun(method, attributes, nonce))
        return decode(await self.frame())


async def test_tcp_frames_in_one_segment_and_split_across_segments_all_relay() -> None:
    async with turn_server() as (listener, core):
        peer = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await peer.bind(("127.0.0.1", 0))
        peer_address = peer.getsockname()
        client = Stream(await trio.open_tcp_stream(*listener.address))
        udp = [(Attr.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))]
        nonce = (await client.call(Method.ALLOCATE, udp)).get(Attr.NONCE)
        assert nonce is not None
        assert (await client.call(Method.ALLOCATE, udp, nonce)).cls == Class.SUCCESS
        assert (await client.call(Method.CHANNEL_BIND, bind(0x4001, peer_address), nonce)).cls == (
            Class.SUCCESS
        )
        # 40 ChannelData frames (odd sizes, so padded) in one write, then one frame in two.
        frames = [
            encode_channel_data(0x4001, b"%03d" % i + b"x" * i, stream=True) for i in range(40)
        ]
        await client.stream.send_all(b"".join(frames))
        last = encode_channel_data(0x4001, b"split", stream=True)
        await client.stream.send_all(last[:3])
        await trio.sleep(0.05)
        await client.stream.send_all(last[3:])
        got: list[bytes] = []
        with trio.fail_after(5):
            while len(got) < 41:
                data, relay = await peer.recvfrom(2048)
                got.append(data)
                await peer.sendto(data, relay)  # echo
        assert got == [b"%03d" % i + b"x" * i for i in range(40)] + [b"split"]
        echoed = [await client.frame() for _ in range(41)]
        assert echoed == [*frames, last]
        assert core.stats.packets_to_peers == core.stats.packets_to_clients == 41
        # Garbage on the stream ends the connection, and the allocation with it.
        await client.stream.send_all(b"\xff" * 8)
        with trio.fail_after(5):
            assert await client.stream.receive_some(100) == b""
        await trio.sleep(0.05)
        assert core.allocations == {}
        assert listener._relays == {}
        peer.close()


async def test_one_loop_drains_many_udp_relays() -> None:
    async with turn_server() as (listener, core):
        peer = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await peer.bind(("127.0.0.1", 0))
        peer_address = peer.getsockname()
        clients = []
        for _ in range(30):
            sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            clients.append(sock)

        async def call(sock: trio.socket.SocketType, data: bytes) -> Message:
            await sock.sendto(data, listener.address)
            with trio.fail_after(5):
                return decode((await sock.recvfrom(65536))[0])

        udp = [(Attr.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0])), (Attr.SOFTWARE, b"x" * 64)]
        nonce = (await call(clients[0], stun(Method.ALLOCATE, udp))).get(Attr.NONCE)
        assert nonce is not None
        for sock in clients:
            assert (await call(sock, stun(Method.ALLOCATE, udp, nonce))).cls == Class.SUCCESS
            reply = await call(sock, stun(Method.CHANNEL_BIND, bind(0x4000, peer_address), nonce))
            assert reply.cls == Class.SUCCESS
        assert len(listener._relays) == 30
        for round_ in range(5):  # every client at once, the peer echoes each
            for n, sock in enumerate(clients):
                await sock.sendto(
                    encode_channel_data(0x4000, b"%d:%d" % (n, round_)), listener.address
                )
            seen: set[bytes] = set()
            with trio.fail_after(5):
                while len(seen) < len(clients):
                    data, relay = await peer.recvfrom(2048)
                    seen.add(data)
                    await peer.sendto(data, relay)
            for n, sock in enumerate(clients):
                with trio.fail_after(5):
                    frame = (await sock.recvfrom(2048))[0]
                assert frame == encode_channel_data(0x4000, b"%d:%d" % (n, round_))
        assert core.stats.packets_to_peers == core.stats.packets_to_clients == 150
        for sock in clients:
            sock.close()
        peer.close()


def test_permissions_and_channels_made_after_a_sweep_still_expire() -> None:
    core, _ = make()
    allocate(core)  # at 100, lifetime 600
    assert core.expire(150.0) == []  # the sweep: nothing to look at before 700 now
    nonce = challenge(core, 200.0)
    permit = [(Attr.XOR_PEER_ADDRESS, pack_xor_address(PEER, tid(40)))]
    reply = core.handle_client(
        200.0, CLIENT, request(Method.CREATE_PERMISSION, 40, permit, nonce=nonce)
    )
    assert decode(reply[0].data).cls == Class.SUCCESS  # type: ignore[union-attr]
    allocation = core.allocations[CLIENT]
    core.expire(450.0)
    assert PEER[0] in allocation.permissions
    core.expire(501.0)  # 200 + 300
    assert allocation.permissions == {}
    # A channel bound later expires in its turn (its permission at 300 s, the channel at 600 s).
    nonce = challenge(core, 520.0)
    channel = [
        (Attr.CHANNEL_NUMBER, struct.pack("!HH", 0x4002, 0)),
        (Attr.XOR_PEER_ADDRESS, pack_xor_address(PEER, tid(41))),
    ]
    reply = core.handle_client(
        520.0, CLIENT, request(Method.CHANNEL_BIND, 41, channel, nonce=nonce)
    )
    assert decode(reply[0].data).cls == Class.SUCCESS  # type: ignore[union-attr]
    refresh = [(Attr.LIFETIME, struct.pack("!I", 3600))]
    core.handle_client(520.0, CLIENT, request(Method.REFRESH, 42, refresh, nonce=nonce))
    core.expire(821.0)
    assert allocation.permissions == {}
    assert 0x4002 in allocation.channels
    core.expire(1121.0)
    assert allocation.channels == {}
    assert allocation.channel_of == {}
    # A refresh that shortens the lifetime is honoured by the next sweep.
    core.handle_client(
        1200.0,
        CLIENT,
        request(
            Method.REFRESH,
            43,
            [(Attr.LIFETIME, struct.pack("!I", 600))],
            nonce=challenge(core, 1200.0),
        ),
    )
    assert core.expire(1801.0) != []
    assert core.allocations == {}


async def test_out_of_descriptors_pauses_accepting_instead_of_spinning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with turn_server() as (listener, _):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.dup(0)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no descriptor left
        try:
            client.connect_ex(listener.address)
            await trio.sleep(0.3)
            assert listener._paused
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        paused = [r for r in caplog.records if "accepting TCP connections paused" in r.message]
        assert len(paused) == 1  # not once per round of the loop
        # Watched again at the next tick: the queued connection is accepted and served.
        stream = Stream(trio.SocketStream(trio.socket.from_stdlib_socket(client)))
        with trio.fail_after(5):
            await stream.stream.send_all(encode(Message(Method.BINDING, Class.REQUEST, tid(50))))
            reply = decode(await stream.frame())
        assert reply.cls == Class.SUCCESS
        assert not listener._paused
        await stream.stream.aclose()
