"""Batched acknowledgements (``hello`` with ``acks: batch``) through real websockets: every id
acknowledged exactly once in ``acks`` frames, ``nack`` frames still one per refusal, the default
unchanged, the device client using them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from relay.client import Credentials, DeviceClient
from relay.protocol import (
    Ack,
    Acks,
    Deliver,
    Hello,
    Nack,
    ProtocolError,
    Received,
    Send,
    Signal,
    decode_client_frame,
    decode_server_frame,
    encode,
)
from tests.clients import RELAXED_LIMITS, User, device, sign_in
from tests.devices import RawDevice, raw_device
from tests.servers import running_server
from yggdrasil.server import Running

FAST = {
    "ping_interval_s": 60.0,
    "messages_per_s": 100_000.0,
    "tenant_messages_per_s": 100_000.0,
    "tenant_bytes_per_s": 1e10,
    "queue_size": 1000,
}


@asynccontextmanager
async def server(data_dir: Path, **gateway: Any) -> AsyncIterator[tuple[Running, list[User]]]:
    async with (
        running_server(data_dir, limits=RELAXED_LIMITS, gateway={**FAST, **gateway}) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        users = [
            await sign_in(http, data_dir / "outbox", "acks@example.org", device_body=device(name))
            for name in ("a", "b")
        ]
        yield running, users


async def answers(sender: RawDevice, count: int) -> tuple[list[Acks], list[Ack], list[Nack]]:
    """Read the sender's frames until ``count`` ids are answered (acks, ack or nack)."""
    batches: list[Acks] = []
    singles: list[Ack] = []
    nacks: list[Nack] = []
    seen = 0
    while seen < count:
        frame = await sender.receive_type((Acks, Ack, Nack), timeout_s=10)
        if isinstance(frame, Acks):
            batches.append(frame)
            seen += len(frame.ids)
        elif isinstance(frame, Ack):
            singles.append(frame)
            seen += 1
        else:
            nacks.append(frame)
            seen += 1
    return batches, singles, nacks


async def drain(receiver: RawDevice, count: int, *, confirm: bool = False) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count:
        frame = await receiver.receive_type(Deliver, timeout_s=10)
        got.append(frame.data)
        if confirm and (len(got) % 50 == 0 or len(got) == count):
            await receiver.send(Received(upto=frame.seq))  # cumulative, as a device does
    return got


def test_the_frames_decode() -> None:
    assert decode_client_frame(encode(Hello())) == Hello(acks="each")
    assert decode_client_frame(encode(Hello(acks="batch"))).acks == "batch"  # type: ignore[union-attr]
    raw = msgspec.msgpack.encode({"t": "hello", "v": 1, "acks": "batch"})
    assert decode_client_frame(raw) == Hello(acks="batch")
    with pytest.raises(ProtocolError):
        decode_client_frame(msgspec.msgpack.encode({"t": "hello", "v": 1, "acks": "some"}))
    raw = msgspec.msgpack.encode({"t": "acks", "ids": [3, 1, 2]})
    assert decode_server_frame(raw) == Acks(ids=[3, 1, 2])
    assert decode_server_frame(encode(Acks(ids=[7]))) == Acks(ids=[7])
    with pytest.raises(ProtocolError):
        decode_server_frame(msgspec.msgpack.encode({"t": "acks", "ids": ["1"]}))
    with pytest.raises(ProtocolError):  # a device never sends acks
        decode_client_frame(encode(Acks(ids=[1])))


@pytest.mark.parametrize("receipts", [False, True], ids=["queued", "receipts"])
async def test_a_burst_of_500_sends_is_acked_in_batches_each_id_once(
    data_dir: Path, receipts: bool
) -> None:
    async with (
        server(data_dir) as (running, (a, b)),
        raw_device(
            running.gateway_url, a.session["access_token"], receipts=receipts, acks="batch"
        ) as sender,
        raw_device(running.gateway_url, b.session["access_token"], receipts=receipts) as receiver,
    ):
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def receive() -> None:
                got.extend(await drain(receiver, 500, confirm=receipts))

            nursery.start_soon(receive)
            for i in range(1, 501):
                await sender.send(Send(id=i, to="b", data=i.to_bytes(2, "big")))
            batches, singles, nacks = await answers(sender, 500)
        ids = [i for batch in batches for i in batch.ids]
        assert sorted(ids) == list(range(1, 501))  # every id, each once
        assert singles == []
        assert nacks == []
        assert len(batches) < 500  # batched: fewer frames than sends
        assert sorted(got) == [i.to_bytes(2, "big") for i in range(1, 501)]
        # Nothing more comes for these ids.
        with trio.move_on_after(0.3):
            extra = await sender.receive_type((Acks, Ack, Nack), timeout_s=1)
            pytest.fail(f"unexpected {extra!r}")


