"""Direct connections between two devices: ICE through Yggdrasil's STUN/TURN, signaled over the
relay; relay-only mode; and the relay itself as the fallback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from relay.client import Credentials, DeviceClient, DirectChannel, accept_direct, connect_direct
from tests.clients import RELAXED_LIMITS, User, device, sign_in
from tests.servers import running_server
from yggdrasil.server import Running


class Pair:
    def __init__(
        self, running: Running, laptop: DeviceClient, phone: DeviceClient, ice: dict[str, Any]
    ) -> None:
        self.running = running
        self.laptop = laptop
        self.phone = phone
        self.ice = ice
        self.accepted: list[DirectChannel] = []
        self.arrived = trio.Event()


@pytest.fixture
async def pair(data_dir: Path, asyncio_loop: None) -> AsyncIterator[Pair]:
    async with (
        running_server(
            data_dir, limits=RELAXED_LIMITS, turn={"allow_peers": ["127.0.0.0/8"]}
        ) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
        trio.open_nursery() as nursery,
    ):
        users: dict[str, User] = {}
        clients = {}
        for name in ("laptop", "phone"):
            users[name] = await sign_in(
                http, data_dir / "outbox", "me@example.org", device_body=device(name)
            )
            session = users[name].session
            clients[name] = DeviceClient(
                Credentials(
                    running.api_url,
                    running.gateway_url,
                    name,
                    session["network_id"],
                    session["access_token"],
                    session["refresh_token"],
                )
            )
            await nursery.start(clients[name].run)
            await clients[name].wait_connected()
        ice = (await users["laptop"].get("/api/v1/devices/laptop/ice-servers")).json()
        phone_ice = (await users["phone"].get("/api/v1/devices/phone/ice-servers")).json()
        result = Pair(running, clients["laptop"], clients["phone"], ice)

        async def servers() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = phone_ice["ice_servers"]
            return found

        async def accepted(channel: DirectChannel) -> None:
            result.accepted.append(channel)
            result.arrived.set()

        accept_direct(clients["phone"], servers, accepted)
        yield result
        nursery.cancel_scope.cancel()


async def exchange(pair: Pair, channel: DirectChannel) -> None:
    with trio.fail_after(10):
        await pair.arrived.wait()
    other = pair.accepted[-1]
    assert other.path == channel.path
    await channel.send(b"hello phone")
    assert await other.receive() == b"hello phone"
    await other.send(b"hello laptop")
    assert await channel.receive() == b"hello laptop"


async def test_devices_connect_directly(pair: Pair) -> None:
    channel = await connect_direct(pair.laptop, "phone", pair.ice["ice_servers"])
    assert channel.path == "direct"
    await exchange(pair, channel)
    await channel.aclose()


async def test_relay_only_mode_goes_through_yggdrasils_turn(pair: Pair) -> None:
    turn = pair.running.services.turn

    def relayed() -> int:
        stats = turn.stats()
        assert stats is not None
        return stats.packets_to_peers

    before = relayed()
    channel = await connect_direct(pair.laptop, "phone", pair.ice["ice_servers"], relay_only=True)
    assert channel.path == "direct"
    await exchange(pair, channel)
    assert relayed() > before  # the bytes passed the TURN relay
    await channel.aclose()


async def test_the_relay_is_the_fallback_when_ice_fails(pair: Pair) -> None:
    nowhere = [{"urls": ["turn:127.0.0.1:9?transport=udp"], "username": "x", "credential": "y"}]
    channel = await connect_direct(pair.laptop, "phone", nowhere, relay_only=True, timeout_s=3)
    assert channel.path == "relay"
    with trio.fail_after(10):
        await pair.arrived.wait()
    await exchange(pair, channel)
