"""Three ``yggdrasil serve`` processes on one PostgreSQL and one NATS: devices on different
instances talk, see each other, replace each other and are revoked everywhere; an instance killed
with SIGKILL loses no acknowledged message; a NATS restart heals by itself."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from benchmarks._harness import yggdrasil_command
from relay.client import Credentials, DeliveryFailed, DeviceClient, Message, NotConnected
from relay.protocol import (
    Ack,
    Deliver,
    Incoming,
    Nack,
    Presence,
    Received,
    Reply,
    Request,
    Send,
    ThorAction,
    ThorResult,
)
from relay.protocol import Response as ThorResponse
from tests.clients import User, device, sign_in
from tests.cluster import (
    cluster_env,
    cluster_processes,
    private_nats,
    require_nats,
    unique_prefix,
)
from tests.conftest import fresh_pg_database, require_postgres
from tests.devices import close_code, raw_device
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow


def without_ygg() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("YGG_")}


class Cluster:
    def __init__(
        self, servers: list[ServerProcess], http: httpx.AsyncClient, outbox: Path, db: str
    ) -> None:
        self.servers = servers
        self.http = http
        self.outbox = outbox
        self.db = db

    async def device(self, name: str, email: str = "home@example.org") -> User:
        return await sign_in(self.http, self.outbox, email, device_body=device(name))

    def credentials(self, user: User, first: int) -> Credentials:
        """A device client's credentials that try instance ``first``, then the others."""
        gateways = [s.gateway_url for s in self.servers]
        order = gateways[first:] + gateways[:first]
        return Credentials(
            api_url=self.servers[first].api_url,
            gateway_url=order[0],
            device_id=user.session["device_id"],
            network_id=user.session["network_id"],
            access_token=user.session["access_token"],
            refresh_token=user.session["refresh_token"],
            more_gateways=order[1:],
        )


@asynccontextmanager
async def cluster(
    tmp_path: Path, count: int = 3, *, bus_url: str | None = None
) -> AsyncIterator[Cluster]:
    require_postgres()
    url = bus_url or require_nats()
    async with fresh_pg_database() as database_url:
        data_dir = tmp_path / "data"
        with cluster_processes(
            data_dir,
            count,
            database_url=database_url,
            bus_url=url,
            env=cluster_env(unique_prefix()),
        ) as servers:
            async with httpx.AsyncClient(base_url=servers[0].api_url, timeout=30) as http:
                yield Cluster(servers, http, data_dir / "outbox", database_url)


async def test_devices_on_different_instances_talk_and_see_each_other(
    tmp_path: Path, asyncio_loop: None
) -> None:
    async with cluster(tmp_path) as c:
        laptop, phone = await c.device("laptop"), await c.device("phone")
        token = {"laptop": laptop.session["access_token"], "phone": phone.session["access_token"]}
        async with raw_device(c.servers[0].gateway_url, token["laptop"], receipts=True) as a:
            async with raw_device(c.servers[1].gateway_url, token["phone"], receipts=True) as b:
                # Presence across instances: the laptop hears the phone come online.
                joined = await a.receive_type(Presence)
                assert (joined.device.device_id, joined.device.online) == ("phone", True)
                assert {d.device_id: d.online for d in b.welcome.devices}["laptop"] is True

                await a.send(Send(id=1, to="phone", data=b"across"))
                delivered = await b.receive_type(Deliver)
                assert (delivered.from_, delivered.data) == ("laptop", b"across")
                await b.send(Received(upto=delivered.seq))
                assert await a.receive_type(Ack) == Ack(id=1)  # confirmed end to end

                await a.send(Request(id=2, to="phone", action=ThorAction("ping", {})))
                incoming = await b.receive_type(Incoming)
                await b.send(Reply(id=incoming.id, result=ThorResult(ok=True, result="pong")))
                answer = await a.receive_type(ThorResponse)
                assert answer.result == ThorResult(ok=True, result="pong")
            left = await a.receive_type(Presence)
            assert (left.device.device_id, left.device.online) == ("phone", False)
        metrics = c.servers[0].metrics()
        assert "yggdrasil_bus_ready 1.0" in metrics
        assert "yggdrasil_bus_instances 3.0" in metrics
        assert re.search(r"^yggdrasil_bus_published_total [1-9]", metrics, re.M)


async def test_a_new_session_on_another_instance_replaces_the_old_one(
    tmp_path: Path, asyncio_loop: None
) -> None:
    async with cluster(tmp_path) as c:
        phone = await c.device("phone")
        token = phone.session["access_token"]
        async with (
            raw_device(c.servers[0].gateway_url, token) as first,
            raw_device(c.servers[2].gateway_url, token) as second,
        ):
            assert await close_code(first.ws) == 4000
            assert second.welcome.device_id == "phone"