async def test_with_receipts_an_id_is_acked_only_once_its_recipient_confirmed(
    data_dir: Path,
) -> None:
    async with (
        server(data_dir) as (running, (a, b)),
        raw_device(
            running.gateway_url, a.session["access_token"], receipts=True, acks="batch"
        ) as s,
        raw_device(running.gateway_url, b.session["access_token"], receipts=True) as receiver,
    ):
        for i in range(1, 21):
            await s.send(Send(id=i, to="b", data=b"x"))
        delivered = [await receiver.receive_type(Deliver) for _ in range(20)]
        with trio.move_on_after(0.5) as waited:  # nothing confirmed yet: no acks
            await s.receive_type((Acks, Ack, Nack), timeout_s=1)
        assert waited.cancelled_caught
        await receiver.send(Received(upto=delivered[9].seq))
        first, _, _ = await answers(s, 10)
        assert sorted(i for batch in first for i in batch.ids) == list(range(1, 11))
        await receiver.send(Received(upto=delivered[-1].seq))
        rest, _, _ = await answers(s, 10)
        assert sorted(i for batch in rest for i in batch.ids) == list(range(11, 21))


async def test_nacks_stay_single_frames_with_their_reason(data_dir: Path) -> None:
    async with (
        server(data_dir, max_data_bytes=1024) as (running, (a, b)),
        raw_device(running.gateway_url, a.session["access_token"], acks="batch") as sender,
        raw_device(running.gateway_url, b.session["access_token"]) as receiver,
    ):
        expected: dict[int, str] = {}
        for i in range(1, 101):
            if i % 10 == 0:
                frame = Send(id=i, to="nobody", data=b"x")
                expected[i] = "unreachable"
            elif i % 7 == 0:
                frame = Send(id=i, to="b", data=b"x" * 2000)
                expected[i] = "too_large"
            else:
                frame = Send(id=i, to="b", data=b"x")
            await sender.send(frame)
        await sender.send(Signal(id=101, to="b", kind="offer", payload=b"v=0"))
        batches, singles, nacks = await answers(sender, 101)
        assert singles == []
        assert {n.id: n.reason for n in nacks} == expected
        assert len(nacks) == len(expected)  # one frame each
        acked = sorted(i for batch in batches for i in batch.ids)
        assert acked == sorted(set(range(1, 102)) - set(expected))
        assert len(await drain(receiver, 101 - len(expected) - 1)) == 100 - len(expected)


async def test_a_rate_limited_send_is_nacked_on_its_own(data_dir: Path) -> None:
    # A burst of one, and a reader paused at most a second: the second send finds no budget.
    async with (
        server(data_dir, messages_per_s=0.5) as (running, (a, _)),
        raw_device(running.gateway_url, a.session["access_token"], acks="batch") as sender,
    ):
        await sender.send(Send(id=1, to="a", data=b"x"))  # to itself
        await sender.send(Send(id=2, to="a", data=b"x"))
        batches, singles, nacks = await answers(sender, 2)
        assert batches == [Acks(ids=[1])]
        assert singles == []
        assert nacks == [Nack(id=2, reason="rate_limited")]


async def test_without_the_option_every_send_gets_its_own_ack(data_dir: Path) -> None:
    async with (
        server(data_dir) as (running, (a, b)),
        raw_device(running.gateway_url, a.session["access_token"]) as sender,
        raw_device(running.gateway_url, b.session["access_token"]) as receiver,
    ):
        for i in range(1, 101):
            await sender.send(Send(id=i, to="b", data=b"x"))
        batches, singles, nacks = await answers(sender, 100)
        assert batches == []
        assert nacks == []
        assert sorted(s.id for s in singles) == list(range(1, 101))
        assert len(await drain(receiver, 100)) == 100


