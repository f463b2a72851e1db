"""WebRTC through Yggdrasil: aiortc peers relaying through its TURN server, and a device whose
session runs over a data channel (negotiated through the HTTP API) next to a websocket device."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
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

from relay._webrtc import reachable_candidates
from relay.client import (
    BUILTIN_ACTIONS,
    ClientError,
    Connected,
    Credentials,
    DeliveryFailed,
    DeviceClient,
    Disconnected,
    Message,
    PresenceChanged,
    Replaced,
    SignedOut,
)
from relay.client._webrtc import ice_server_list
from relay.protocol import InvalidOffer, max_message_bytes
from stun_turn import TurnStats
from tests.clients import RELAXED_LIMITS, User, device, next_event, sign_in
from tests.servers import running_server
from yggdrasil.server import Running

pytestmark = pytest.mark.slow

aio = trio_asyncio.aio_as_trio


def turn_stats(running: Running) -> TurnStats:
    assert running.services.metrics.turn is not None
    stats = running.services.metrics.turn()
    assert isinstance(stats, TurnStats)
    return stats


def turn_address(running: Running) -> str:
    host, port = running.services.turn.address
    return f"{host}:{port}"


async def wait_for(condition: Any, timeout_s: float = 10) -> None:
    with trio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110 - server state, polled
            await trio.sleep(0.02)


class Inbox:
    """A data channel's messages, for trio code."""

    def __init__(self, channel: RTCDataChannel) -> None:
        self.opened = trio.Event()
        self.send, self.receive = trio.open_memory_channel[bytes | str](100)
        channel.on("open", self.opened.set)
        channel.on("message", self.send.send_nowait)
        if channel.readyState == "open":
            self.opened.set()


async def test_two_aiortc_peers_restricted_to_relay_talk_through_yggdrasil(
    data_dir: Path, asyncio_loop: None
) -> None:
    async with running_server(
        data_dir, turn={"allow_peers": ["127.0.0.0/8"], "static_users": ["peer:secret"]}
    ) as running:
        servers = [
            RTCIceServer(
                urls=f"turn:{turn_address(running)}?transport=udp",
                username="peer",
                credential="secret",
            )
        ]
        config = RTCConfiguration(
            iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY
        )
        caller, callee = RTCPeerConnection(config), RTCPeerConnection(config)
        try:
            outgoing = caller.createDataChannel("chat")
            calling = Inbox(outgoing)
            incoming: list[tuple[RTCDataChannel, Inbox]] = []
            arrived = trio.Event()

            def on_channel(channel: RTCDataChannel) -> None:
                incoming.append((channel, Inbox(channel)))
                arrived.set()

            callee.on("datachannel", on_channel)
            await aio(caller.setLocalDescription)(await aio(caller.createOffer)())
            offer = caller.localDescription.sdp
            # Relay candidates only: every address a peer offers is one of Yggdrasil's relays.
            candidates = [line for line in offer.splitlines() if line.startswith("a=candidate")]
            assert candidates
            assert all(" typ relay " in line for line in candidates)
            await aio(callee.setRemoteDescription)(RTCSessionDescription(offer, "offer"))
            await aio(callee.setLocalDescription)(await aio(callee.createAnswer)())
            await aio(caller.setRemoteDescription)(callee.localDescription)
            with trio.fail_after(20):
                await calling.opened.wait()
                await arrived.wait()
            answering, answered = incoming[0]
            before = turn_stats(running)
            sent_to_peers, sent_to_clients = before.bytes_to_peers, before.bytes_to_clients

            for index in range(20):
                outgoing.send(f"ping {index}".encode())
            with trio.fail_after(10):
                got = [await answered.receive.receive() for _ in range(20)]
            assert got == [f"ping {index}".encode() for index in range(20)]
            answering.send(b"pong")
            with trio.fail_after(10):
                assert await calling.receive.receive() == b"pong"

            stats = turn_stats(running)
            assert stats.allocations_created >= 2
            # Both directions went out through a relay and came in through the other.
            assert stats.bytes_to_peers > sent_to_peers
            assert stats.bytes_to_clients > sent_to_clients
        finally:
            await aio(caller.close)()
            await aio(callee.close)()


