"""The device client library against a real server: map, messages, requests, reconnection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio

from benchmarks._harness import free_port
from relay.client import (
    BUILTIN_ACTIONS,
    Connected,
    Credentials,
    DeviceClient,
    Disconnected,
    Message,
    PresenceChanged,
    RequestAnswered,
)
from tests.clients import RELAXED_LIMITS, device, next_event, sign_in
from tests.servers import running_server


async def credentials(
    http: httpx.AsyncClient, outbox: Path, gateway: str, device_id: str
) -> Credentials:
    user = await sign_in(http, outbox, "owner@example.org", device_body=device(device_id))
    return Credentials(
        api_url=str(http.base_url),
        gateway_url=gateway,
        device_id=device_id,
        network_id=user.session["network_id"],
        access_token=user.session["access_token"],
        refresh_token=user.session["refresh_token"],
    )


async def test_two_clients_talk_and_survive_a_server_restart(data_dir: Path) -> None:
    api_port, gateway_port = free_port(), free_port()
    settings: dict[str, Any] = {
        "limits": RELAXED_LIMITS,
        "api": {"port": api_port},
        "gateway": {"port": gateway_port, "ping_interval_s": 0.5, "ping_timeout_s": 0.5},
    }
    gateway = f"ws://127.0.0.1:{gateway_port}"
    async with trio.open_nursery() as nursery:
        async with running_server(data_dir, **settings) as running:
            async with httpx.AsyncClient(base_url=running.api_url, timeout=30) as http:
                laptop_creds = await credentials(http, data_dir / "outbox", gateway, "laptop")
                phone_creds = await credentials(http, data_dir / "outbox", gateway, "phone")
            laptop = DeviceClient(laptop_creds, backoff_base_s=0.05, backoff_max_s=0.5)
            phone = DeviceClient(
                phone_creds, actions=BUILTIN_ACTIONS, backoff_base_s=0.05, backoff_max_s=0.5
            )
            await nursery.start(laptop.run)
            await laptop.wait_connected()
            await nursery.start(phone.run)
            await phone.wait_connected()
            assert phone.peers["laptop"].online
            online = await next_event(laptop, PresenceChanged)
            assert (online.device.device_id, online.device.online) == ("phone", True)
            assert laptop.peers["phone"].online

            await laptop.send("phone", b"hi there")
            message = await next_event(phone, Message)
            assert (message.from_device, message.data) == ("laptop", b"hi there")

            result = await laptop.request("phone", "echo", {"n": 1})
            assert (result.ok, result.result) == (True, {"n": 1})
            answered = await next_event(phone, RequestAnswered)
            assert answered.action == "echo"
            unknown = await laptop.request("phone", "self-destruct")
            assert (unknown.ok, unknown.error) == (False, "unknown_action")
            assert (await laptop.request("ghost", "echo")).error == "unreachable"

        # The server is gone: both clients notice, then reconnect by themselves when it is back.
        await next_event(laptop, Disconnected)
        async with running_server(data_dir, **settings):
            await next_event(laptop, Connected, timeout_s=15)
            await next_event(phone, Connected, timeout_s=15)
            await laptop.wait_connected()
            assert laptop.connections == 2
            await laptop.send("phone", b"back again")
            assert (await next_event(phone, Message)).data == b"back again"
            nursery.cancel_scope.cancel()


async def test_an_expired_access_token_is_refreshed(data_dir: Path) -> None:
    async with running_server(data_dir, limits=RELAXED_LIMITS) as running:
        async with httpx.AsyncClient(base_url=running.api_url, timeout=30) as http:
            creds = await credentials(http, data_dir / "outbox", running.gateway_url, "sensor")
        saved: list[Credentials] = []
        stale = msgspec.structs.replace(creds, access_token="expired-or-garbage")
        client = DeviceClient(stale, on_credentials=saved.append, backoff_base_s=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            with trio.fail_after(10):
                await client.wait_connected()
            nursery.cancel_scope.cancel()
        assert len(saved) == 1
        assert saved[0].refresh_token != creds.refresh_token
        assert client.credentials.access_token != "expired-or-garbage"