async def test_revocation_reaches_every_instance_within_a_second(
    tmp_path: Path, asyncio_loop: None
) -> None:
    async with cluster(tmp_path) as c:
        devices = [await c.device(f"d{n}") for n in range(3)]
        owner = await sign_in(c.http, c.outbox, "home@example.org")
        await sign_in(c.http, c.outbox, "ops@example.org")
        # The cluster's data directory holds the keyring that finds the address.
        where = ["--database-url", c.db, "--data-dir", str(c.outbox.parent)]
        granted = await trio.run_process(
            [*yggdrasil_command(), "admin", "grant", "ops@example.org", *where],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=without_ygg(),
        )
        assert granted.returncode == 0, granted.stderr.decode()
        operator = await sign_in(c.http, c.outbox, "ops@example.org")
        far = httpx.AsyncClient(base_url=c.servers[2].api_url, timeout=30)
        async with (
            far,
            raw_device(c.servers[0].gateway_url, devices[0].session["access_token"]) as d0,
            raw_device(c.servers[1].gateway_url, devices[1].session["access_token"]) as d1,
            raw_device(c.servers[2].gateway_url, devices[2].session["access_token"]) as d2,
        ):
            # A device deleted through another instance's API: its session ends at once.
            started = trio.current_time()
            deleted = await far.delete("/api/v1/devices/d0", headers=owner.headers)
            assert deleted.status_code == 204
            assert await close_code(d0.ws, timeout_s=1.0) == 4001
            assert trio.current_time() - started < 1.0
            # The account suspended: every other session of it ends too, on every instance,
            # within a second (the store's sync alone would take auth.revocation_sync_s).
            started = trio.current_time()
            user_id = owner.session["user_id"]
            suspended = await far.post(
                f"/api/admin/users/{user_id}/suspend", headers=operator.headers
            )
            assert suspended.status_code == 200, suspended.text
            with trio.fail_after(1.0):
                assert await close_code(d1.ws) == 4001
                assert await close_code(d2.ws) == 4001
            assert trio.current_time() - started < 1.0


async def exchange(
    sender: DeviceClient,
    to: str,
    acked: set[int],
    numbers: Iterator[int],
    stop: trio.Event,
) -> None:
    """Send numbered messages until ``stop``; remember which were acknowledged."""
    while not stop.is_set():
        n = next(numbers)
        try:
            await sender.send(to, str(n).encode(), timeout_s=10)
            acked.add(n)
        except (DeliveryFailed, NotConnected, trio.TooSlowError):
            await trio.sleep(0.05)


async def collect(receiver: DeviceClient, received: set[int]) -> None:
    while True:
        event = await receiver.events.get()
        if isinstance(event, Message):
            received.add(int(event.data))


async def test_an_instance_killed_mid_traffic_loses_no_acknowledged_message(
    tmp_path: Path, asyncio_loop: None
) -> None:
    async with cluster(tmp_path) as c:
        users = {name: await c.device(name) for name in ("laptop", "phone")}
        # Both devices start on the victim, instance 1, and know the others' gateways.
        laptop = DeviceClient(c.credentials(users["laptop"], 1), backoff_base_s=0.05)
        phone = DeviceClient(c.credentials(users["phone"], 1), backoff_base_s=0.05)
        acked = {"laptop": set[int](), "phone": set[int]()}
        received = {"laptop": set[int](), "phone": set[int]()}
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(laptop.run)
            await nursery.start(phone.run)
            with trio.fail_after(10):
                await laptop.wait_connected()
                await phone.wait_connected()
            nursery.start_soon(collect, laptop, received["laptop"])
            nursery.start_soon(collect, phone, received["phone"])
            numbers = iter(range(1_000_000))
            nursery.start_soon(exchange, laptop, "phone", acked["laptop"], numbers, stop)
            nursery.start_soon(exchange, phone, "laptop", acked["phone"], numbers, stop)
            await trio.sleep(1.0)
            before = len(acked["laptop"]) + len(acked["phone"])
            assert before > 0
            c.servers[1].process.send_signal(signal.SIGKILL)
            # The devices find another instance, the dead one's addresses are given up, and
            # the messages flow again.
            with trio.fail_after(20):
                while len(acked["laptop"]) + len(acked["phone"]) < before + 50:  # noqa: ASYNC110
                    await trio.sleep(0.1)
            stop.set()
            await trio.sleep(1.0)  # the last confirmations arrive
            nursery.cancel_scope.cancel()
        for sender, receiver in (("laptop", "phone"), ("phone", "laptop")):
            lost = acked[sender] - received[receiver]
            assert not lost, f"{sender}'s acknowledged messages never arrived: {sorted(lost)}"
        assert laptop.peers["phone"].online or phone.peers["laptop"].online


async def readiness(c: Cluster) -> set[int]:
    async with httpx.AsyncClient(timeout=5) as http:
        return {(await http.get(f"{s.api_url}/readyz")).status_code for s in c.servers}


async def test_a_nats_restart_heals_by_itself(tmp_path: Path, asyncio_loop: None) -> None:
    with private_nats(tmp_path / "nats") as nats:
        async with cluster(tmp_path, 2, bus_url=nats.url) as c:
            laptop, phone = await c.device("laptop"), await c.device("phone")
            assert await readiness(c) == {200}
            nats.stop()
            with trio.fail_after(10):
                while await readiness(c) != {503}:  # noqa: ASYNC110 - the real server's state
                    await trio.sleep(0.2)
            nats.start()
            with trio.fail_after(20):
                while await readiness(c) != {200}:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            # Messages cross between the instances again.
            token = {
                "laptop": laptop.session["access_token"],
                "phone": phone.session["access_token"],
            }
            with trio.fail_after(20):
                while True:
                    try:
                        async with (
                            raw_device(c.servers[0].gateway_url, token["laptop"]) as a,
                            raw_device(c.servers[1].gateway_url, token["phone"]) as b,
                        ):
                            await a.send(Send(id=1, to="phone", data=b"after"))
                            if isinstance(await a.receive_type((Ack, Nack)), Ack):
                                assert (await b.receive_type(Deliver)).data == b"after"
                                break
                    except (ConnectionRejected, RuntimeError, ConnectionClosed):
                        pass
                    await trio.sleep(0.3)
