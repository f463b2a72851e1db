"""The device relay through real websockets: sessions, delivery, requests, presence, isolation."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from relay.protocol import (
    Ack,
    Deliver,
    Error,
    Incoming,
    Nack,
    Ping,
    Pong,
    Presence,
    Reply,
    Request,
    Response,
    Send,
    Signal,
    SignalFrom,
    ThorAction,
    ThorResult,
)
from tests.clients import RELAXED_LIMITS, User, device, sign_in
from tests.devices import close_code, raw_device
from tests.servers import running_server, scrape
from yggdrasil import network_address
from yggdrasil.server import Running


class World:
    def __init__(self, running: Running, http: httpx.AsyncClient, outbox: Path) -> None:
        self.running = running
        self.http = http
        self.outbox = outbox

    @property
    def gateway(self) -> str:
        return self.running.gateway_url

    async def device(self, email: str, device_id: str, **kwargs: str) -> User:
        return await sign_in(self.http, self.outbox, email, device_body=device(device_id), **kwargs)


@pytest.fixture
async def world(data_dir: Path) -> AsyncIterator[World]:
    gateway = {"port": 0, "ping_interval_s": 60.0}
    async with (
        running_server(data_dir, limits=RELAXED_LIMITS, gateway=gateway) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        yield World(running, http, data_dir / "outbox")


async def test_two_devices_see_each_other_and_talk(world: World) -> None:
    a = await world.device("ada@example.org", "laptop")
    b = await world.device("ada@example.org", "phone")
    async with raw_device(world.gateway, a.session["access_token"]) as laptop:
        assert laptop.welcome.device_id == "laptop"
        assert laptop.welcome.network_id == a.session["network_id"]
        states = {d.device_id: d.online for d in laptop.welcome.devices}
        assert states == {"laptop": True, "phone": False}  # the map as of the join
        async with raw_device(world.gateway, b.session["access_token"]) as phone:
            assert {d.device_id: d.online for d in phone.welcome.devices}["laptop"] is True
            joined = await laptop.receive_type(Presence)
            assert (joined.device.device_id, joined.device.online) == ("phone", True)
            # The phone's map is as of its own join: the serial the laptop's delta carries.
            assert joined.serial == phone.welcome.serial == laptop.welcome.serial + 1
            assert {d.device_id: d.online for d in phone.welcome.devices}["phone"] is True

            await laptop.send(Send(id=1, to="phone", data=b"hello phone"))
            assert await laptop.receive_type(Ack) == Ack(id=1)
            delivered = await phone.receive_type(Deliver)
            assert (delivered.from_, delivered.data) == ("laptop", b"hello phone")

            # A ThorAction from the laptop, executed by the phone, the ThorResult back.
            await laptop.send(
                Request(id=7, to="phone", action=ThorAction("lights.on", {"room": "k"}))
            )
            incoming = await phone.receive_type(Incoming)
            assert (incoming.from_, incoming.action.action, incoming.action.params) == (
                "laptop",
                "lights.on",
                {"room": "k"},
            )
            await phone.send(Reply(id=incoming.id, result=ThorResult(ok=True, result={"on": True})))
            response = await laptop.receive_type(Response)
            assert response == Response(id=7, result=ThorResult(ok=True, result={"on": True}))

            await laptop.send(Signal(id=2, to="phone", kind="offer", payload=b"v=0"))
            assert await laptop.receive_type(Ack) == Ack(id=2)
            signal = await phone.receive_type(SignalFrom)
            assert (signal.from_, signal.kind, signal.payload) == ("laptop", "offer", b"v=0")

            await laptop.send(Ping(nonce=42))
            assert await laptop.receive_type(Pong) == Pong(nonce=42)
        left = await laptop.receive_type(Presence)
        assert (left.device.device_id, left.device.online) == ("phone", False)
        assert left.serial == joined.serial + 1
    # The registry is written in batches, a moment after the change.
    with trio.fail_after(5):
        while True:
            listed = (await a.get("/api/v1/devices")).json()["items"]
            statuses = {d["device_id"]: d["status"] for d in listed}
            seen = all(d["last_seen"] for d in listed)
            if seen and statuses == {"laptop": "offline", "phone": "offline"}:
                break
            await trio.sleep(0.05)


async def test_other_networks_are_unreachable_and_indistinguishable(world: World) -> None:
    alice = await world.device("alice@example.org", "laptop")
    await world.device("alice@example.org", "secret-server")
    mallory = await world.device("mallory@example.org", "probe")
    async with (
        raw_device(world.gateway, alice.session["access_token"]),
        raw_device(world.gateway, mallory.session["access_token"]) as probe,
    ):
        assert [d.device_id for d in probe.welcome.devices] == ["probe"]
        answers = []
        for i, target in enumerate(["laptop", "secret-server", "does-not-exist", "a/b", ""]):
            await probe.send(Send(id=i, to=target, data=b"x"))
            answers.append(await probe.receive_type(Nack))
        assert {a.reason for a in answers} == {"unreachable"}
        await probe.send(Request(id=99, to="laptop", action=ThorAction("x")))
        response = await probe.receive_type(Response)
        assert response.result == ThorResult(ok=False, error="unreachable")


async def test_the_sender_is_stamped_by_the_server(world: World) -> None:
    a = await world.device("stamp@example.org", "honest")
    b = await world.device("stamp@example.org", "target")
    async with (
        raw_device(world.gateway, a.session["access_token"]) as honest,
        raw_device(world.gateway, b.session["access_token"]) as target,
    ):
        # A frame that claims another sender is not even decodable as a device frame.
        import msgspec

        forged = msgspec.msgpack.encode(
            {"t": "send", "id": 1, "to": "target", "data": b"x", "from": "admin"}
        )
        await honest.ws.send_message(forged)
        reply = await honest.receive_type((Ack, Error))
        if isinstance(reply, Ack):
            delivered = await target.receive_type(Deliver)
            assert delivered.from_ == "honest"
        else:
            assert isinstance(reply, Error)


async def test_handshake_refuses_bad_tokens_before_the_upgrade(world: World) -> None:
    user = await sign_in(world.http, world.outbox, "plain@example.org")  # no device: user token
    for headers, status in (
        ([], 401),
        ([(b"authorization", b"Bearer nonsense")], 401),
        ([(b"authorization", f"Bearer {user.session['access_token']}".encode())], 403),
        ([(b"authorization", b"Bearer x"), (b"origin", b"https://evil.example")], 403),
    ):
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(world.gateway, extra_headers=headers):
                pass
        assert info.value.status_code == status


async def test_garbage_gets_a_protocol_error_and_a_close(world: World) -> None:
    a = await world.device("garbage@example.org", "g")
    for payload in (b"\xc1", b"not msgpack at all", "text frame"):
        async with raw_device(world.gateway, a.session["access_token"]) as g:
            await g.ws.send_message(payload)
            error = await g.receive_type(Error)
            assert error.code == "protocol_error"
            assert await close_code(g.ws) == 1002


async def test_first_frame_must_be_hello(world: World) -> None:
    a = await world.device("hello@example.org", "h")
    async with raw_device(world.gateway, a.session["access_token"], hello=False) as h:
        await h.send(Send(id=1, to="x", data=b""))
        error = await h.receive_type(Error)
        assert error.code == "protocol_error"


async def test_oversized_messages_close_with_1009_and_large_data_is_nacked(world: World) -> None:
    a = await world.device("big@example.org", "big")
    async with raw_device(world.gateway, a.session["access_token"]) as big:
        await big.send(Send(id=1, to="big", data=b"x" * (1024 * 1024 + 1)))
        nack = await big.receive_type(Nack)
        assert nack == Nack(id=1, reason="too_large")
        # The server closes while the message is still arriving, or right after it.
        with contextlib.suppress(ConnectionClosed):
            await big.ws.send_message(b"\x00" * (3 * 1024 * 1024))
        assert await close_code(big.ws) == 1009


async def test_a_new_session_replaces_the_old_one(world: World) -> None:
    a = await world.device("twice@example.org", "dup")
    async with (
        raw_device(world.gateway, a.session["access_token"]) as first,
        raw_device(world.gateway, a.session["access_token"]) as second,
    ):
        assert await close_code(first.ws) == 4000
        await second.send(Send(id=1, to="dup", data=b"me"))
        assert await second.receive_type(Ack) == Ack(id=1)


async def test_deleting_the_device_closes_its_session_within_seconds(world: World) -> None:
    owner = await sign_in(world.http, world.outbox, "del@example.org")
    gadget = await world.device("del@example.org", "gadget")
    async with raw_device(world.gateway, gadget.session["access_token"]) as session:
        assert (await owner.delete("/api/v1/devices/gadget")).status_code == 204
        assert await close_code(session.ws) == 4001


async def test_server_shutdown_closes_sessions_with_going_away(data_dir: Path) -> None:
    codes: list[int] = []

    async def hold(url: str, token: str, connected: trio.Event) -> None:
        async with raw_device(url, token) as session:
            connected.set()
            codes.append(await close_code(session.ws, timeout_s=30))

    async with (
        trio.open_nursery() as outer,
        running_server(data_dir, limits=RELAXED_LIMITS, gateway={"port": 0}) as running,
    ):
        async with httpx.AsyncClient(base_url=running.api_url, timeout=30) as http:
            dev = await sign_in(
                http, data_dir / "outbox", "bye@example.org", device_body=device("d")
            )
        connected = trio.Event()
        outer.start_soon(hold, running.gateway_url, dev.session["access_token"], connected)
        await connected.wait()
        # Leaving the block stops the server gracefully; the device sees why.
    assert codes == [1001]


async def test_a_device_that_never_says_hello_is_closed(data_dir: Path) -> None:
    async with (
        running_server(
            data_dir, limits=RELAXED_LIMITS, gateway={"hello_timeout_s": 0.3}
        ) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        dev = await sign_in(http, data_dir / "outbox", "mute@example.org", device_body=device("m"))
        async with raw_device(
            running.gateway_url, dev.session["access_token"], hello=False
        ) as mute:
            assert await close_code(mute.ws) == 1002


async def test_logout_closes_the_devices_session(world: World) -> None:
    gadget = await world.device("bye2@example.org", "gadget")
    async with raw_device(world.gateway, gadget.session["access_token"]) as session:
        assert (await gadget.post("/api/v1/auth/logout")).status_code == 204
        assert await close_code(session.ws) == 4001


async def test_network_actors_start_on_first_use_and_stop_when_idle(data_dir: Path) -> None:
    gateway = {"network_idle_s": 0.3}
    async with (
        running_server(data_dir, limits=RELAXED_LIMITS, gateway=gateway) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        dev = await sign_in(http, data_dir / "outbox", "idle@example.org", device_body=device("i"))
        router = running.services.router
        network = network_address(dev.session["network_id"])
        assert not router.is_local(network)
        async with raw_device(running.gateway_url, dev.session["access_token"]):
            assert router.is_local(network)  # started by the session's join
        with trio.fail_after(5):
            while router.is_local(network):  # noqa: ASYNC110 - the actor stops on its own timer
                await trio.sleep(0.05)
        assert router.statistics().activated == 1
        metrics = await scrape(running)
        assert "yggdrasil_gateway_sessions_accepted_total 1.0" in metrics