async def test_the_device_client_asks_for_batched_acks(data_dir: Path) -> None:
    async with server(data_dir) as (running, (a, b)):
        one, two = DeviceClient(_credentials(running, a)), DeviceClient(_credentials(running, b))
        async with trio.open_nursery() as nursery:
            await nursery.start(one.run)
            await nursery.start(two.run)
            with trio.fail_after(10):
                await one.wait_connected()
                await two.wait_connected()
            inbox = two.open_inbox("a", capacity=1000)
            sessions = running.services.gateway.sessions.values()
            assert {s.device_id: s.batch_acks for s in sessions} == {"a": True, "b": True}
            with trio.fail_after(20):
                async with trio.open_nursery() as senders:
                    for i in range(200):
                        senders.start_soon(one.send, "b", i.to_bytes(2, "big"))
                got = [await inbox.receive() for _ in range(200)]
            assert sorted(got) == [i.to_bytes(2, "big") for i in range(200)]
            nursery.cancel_scope.cancel()


def _credentials(running: Running, user: User) -> Credentials:
    return Credentials(
        api_url=running.api_url,
        gateway_url=running.gateway_url,
        device_id=user.session["device_id"],
        network_id=user.session["network_id"],
        access_token=user.session["access_token"],
        refresh_token=user.session["refresh_token"],
    )


async def test_with_small_queues_every_id_is_answered_once_ack_or_nack(data_dir: Path) -> None:
    """Queues of 8 frames: the recipient's refuses (``overloaded``) and the sender's ids wait
    for room; still every id of a burst gets exactly one answer."""
    async with (
        server(data_dir, queue_size=8) as (running, (a, b)),
        raw_device(running.gateway_url, a.session["access_token"], acks="batch") as sender,
        raw_device(running.gateway_url, b.session["access_token"]) as receiver,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _read_all(receiver))
            for i in range(1, 501):
                await sender.send(Send(id=i, to="b", data=b"x" * 64))
            batches, singles, nacks = await answers(sender, 500)
            nursery.cancel_scope.cancel()
        acked = [i for batch in batches for i in batch.ids]
        assert singles == []
        assert {n.reason for n in nacks} <= {"overloaded"}
        assert sorted(acked + [n.id for n in nacks]) == list(range(1, 501))
        assert all(len(batch.ids) <= 8 for batch in batches)  # a mailbox's worth at most


async def _read_all(device: RawDevice) -> None:
    while True:
        await device.receive(timeout_s=30)


async def test_a_stalled_writer_stops_the_reader_at_a_mailbox_worth_of_acks(
    data_dir: Path,
) -> None:
    """The sender stops reading its socket while big messages come to it: its session's writer
    stalls, and the ids of what it sends meanwhile wait - at most ``queue_size`` of them, then the
    server stops reading its sends. Once it reads again, every id is answered once."""
    async with (
        server(data_dir, queue_size=8, send_timeout_s=60.0) as (running, (a, b)),
        raw_device(running.gateway_url, a.session["access_token"], acks="batch") as stalled,
        raw_device(running.gateway_url, b.session["access_token"]) as other,
    ):
        (session,) = [s for s in running.services.gateway.sessions.values() if s.device_id == "a"]
        block = b"x" * 65536
        with trio.fail_after(30):  # fill the stalled device's socket and then its queue
            for i in range(1, 10_000):
                await other.send(Send(id=i, to="a", data=block))
                answer = await other.receive_type((Ack, Nack))
                if isinstance(answer, Nack):
                    assert answer.reason == "overloaded"
                    break
        delivered = 0
        all_delivered = trio.Event()

        async def count_deliveries() -> None:
            nonlocal delivered
            while True:
                if isinstance(await other.receive(timeout_s=30), Deliver):
                    delivered += 1
                    if delivered == 50:
                        all_delivered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_deliveries)  # the recipient reads all along
            for i in range(1, 51):
                await stalled.send(Send(id=i, to="b", data=b"."))
            await trio.sleep(0.3)
            await stalled.receive(timeout_s=5)  # a little room: the writer moves on, then stalls
            await stalled.receive(timeout_s=5)
            await trio.sleep(0.5)
            waiting = len(session._acks)
            assert waiting <= 8
            assert delivered < 50  # the reader stopped
            # Reading again, the stalled device gets every answer.
            batches, singles, nacks = await answers(stalled, 50)
            with trio.fail_after(5):
                await all_delivered.wait()
            nursery.cancel_scope.cancel()
        assert sorted(i for batch in batches for i in batch.ids) == list(range(1, 51))
        assert singles == []
        assert nacks == []
