"""Receipts: a sender that asks for them is acknowledged only once its recipient device confirmed
the message; what never gets confirmed is refused, never acknowledged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from relay.protocol import Ack, Deliver, Nack, Received, Send
from tests.clients import RELAXED_LIMITS, User, device, sign_in
from tests.devices import raw_device
from tests.servers import running_server


class World:
    def __init__(self, gateway: str, users: dict[str, User]) -> None:
        self.gateway = gateway
        self.users = users

    def token(self, name: str) -> str:
        return str(self.users[name].session["access_token"])


@pytest.fixture
async def world(data_dir: Path) -> AsyncIterator[World]:
    gateway = {"ping_interval_s": 60.0, "confirm_timeout_s": 1.0}
    async with (
        running_server(
            data_dir, limits=RELAXED_LIMITS, gateway=gateway, auth={"codes_per_address": 10}
        ) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        users = {
            name: await sign_in(
                http, data_dir / "outbox", "receipts@example.org", device_body=device(name)
            )
            for name in ("sender", "phone")
        }
        yield World(running.gateway_url, users)


async def nothing_within(device: object, seconds: float) -> None:
    with trio.move_on_after(seconds) as waited:
        await device.receive_type((Ack, Nack))  # type: ignore[attr-defined]
    assert waited.cancelled_caught, "answered before the recipient confirmed"


async def test_the_ack_waits_for_the_recipients_confirmation(world: World) -> None:
    async with (
        raw_device(world.gateway, world.token("sender"), receipts=True) as sender,
        raw_device(world.gateway, world.token("phone"), receipts=True) as phone,
    ):
        for n in (1, 2, 3):
            await sender.send(Send(id=n, to="phone", data=b"m%d" % n))
        seqs = [(await phone.receive_type(Deliver)).seq for _ in range(3)]
        assert seqs == [1, 2, 3]
        await nothing_within(sender, 0.3)
        await phone.send(Received(upto=2))  # cumulative: the first two
        assert {await sender.receive_type(Ack), await sender.receive_type(Ack)} == {
            Ack(id=1),
            Ack(id=2),
        }
        await nothing_within(sender, 0.2)
        await phone.send(Received(upto=3))
        assert await sender.receive_type(Ack) == Ack(id=3)


async def test_what_the_recipient_never_confirmed_is_refused(world: World) -> None:
    async with raw_device(world.gateway, world.token("sender"), receipts=True) as sender:
        async with raw_device(world.gateway, world.token("phone"), receipts=True) as phone:
            await sender.send(Send(id=1, to="phone", data=b"lost"))
            await phone.receive_type(Deliver)
        # The phone went away without confirming: the sender hears it did not arrive.
        assert await sender.receive_type(Nack) == Nack(id=1, reason="unreachable")


async def test_a_confirmation_that_never_comes_times_out(world: World) -> None:
    async with (
        raw_device(world.gateway, world.token("sender"), receipts=True) as sender,
        raw_device(world.gateway, world.token("phone"), receipts=True) as phone,
    ):
        await sender.send(Send(id=1, to="phone", data=b"silent"))
        await phone.receive_type(Deliver)  # received, never confirmed
        answer = await sender.receive_type((Ack, Nack), timeout_s=5)
        assert answer == Nack(id=1, reason="timeout")


async def test_a_recipient_without_receipts_acknowledges_once_written(world: World) -> None:
    async with (
        raw_device(world.gateway, world.token("sender"), receipts=True) as sender,
        raw_device(world.gateway, world.token("phone")) as phone,
    ):
        await sender.send(Send(id=1, to="phone", data=b"plain"))
        delivered = await phone.receive_type(Deliver)
        assert (delivered.data, delivered.seq) == (b"plain", 0)
        assert await sender.receive_type(Ack) == Ack(id=1)


async def test_a_sender_without_receipts_is_acknowledged_at_once(world: World) -> None:
    async with (
        raw_device(world.gateway, world.token("sender")) as sender,
        raw_device(world.gateway, world.token("phone"), receipts=True) as phone,
    ):
        await sender.send(Send(id=1, to="phone", data=b"legacy"))
        assert await sender.receive_type(Ack) == Ack(id=1)  # queued for the phone is enough
        delivered = await phone.receive_type(Deliver)
        assert delivered.seq == 0  # nobody waits for its confirmation
