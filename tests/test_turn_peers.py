"""The TURN deny list against a running server: a device with real credentials asks for
permissions towards addresses the IANA registries mark as not globally reachable, in every form
that embeds them, and is refused each time. Only permissions are asked for: no packet is ever sent
to a refused address (a CreatePermission sends nothing to the peer)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path

import httpx
import trio

from stun_turn import (
    Attr,
    Class,
    Message,
    Method,
    decode,
    encode,
    long_term_key,
    pack_xor_address,
    unpack_error_code,
)
from tests.clients import RELAXED_LIMITS, device, sign_in
from tests.servers import running_server, scrape

REFUSED = [
    "192.0.0.100",  # IETF protocol assignments: relayed before this list was data
    "192.0.0.9",  # globally reachable anycast, refused with its block
    "198.18.0.1",  # benchmarking
    "100.64.0.1",  # shared address space
    "240.0.0.1",  # reserved
    "169.254.169.254",  # cloud metadata
    "168.63.129.16",  # Azure's platform address
    "::ffff:192.0.0.100",  # IPv4-mapped
    "64:ff9b::c000:64",  # NAT64 of 192.0.0.100
    "2002:c000:0064::1",  # 6to4 of 192.0.0.100
    "::c000:64",  # IPv4-compatible
]
_ids = itertools.count(1)


class TurnClient:
    """Just enough of a TURN client over UDP: allocate, then ask for permissions."""

    def __init__(self, sock: trio.socket.SocketType, server: tuple[str, int]) -> None:
        self.sock = sock
        self.server = server
        self.user = ""
        self.key = b""
        self.realm = b""
        self.nonce = b""

    async def call(
        self, method: int, attributes: Sequence[tuple[int, bytes]], transaction: bytes | None = None
    ) -> Message:
        transaction = transaction or next(_ids).to_bytes(12, "big")
        attrs = list(attributes)
        if self.nonce:
            attrs += [
                (Attr.USERNAME, self.user.encode()),
                (Attr.REALM, self.realm),
                (Attr.NONCE, self.nonce),
            ]
        data = encode(
            Message(method, Class.REQUEST, transaction, attrs),
            integrity_key=self.key if self.nonce else None,
        )
        await self.sock.sendto(data, self.server)
        with trio.fail_after(5):
            while True:
                reply = decode((await self.sock.recvfrom(65536))[0])
                if reply.transaction_id == transaction:
                    return reply

    async def allocate(self, user: str, password: str) -> None:
        udp = [(Attr.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0])), (Attr.SOFTWARE, b"x" * 64)]
        challenge = await self.call(Method.ALLOCATE, udp)
        realm, nonce = challenge.get(Attr.REALM), challenge.get(Attr.NONCE)
        assert realm is not None
        assert nonce is not None
        self.user, self.realm, self.nonce = user, realm, nonce
        self.key = long_term_key(user, realm.decode(), password)
        allocated = await self.call(Method.ALLOCATE, udp)
        assert allocated.cls == Class.SUCCESS, allocated

    async def permit(self, peer: str) -> int:
        transaction = next(_ids).to_bytes(12, "big")  # IPv6 addresses are XORed with it
        attribute = pack_xor_address((peer, 9), transaction)
        reply = await self.call(
            Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, attribute)], transaction
        )
        if reply.cls == Class.SUCCESS:
            return 200
        value = reply.get(Attr.ERROR_CODE)
        assert value is not None
        return unpack_error_code(value)[0]


async def test_a_device_cannot_open_its_relay_towards_special_addresses(data_dir: Path) -> None:
    async with (
        running_server(data_dir, limits=RELAXED_LIMITS) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        camera = await sign_in(
            http, data_dir / "outbox", "peers@example.org", device_body=device("cam")
        )
        servers = (await camera.get("/api/v1/devices/cam/ice-servers")).json()["ice_servers"]
        turn = next(s for s in servers if any(u.startswith("turn:") for u in s["urls"]))
        turn_service = running.services.turn
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.1", 0))
            client = TurnClient(sock, ("127.0.0.1", turn_service.address[1]))
            await client.allocate(turn["username"], turn["credential"])
            answers = {peer: await client.permit(peer) for peer in REFUSED}
            assert answers == dict.fromkeys(REFUSED, 403)
            # The same relay may reach a public address (a permission sends nothing to it).
            assert await client.permit("8.8.8.8") == 200
        metrics = await scrape(running)
        refused = re.search(r"yggdrasil_turn_refused_peers_total (\d+)", metrics)
        assert refused is not None
        assert int(refused.group(1)) >= len(REFUSED)