def credentials(running: Running, user: User, device_id: str) -> Credentials:
    session = user.session
    return Credentials(
        running.api_url,
        running.gateway_url,
        device_id,
        session["network_id"],
        session["access_token"],
        session["refresh_token"],
    )


class Home:
    """A server, and one user with a laptop (websocket, connected) and a phone (signed in)."""

    def __init__(
        self, running: Running, http: httpx.AsyncClient, nursery: trio.Nursery, data_dir: Path
    ) -> None:
        self.running = running
        self.http = http
        self.nursery = nursery
        self.data_dir = data_dir
        self.users: dict[str, User] = {}
        self.laptop: DeviceClient
        self.ended: list[tuple[DeviceClient, ClientError]] = []

    async def sign_in(self, name: str) -> User:
        user = await sign_in(
            self.http, self.data_dir / "outbox", "me@example.org", device_body=device(name)
        )
        self.users[name] = user
        return user

    async def phone(self, **options: Any) -> DeviceClient:
        client = DeviceClient(
            credentials(self.running, self.users["phone"], "phone"),
            actions=BUILTIN_ACTIONS,
            backoff_base_s=0.05,
            **{"transport": "webrtc", **options},
        )
        await self.nursery.start(self.keep, client)
        with trio.fail_after(20):
            await client.wait_connected()
        return client

    async def keep(
        self, client: DeviceClient, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run ``client``; how it ended (``SignedOut``, ``Replaced``) goes to ``self.ended``."""
        try:
            await client.run(task_status=task_status)
        except ClientError as exc:
            self.ended.append((client, exc))

    def session(self, device_id: str) -> Any:
        gateway = self.running.services.gateway
        for session in gateway.sessions.values():
            if session.device_id == device_id:
                return session
        return None


@pytest.fixture
async def home(data_dir: Path, asyncio_loop: None) -> AsyncIterator[Home]:
    async with (
        running_server(
            data_dir,
            limits=RELAXED_LIMITS,
            gateway={"ping_interval_s": 0.3, "ping_timeout_s": 2.0},
        ) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
        trio.open_nursery() as nursery,
    ):
        result = Home(running, http, nursery, data_dir)
        laptop = await result.sign_in("laptop")
        await result.sign_in("phone")
        result.laptop = DeviceClient(
            credentials(running, laptop, "laptop"), actions=BUILTIN_ACTIONS
        )
        await nursery.start(result.laptop.run)
        await result.laptop.wait_connected()
        yield result
        nursery.cancel_scope.cancel()


async def test_a_device_session_runs_over_a_data_channel_through_our_turn(home: Home) -> None:
    before = turn_stats(home.running).bytes_to_peers
    phone = await home.phone(relay_only=True)
    connected = await next_event(phone, Connected)
    # aiortc accepts 256 KiB messages; the frame around a payload needs the rest.
    assert connected.welcome.max_data_bytes == 262144 - 4096
    assert {"laptop", "phone"} <= set(phone.peers)

    presence = await next_event(home.laptop, PresenceChanged)
    assert presence.device.device_id == "phone"
    assert presence.device.online

    await home.laptop.send("phone", b"to the phone")
    message = await next_event(phone, Message)
    assert (message.from_device, message.data) == ("laptop", b"to the phone")
    await phone.send("laptop", b"to the laptop")
    message = await next_event(home.laptop, Message)
    assert (message.from_device, message.data) == ("phone", b"to the laptop")
    answer = await phone.request("laptop", "echo", {"n": 1})
    assert answer.ok
    assert answer.result == {"n": 1}
    answer = await home.laptop.request("phone", "whoami")
    assert answer.ok
    assert answer.result == {"asked_by": "laptop"}

    # Several liveness pings (every 0.3 s) are answered; the session stays.
    await trio.sleep(1.5)
    assert phone.connected
    assert phone.connections == 1
    # Relay only: the session's traffic went through Yggdrasil's TURN relays.
    assert turn_stats(home.running).bytes_to_peers > before


async def test_frames_respect_the_smaller_limit_of_a_data_channel(home: Home) -> None:
    phone = await home.phone()
    with pytest.raises(DeliveryFailed, match="too_large"):
        await phone.send("laptop", b"x" * (262144 - 4096 + 1))
    await phone.send("laptop", b"x" * (262144 - 4096))
    message = await next_event(home.laptop, Message)
    assert len(message.data) == 262144 - 4096

    # The laptop's websocket takes 1 MiB; what the phone's channel cannot carry is replaced by
    # an error frame (and counted), the sender learns it did not arrive (it asked for receipts),
    # and the session goes on.
    with pytest.raises(DeliveryFailed, match="too_large"):
        await home.laptop.send("phone", b"y" * 300_000)
    session = home.session("phone")
    await wait_for(lambda: session.stats.too_large == 1)
    await home.laptop.send("phone", b"small")
    message = await next_event(phone, Message)
    assert message.data == b"small"


async def test_revocation_and_replacement_close_a_data_channel_with_their_codes(
    home: Home,
) -> None:
    phone = await home.phone()
    await next_event(phone, Connected)
    # A websocket session of the same device replaces the data channel one: 4000, and the
    # replaced client stops rather than take the session back.
    replacement = await home.phone(transport="websocket")
    gone = await next_event(phone, Disconnected)
    assert (gone.code, gone.reason) == (4000, "replaced by a new session")
    await wait_for(lambda: any(client is phone for client, _ in home.ended))
    assert isinstance(home.ended[0][1], Replaced)

    # And a data channel session replaces a websocket one.
    phone = await home.phone()
    gone = await next_event(replacement, Disconnected)
    assert gone.code == 4000

    # Deleting the device revokes its tokens: 4001 on the data channel too, then signed out.
    owner = await sign_in(home.http, home.data_dir / "outbox", "me@example.org")
    response = await owner.delete("/api/v1/devices/phone")
    assert response.status_code == 204
    gone = await next_event(phone, Disconnected)
    assert gone.code == 4001
    await wait_for(lambda: any(client is phone for client, _ in home.ended))
    assert isinstance(home.ended[-1][1], SignedOut)


async def test_a_vanished_device_leaves_its_network(home: Home) -> None:
    scope = trio.CancelScope()
    home.nursery.start_soon(_hold_phone, home, scope)
    online = await next_event(home.laptop, PresenceChanged)
    assert online.device.online
    await wait_for(lambda: home.session("phone") is not None)
    scope.cancel()  # the app is closed: its peer connection goes
    offline = await next_event(home.laptop, PresenceChanged)
    assert offline.device.device_id == "phone"
    assert not offline.device.online
    await wait_for(lambda: home.session("phone") is None)


async def _hold_phone(home: Home, scope: trio.CancelScope) -> None:
    with scope:
        client = DeviceClient(
            credentials(home.running, home.users["phone"], "phone"), transport="webrtc"
        )
        await client.run()


async def test_the_offer_endpoint_refuses_what_it_cannot_use_and_keeps_nothing(
    home: Home,
) -> None:
    phone = home.users["phone"]
    path = "/api/v1/devices/phone/webrtc"
    ice = (await phone.get("/api/v1/devices/phone/ice-servers")).json()
    pc = RTCPeerConnection(
        RTCConfiguration(
            iceServers=ice_server_list(ice), iceTransportPolicy=RTCIceTransportPolicy.RELAY
        )
    )
    try:
        pc.createDataChannel("yggdrasil")
        await aio(pc.setLocalDescription)(await aio(pc.createOffer)())
        usable = {"type": "offer", "sdp": pc.localDescription.sdp}
    finally:
        await aio(pc.close)()
    # The same offer with its candidates pointed at places the server must not probe.
    lines = usable["sdp"].splitlines()
    template = next(line for line in lines if line.startswith("a=candidate:"))
    address = template.split()[4]
    targets = [template.replace(address, t) for t in ("169.254.169.254", "10.0.0.1", "nas.local")]
    kept = [line for line in lines if not line.startswith("a=candidate:")]
    at = next(i for i, line in enumerate(kept) if line.startswith("a=ice-ufrag"))
    probing = {"type": "offer", "sdp": "\r\n".join(kept[:at] + targets + kept[at:]) + "\r\n"}
    audio_only = RTCPeerConnection()
    try:
        audio_only.addTransceiver("audio")
        await aio(audio_only.setLocalDescription)(await aio(audio_only.createOffer)())
        no_channel = {"type": "offer", "sdp": audio_only.localDescription.sdp}
    finally:
        await aio(audio_only.close)()

    response = await home.http.post(path, json=usable)
    assert response.status_code == 401
    # Only the device itself opens its session: not its owner's user token, not another device.
    owner = await sign_in(home.http, home.data_dir / "outbox", "me@example.org")
    response = await owner.post(path, json=usable)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"
    response = await phone.post("/api/v1/devices/laptop/webrtc", json=usable)
    assert response.status_code == 403
    # Another device's id and a made-up one answer alike: the guard looks at no data.
    response = await phone.post("/api/v1/devices/nobody/webrtc", json=usable)
    assert response.status_code == 403

    for body, code in [
        ({"type": "offer", "sdp": "v=0\r\nthis is not sdp"}, "invalid"),
        (no_channel, "invalid"),
        (probing, "invalid"),
        ({"type": "answer", "sdp": usable["sdp"]}, "validation_error"),
        ({"type": "offer", "sdp": "v=0\r\n" + "a" * 40_000}, "validation_error"),
        ({"type": "offer"}, "validation_error"),
    ]:
        response = await phone.post(path, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code
    response = await phone.post(path, json=probing)
    assert "no candidate the server may reach" in response.json()["error"]["message"]
    gateway = home.running.services.gateway
    # The laptop's session is the account's only one: nothing was reserved, nothing leaked.
    assert gateway._per_user[phone.session["user_id"]] == 1
    assert home.session("phone") is None

    # The same offer from the right device is answered with a data channel of its own.
    response = await phone.post(path, json=usable)
    assert response.status_code == 200
    answer = response.json()
    assert answer["type"] == "answer"
    assert "m=application" in answer["sdp"]


def test_only_candidates_the_server_may_reach_are_kept() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "a=candidate:1 1 udp 100 198.51.100.7 4000 typ relay raddr 0.0.0.0 rport 0",
            "a=candidate:2 1 udp 200 169.254.169.254 80 typ host",
            "a=candidate:3 1 udp 200 2001:db8::1 80 typ host",
            "a=candidate:4 1 udp 200 3a7b-ef.local 5000 typ host",
            "a=candidate:5 1 udp 200 gateway.example.org 5000 typ host",
            "a=candidate:6 broken",
            "a=sctp-port:5000",
            "",
        ]
    )
    kept, left = reachable_candidates(sdp, lambda address: address == "198.51.100.7")
    assert left == 1
    assert [line for line in kept.splitlines() if line.startswith("a=candidate")] == [
        "a=candidate:1 1 udp 100 198.51.100.7 4000 typ relay raddr 0.0.0.0 rport 0"
    ]
    assert "a=sctp-port:5000" in kept
    # The public address of the server's own relays is reached at the address they bind to.
    kept, left = reachable_candidates(
        sdp, lambda address: address == "10.1.2.3", {"198.51.100.7": "10.1.2.3"}
    )
    assert left == 1
    assert "a=candidate:1 1 udp 100 10.1.2.3 4000 typ relay raddr 0.0.0.0 rport 0" in kept


@pytest.mark.parametrize(
    ("line", "expected"),
    [("", 65536), ("a=max-message-size:262144", 262144), ("a=max-message-size:0", 1052672)],
)
def test_the_message_size_a_data_channel_offers(line: str, expected: int) -> None:
    sdp = ["v=0", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=sctp-port:5000", line]
    assert max_message_bytes("\r\n".join([*sdp, ""])) == expected


def test_a_data_channel_too_small_for_the_protocol_is_refused() -> None:
    sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:5000\r\n"
    with pytest.raises(InvalidOffer, match="at least 16384"):
        max_message_bytes(sdp + "a=max-message-size:1000\r\n")
