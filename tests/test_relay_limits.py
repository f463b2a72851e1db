"""Every limit of the relay, pushed until it holds: queues, rates, quotas, caps, pings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import wsproto
from trio_websocket import ConnectionRejected
from wsproto.events import AcceptConnection, BytesMessage
from wsproto.events import Request as WsRequest

from relay.protocol import Ack, Deliver, Hello, Nack, Send, encode
from tests.clients import RELAXED_LIMITS, User, device, sign_in
from tests.devices import close_code, raw_device
from tests.servers import running_server, scrape


@asynccontextmanager
async def server(data_dir: Path, **gateway: Any) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    settings = {**gateway}
    async with (
        running_server(data_dir, limits=RELAXED_LIMITS, gateway=settings) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        yield running.gateway_url, http


async def devices(http: httpx.AsyncClient, outbox: Path, *names: str) -> list[User]:
    return [
        await sign_in(http, outbox, "limits@example.org", device_body=device(name))
        for name in names
    ]


async def test_a_slow_reader_is_throttled_then_disconnected(data_dir: Path) -> None:
    async with server(data_dir, queue_size=4, send_timeout_s=0.5) as (gateway, http):
        fast, slow = await devices(http, data_dir / "outbox", "fast", "slow")
        async with (
            raw_device(gateway, fast.session["access_token"]) as sender,
            raw_device(gateway, slow.session["access_token"]) as sleeper,
        ):
            # The slow device never reads. The sender floods it with 64 KiB messages.
            reasons: list[str] = []
            block = b"x" * 65536
            with trio.fail_after(30):
                for i in range(100_000):
                    await sender.send(Send(id=i, to="slow", data=block))
                    answer = await sender.receive_type((Ack, Nack))
                    if isinstance(answer, Nack):
                        reasons.append(answer.reason)
                        if answer.reason == "unreachable":
                            break  # the slow device has been disconnected
                        await trio.sleep(0.005)  # let the writer fill the socket's buffers
            assert "overloaded" in reasons  # throttled first: the queue is bounded
            assert reasons[-1] == "unreachable"  # then cut off
            # 4002 if the close frame still fits into the full socket, else the connection drops.
            assert await close_code(sleeper.ws, timeout_s=15) in (4002, 1006)


async def test_per_session_rate_limit(data_dir: Path) -> None:
    """Past its burst, a device is paced at its rate: the server reads its next frame only when
    the budget allows it, so a sender that waits for its answers is slowed, not refused."""
    async with server(data_dir, messages_per_s=5.0) as (gateway, http):
        (only,) = await devices(http, data_dir / "outbox", "chatty")
        async with raw_device(gateway, only.session["access_token"]) as chatty:
            answers = []
            started = trio.current_time()
            for i in range(15):
                await chatty.send(Send(id=i, to="chatty", data=b"."))
                answers.append(await chatty.receive_type((Ack, Nack)))
            elapsed = trio.current_time() - started
            assert answers == [Ack(id=i) for i in range(15)]
            assert elapsed >= 5 / 5.0 - 0.05  # the burst of 10, then 5 at 5 per second
            # Frames sent without waiting for answers are read at the same pace: all get through.
            for i in range(15, 18):
                await chatty.send(Send(id=i, to="chatty", data=b"."))
            late = [await chatty.receive_type((Ack, Nack)) for _ in range(3)]
            assert all(isinstance(a, Ack) for a in late)


async def test_per_network_quota(data_dir: Path) -> None:
    async with server(data_dir, tenant_messages_per_s=3.0) as (gateway, http):
        a, b = await devices(http, data_dir / "outbox", "a", "b")
        async with (
            raw_device(gateway, a.session["access_token"]) as first,
            raw_device(gateway, b.session["access_token"]) as second,
        ):
            answers = []
            for i in range(4):
                for sender in (first, second):
                    await sender.send(Send(id=i, to="a", data=b"."))
                    answers.append(await sender.receive_type((Ack, Nack)))
            assert {a.reason for a in answers if isinstance(a, Nack)} == {"quota"}
            # The burst of 3 is shared by the whole network: the fourth frame, whoever sends
            # it, is refused (a refused sender then waits for the quota to refill).
            assert [isinstance(a, Ack) for a in answers[:4]] == [True, True, True, False]


async def test_sessions_per_account_are_capped(data_dir: Path) -> None:
    async with server(data_dir, max_sessions_per_user=2) as (gateway, http):
        users = await devices(http, data_dir / "outbox", "one", "two", "three")
        async with (
            raw_device(gateway, users[0].session["access_token"]),
            raw_device(gateway, users[1].session["access_token"]),
        ):
            with pytest.raises(ConnectionRejected) as info:
                async with raw_device(gateway, users[2].session["access_token"]):
                    pass
            assert info.value.status_code == 429
        # Once the others are gone, the third one gets in.
        async with raw_device(gateway, users[2].session["access_token"]) as third:
            assert third.welcome.device_id == "three"


async def test_a_silent_device_is_dropped_after_the_ping_timeout(data_dir: Path) -> None:
    """A device that completes the handshake and then answers nothing, not even pings."""
    async with server(data_dir, ping_interval_s=0.2, ping_timeout_s=0.3, hello_timeout_s=30) as (
        gateway,
        http,
    ):
        (silent,) = await devices(http, data_dir / "outbox", "silent")
        host, port = gateway.removeprefix("ws://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        handshake = WsRequest(
            host=host,
            target="/",
            extra_headers=[(b"authorization", f"Bearer {silent.session['access_token']}".encode())],
        )
        await stream.send_all(connection.send(handshake))
        with trio.fail_after(5):
            while True:
                connection.receive_data(await stream.receive_some(65536))
                if any(isinstance(e, AcceptConnection) for e in connection.events()):
                    break
        await stream.send_all(connection.send(BytesMessage(data=encode(Hello()))))
        # From now on we read the socket but never answer: no pong goes back.
        closed = False
        with trio.fail_after(5):
            while not closed:
                data = await stream.receive_some(65536)
                if not data:
                    break
                connection.receive_data(data)
                for event in connection.events():
                    if isinstance(event, wsproto.events.CloseConnection):
                        assert event.code == 4003
                        closed = True
        assert closed
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()


async def test_slow_readers_are_bounded_in_bytes_and_the_furthest_behind_is_shed(
    data_dir: Path,
) -> None:
    """Four devices stop reading while a healthy pair keeps talking: each stalled queue stays
    within its byte bound, all of them within the instance's, and when that fills, the device
    furthest behind is cut (4002) - never the healthy pair, whose every message arrives."""
    # Each stalled queue holds three 64 KiB messages at most; four of them do not fit in total.
    per_session, total = 256 * 1024, 700 * 1024
    gateway_settings = {
        "queue_size": 100_000,  # only bytes bound the queues here
        "queue_bytes": per_session,
        "queue_bytes_total": total,
        "send_timeout_s": 60.0,  # so that shedding, not the timeout, cuts the slow ones
        "messages_per_s": 100_000.0,
        "tenant_messages_per_s": 100_000.0,
        "tenant_bytes_per_s": 1e10,
    }
    async with (
        running_server(
            data_dir,
            limits=RELAXED_LIMITS,
            gateway=gateway_settings,
            auth={"codes_per_address": 10},
        ) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        gateway = running.services.gateway
        names = ["flooder", "slow0", "slow1", "slow2", "slow3", "a", "b"]
        users = dict(zip(names, await devices(http, data_dir / "outbox", *names), strict=True))
        async with contextlib.AsyncExitStack() as stack:
            connected = {
                name: await stack.enter_async_context(
                    raw_device(running.gateway_url, users[name].session["access_token"])
                )
                for name in names
            }
            flooder, a, b = connected["flooder"], connected["a"], connected["b"]
            block = b"x" * 65536
            sent = 0
            peak = 0
            delivered = 0
            outcome: dict[str, str] = {}
            slows = ("slow0", "slow1", "slow2", "slow3")
            with trio.fail_after(60):
                # Fill each stalled device in turn until the server refuses more for it (first
                # its socket buffers fill, then its queue); the healthy pair talks throughout.
                for slow in slows:
                    while slow not in outcome:
                        await flooder.send(Send(id=sent, to=slow, data=block))
                        sent += 1
                        answer = await flooder.receive_type((Ack, Nack))
                        if isinstance(answer, Nack):
                            outcome[slow] = answer.reason
                        peak = max(peak, gateway.queued.used)
                        await a.send(Send(id=sent, to="b", data=b"hello"))
                        assert isinstance(await a.receive_type((Ack, Nack)), Ack)
                        assert (await b.receive_type(Deliver)).data == b"hello"
                        delivered += 1
                # Who is still there: the one shed to make room is unreachable now.
                for slow in slows:
                    await flooder.send(Send(id=sent, to=slow, data=b"?"))
                    sent += 1
                    answer = await flooder.receive_type((Ack, Nack))
                    if isinstance(answer, Nack) and answer.reason == "unreachable":
                        outcome[slow] = "unreachable"
            shed = [slow for slow, reason in outcome.items() if reason == "unreachable"]
            assert len(shed) == 1  # the furthest behind, and only it
            # Throttled first: the stalled devices were refused at their own bound.
            assert "overloaded" in outcome.values()
            assert gateway.queued.shed == 1
            metrics = await scrape(running)
            assert "yggdrasil_gateway_sessions_shed_total 1.0" in metrics
            assert peak <= total
            for session in gateway.sessions.values():
                assert session.mailbox.queued_bytes <= per_session
            assert delivered > 0
            assert await close_code(connected[shed[0]].ws, timeout_s=15) in (4002, 1006)
