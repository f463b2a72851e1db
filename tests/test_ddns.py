"""Dynamic IPs and DDNS, end to end: devices report their addresses, the server sees where their
sessions come from, peers of the network get the change at once (and nobody else does), and a
device's DNS name follows its address through RFC 2136 updates with TSIG - against a real DNS
server (Knot DNS, from Debian's ``knot`` package) started here on a loopback port."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.message
import dns.query
import dns.rcode
import httpx
import msgspec
import pytest
import trio
from trio_websocket import wrap_client_stream

from benchmarks._harness import free_port, yggdrasil_command
from benchmarks._harness import hello as say_hello
from relay.client import Credentials, DeliveryFailed, DeviceClient, PresenceChanged
from relay.protocol import Ack, Nack, Presence, ReportAddress, Send
from tests.clients import RELAXED_LIMITS, device, sign_in
from tests.conftest import fresh_pg_database
from tests.devices import RawDevice, raw_device
from tests.servers import running_server, scrape, server_process
from yggdrasil import ConfigError, Database, Invalid, NewDevice, NotFound, Scope, Store, Tx
from yggdrasil._config import DdnsConfig
from yggdrasil.ddns import (
    Ddns,
    InvalidAddress,
    NameTaken,
    Updater,
    check_addresses,
    check_label,
    publishable,
)
from yggdrasil.server import Running

ZONE = "ddns.test"
RELAXED_ENV = {
    f"YGG_LIMITS_{name}": "100000"
    for name in (
        "PER_CLIENT_RATE",
        "PER_CLIENT_BURST",
        "AUTH_PER_CLIENT_RATE",
        "AUTH_PER_CLIENT_BURST",
    )
}
KEY_NAME = "yggdrasil-update"


# --------------------------------------------------------------------------- a real DNS server


def _knotd() -> str:
    found = shutil.which("knotd") or ("/usr/sbin/knotd" if Path("/usr/sbin/knotd").exists() else "")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("knotd is missing (apt-get install knot); .ci/run installs it")
    pytest.skip("knotd is not installed (apt-get install knot)")


@dataclass(frozen=True)
class Knot:
    port: int
    secret: str
    log: Path

    def ddns(self, **extra: Any) -> dict[str, Any]:
        """A ``[ddns]`` section for this server."""
        return {
            "zone": ZONE,
            "server": f"127.0.0.1:{self.port}",
            "key_name": KEY_NAME,
            "key_secret": self.secret,
            "publish_private": True,  # the test's addresses are loopback ones
            **extra,
        }


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[Knot]:
    """Knot DNS, authoritative for ``ddns.test`` on a loopback port, taking dynamic updates
    signed with one TSIG key (hmac-sha256)."""
    knotd = _knotd()
    home = tmp_path / "knot"
    home.mkdir()
    secret = base64.b64encode(os.urandom(32)).decode()
    port = free_port()  # both TCP and UDP: the DNS server listens on both
    (home / f"{ZONE}.zone").write_text(
        f"$ORIGIN {ZONE}.\n$TTL 60\n"
        f"@ SOA ns.{ZONE}. hostmaster.{ZONE}. 1 60 60 600 60\n"
        f"@ NS ns.{ZONE}.\n"
        "ns A 127.0.0.1\n"
    )
    (home / "knot.conf").write_text(
        f"""server:
    rundir: "{home}"
    listen: 127.0.0.1@{port}
    background-workers: 1
    udp-workers: 1
    tcp-workers: 1
log:
  - target: stderr
    any: info
database:
    storage: "{home}"
key:
  - id: {KEY_NAME}
    algorithm: hmac-sha256
    secret: {secret}
acl:
  - id: update
    key: {KEY_NAME}
    action: update
template:
  - id: default
    storage: "{home}"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: {ZONE}.
    file: "{ZONE}.zone"
    acl: update
"""
    )
    log = home / "knotd.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [knotd, "-c", str(home / "knot.conf")], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                query = dns.message.make_query(f"{ZONE}.", "SOA")
                answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.3)
                if answer.rcode() == dns.rcode.NOERROR and answer.answer:
                    break
            except (dns.exception.DNSException, OSError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"knotd did not start: {log.read_text()}")
            time.sleep(0.1)
        yield Knot(port, secret, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def resolve(knot: Knot, label: str, rdtype: str = "A") -> list[str]:
    """What the DNS server answers for ``label`` in the zone, sorted; [] for no record."""
    query = dns.message.make_query(f"{label}.{ZONE}.", rdtype)
    answer = await dns.asyncquery.udp(
        query, "127.0.0.1", port=knot.port, timeout=2, backend=dns.asyncbackend.get_backend("trio")
    )
    return sorted(rr.to_text() for rrset in answer.answer for rr in rrset)


async def resolves_to(knot: Knot, label: str, expected: list[str], timeout_s: float = 10) -> None:
    """Wait until the name resolves to ``expected`` (the update is sent in the background)."""
    last: list[str] = []
    with trio.move_on_after(timeout_s):
        while True:
            last = await resolve(knot, label)
            if last == expected:
                return
            await trio.sleep(0.05)
    raise AssertionError(f"{label}.{ZONE} resolves to {last}, not {expected}")


# --------------------------------------------------------------------------- the server


@asynccontextmanager
async def ddns_server(
    data_dir: Path, backend: str, ddns: dict[str, Any] | None
) -> AsyncIterator[Running]:
    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
        sections: dict[str, Any] = {
            "limits": RELAXED_LIMITS,
            "database": database,
            "gateway": {"ping_interval_s": 60.0},
        }
        if ddns is not None:
            sections["ddns"] = ddns
        yield await stack.enter_async_context(running_server(data_dir, **sections))


@asynccontextmanager
async def device_from(source: str, gateway_url: str, token: str) -> AsyncIterator[RawDevice]:
    """A raw device whose connection comes from the loopback address ``source`` (another
    127.x address: the device "moved")."""
    url = urlsplit(gateway_url)
    assert url.hostname is not None
    assert url.port is not None
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect((url.hostname, url.port))
    headers = [(b"authorization", f"Bearer {token}".encode())]
    async with trio.open_nursery() as nursery:
        ws = await wrap_client_stream(
            nursery, trio.SocketStream(sock), url.hostname, "/", extra_headers=headers
        )
        try:
            yield RawDevice(ws, await say_hello(ws, "test"))
        finally:
            await ws.aclose()


async def quiet(device: RawDevice, seconds: float = 0.5) -> list[Any]:
    """Every frame the device gets within ``seconds`` (pings are 60 s apart here)."""
    frames: list[Any] = []
    with trio.move_on_after(seconds):
        while True:
            frames.append(await device.receive(seconds))
    return frames


def metric(text: str, name: str) -> float:
    """The value of one sample of ``/metrics`` (``name`` with its labels, as written)."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == name:
            return float(value)
    raise AssertionError(f"{name} is not in /metrics")


# --------------------------------------------------------------------------- checks


def test_labels_are_one_dns_label_and_not_reserved() -> None:
    reserved = ["ns", "www"]
    assert check_label("Ada-Laptop", reserved) == "ada-laptop"
    assert check_label("x", reserved) == "x"
    assert check_label("a" * 63, reserved) == "a" * 63
    for bad in ("", "-a", "a-", "a.b", "a_b", "a" * 64, "ünï", "xn--bcher-kva", "NS", "www", " "):
        with pytest.raises(Invalid):
            check_label(bad, reserved)


def test_reported_addresses_are_unicast_and_few() -> None:
    assert check_addresses([" 203.0.113.7", "2001:DB8::0:1", "203.0.113.7"]) == [
        "203.0.113.7",
        "2001:db8::1",
    ]
    assert check_addresses([]) == []
    for bad in (
        ["not-an-ip"],
        ["203.0.113.7/24"],
        ["0.0.0.0"],
        ["::"],
        ["224.0.0.1"],
        ["ff02::1"],
        ["169.254.1.1"],
        ["fe80::1"],
        ["192.0.2.1"] * 2 + ["192.0.2.2", "192.0.2.3", "192.0.2.4"],
    ):
        with pytest.raises(InvalidAddress):
            check_addresses(bad)
    # Only global addresses go into the zone, unless the operator publishes private ones.
    mixed = ["10.1.2.3", "127.0.0.1", "203.0.113.7", "2001:4860::1"]
    assert publishable(mixed, private=False) == ["2001:4860::1"]  # 203.0.113/24 is TEST-NET-3
    assert publishable(mixed, private=True) == mixed


def test_a_bad_ddns_section_is_refused_by_name(tmp_path: Path) -> None:
    good = {
        "zone": ZONE,
        "server": "127.0.0.1:53",
        "key_name": KEY_NAME,
        "key_secret": base64.b64encode(b"k" * 32).decode(),
    }
    Updater(msgspec.convert(good, DdnsConfig))
    key_file = tmp_path / "tsig.key"
    key_file.write_text(good["key_secret"] + "\n")
    Updater(msgspec.convert({**good, "key_secret": "", "key_file": str(key_file)}, DdnsConfig))
    for change, message in (
        ({"server": "dns.example.org:53"}, "ddns.server must be an IP address and port"),
        ({"server": "127.0.0.1:99999"}, "ddns.server must be an IP address and port"),
        ({"key_name": ""}, "needs key_name"),
        ({"key_secret": ""}, "needs its TSIG key"),
        ({"key_secret": "not base64!"}, "ddns.key_secret: the TSIG secret is not base64"),
        ({"key_file": str(key_file)}, "key_secret and key_file are alternatives"),
        (
            {"key_secret": "", "key_file": str(tmp_path / "missing")},
            f"ddns.key_file: cannot read {tmp_path / 'missing'}",
        ),
    ):
        with pytest.raises(ConfigError) as refused:
            Updater(msgspec.convert({**good, **change}, DdnsConfig))
        assert message in str(refused.value), (change, str(refused.value))
        assert good["key_secret"] not in str(refused.value)  # never the secret


async def test_without_a_zone_the_routes_answer_404_and_addresses_still_reach_peers(
    data_dir: Path, asyncio_loop: None
) -> None:
    async with (
        ddns_server(data_dir, "sqlite", None) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        outbox = data_dir / "outbox"
        laptop = await sign_in(http, outbox, "ada@example.org", device_body=device("laptop"))
        phone = await sign_in(http, outbox, "ada@example.org", device_body=device("phone"))
        refused = await laptop.put("/api/v1/devices/laptop/ddns", json={"label": "ada"})
        assert refused.status_code == 404, refused.text
        assert "no DDNS" in refused.json()["error"]["message"]
        # A device of no network of the caller's is not found first, zone or not.
        ada = await sign_in(http, outbox, "ada@example.org")
        missing = await ada.put("/api/v1/devices/nosuch/ddns", json={"label": "ada"})
        assert missing.status_code == 404
        async with (
            raw_device(running.gateway_url, laptop.session["access_token"]) as a,
            raw_device(running.gateway_url, phone.session["access_token"]) as b,
        ):
            mine = {d.device_id: d for d in b.welcome.devices}["laptop"]
            assert mine.addresses == ["127.0.0.1"]  # where its session comes from
            await a.send(ReportAddress(id=1, addresses=["198.51.100.20"]))
            assert await a.receive_type((Ack, Nack)) == Ack(id=1)
            change = await b.receive_type(Presence)
            assert change.device.device_id == "laptop"
            assert change.device.addresses == ["198.51.100.20"]
            # The relay is still the path: messages flow as before.
            await b.send(Send(id=2, to="laptop", data=b"still here"))
            assert await b.receive_type((Ack, Nack)) == Ack(id=2)


async def test_a_devices_name_follows_its_address_through_the_real_dns_server(
    knot: Knot, data_dir: Path, backend: str, asyncio_loop: None
) -> None:
    async with (
        ddns_server(data_dir, backend, knot.ddns()) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        outbox = data_dir / "outbox"
        laptop = await sign_in(http, outbox, "ada@example.org", device_body=device("laptop"))
        phone = await sign_in(http, outbox, "ada@example.org", device_body=device("phone"))
        tablet = await sign_in(http, outbox, "bob@example.org", device_body=device("tablet"))
        bob = await sign_in(http, outbox, "bob@example.org")  # Bob himself, not a device
        assert tablet.session["network_id"] != laptop.session["network_id"]

        # Ada names her laptop (with the laptop's own token: a device may name itself).
        named = await laptop.put("/api/v1/devices/laptop/ddns", json={"label": "Ada-Laptop"})
        assert named.status_code == 200, named.text
        body = named.json()
        assert (body["name"], body["label"], body["addresses"]) == (
            f"ada-laptop.{ZONE}",
            "ada-laptop",
            [],
        )
        assert await resolve(knot, "ada-laptop") == []  # never connected: nothing to publish

        # Bob cannot take the name, and learns nothing of who holds it.
        taken = await tablet.put("/api/v1/devices/tablet/ddns", json={"label": "ada-laptop"})
        assert taken.status_code == 409
        assert taken.json()["error"]["code"] == "name_taken"
        for secret in ("ada", "laptop", laptop.session["network_id"]):
            assert secret not in taken.json()["error"]["message"]
        # Ada's device id from Bob's side is simply not there, like one that never existed.
        foreign = await bob.put("/api/v1/devices/laptop/ddns", json={"label": "bobs"})
        missing = await bob.put("/api/v1/devices/nosuch/ddns", json={"label": "bobs"})
        assert (foreign.status_code, foreign.content) == (missing.status_code, missing.content)
        assert foreign.status_code == 404
        in_her_network = f"/api/v1/devices/laptop/ddns?network_id={laptop.session['network_id']}"
        for method in ("GET", "PUT", "DELETE"):
            probe = await bob.request(method, in_her_network, json={"label": "bobs"})
            assert probe.status_code == 404, (method, probe.text)
        # Labels are checked; a reserved one is refused.
        for bad in ("-bad", "a.b", "ns"):
            invalid = await laptop.put("/api/v1/devices/laptop/ddns", json={"label": bad})
            assert invalid.status_code == 422, (bad, invalid.text)
        # Her phone may not name her laptop: a device acts only on itself.
        sibling = await phone.put("/api/v1/devices/laptop/ddns", json={"label": "other"})
        assert sibling.status_code == 403

        async with (
            raw_device(running.gateway_url, laptop.session["access_token"]) as a,
            raw_device(running.gateway_url, phone.session["access_token"]) as b,
            raw_device(running.gateway_url, tablet.session["access_token"]) as c,
        ):
            # Connected: the name points where the session comes from.
            await resolves_to(knot, "ada-laptop", ["127.0.0.1"])
            await quiet(b, 0.2)

            # The laptop learns it has a new public address.
            await a.send(ReportAddress(id=1, addresses=["127.0.0.7"]))
            assert await a.receive_type((Ack, Nack)) == Ack(id=1)
            change = await b.receive_type(Presence)
            assert (change.device.device_id, change.device.online) == ("laptop", True)
            assert change.device.addresses == ["127.0.0.7"]
            await resolves_to(knot, "ada-laptop", ["127.0.0.7"])
            # Another network's device hears nothing of it.
            assert [f for f in await quiet(c) if isinstance(f, Presence)] == []

            # Nonsense is refused and changes nothing; the session goes on.
            nonsense: list[tuple[int, list[str]]] = [
                (2, ["not-an-ip"]),
                (3, ["224.0.0.1"]),
                (4, ["10.0.0.1"] * 5),
            ]
            for frame_id, report in nonsense:
                await a.send(ReportAddress(id=frame_id, addresses=report))
                assert await a.receive_type((Ack, Nack)) == Nack(id=frame_id, reason="invalid")
            await a.send(Send(id=5, to="phone", data=b"hi"))
            assert await a.receive_type((Ack, Nack)) == Ack(id=5)
            assert await resolve(knot, "ada-laptop") == ["127.0.0.7"]
            shown = (await laptop.get("/api/v1/devices/laptop/ddns")).json()
            assert shown["addresses"] == ["127.0.0.7"]

        # The laptop comes back from another address: the name follows, and the phone sees it.
        async with (
            raw_device(running.gateway_url, phone.session["access_token"]) as b,
            device_from("127.0.0.9", running.gateway_url, laptop.session["access_token"]),
        ):
            change = await b.receive_type(Presence)
            assert (change.device.device_id, change.device.addresses) == (
                "laptop",
                ["127.0.0.9"],
            )
            await resolves_to(knot, "ada-laptop", ["127.0.0.9"])

        # A new label moves the record; removing the name removes it from the zone.
        renamed = await laptop.put("/api/v1/devices/laptop/ddns", json={"label": "ada2"})
        assert renamed.status_code == 200
        await resolves_to(knot, "ada2", ["127.0.0.9"])
        await resolves_to(knot, "ada-laptop", [])
        # The old label is free again: Bob may take it now.
        bobs = await tablet.put("/api/v1/devices/tablet/ddns", json={"label": "ada-laptop"})
        assert bobs.status_code == 200
        removed = await laptop.delete("/api/v1/devices/laptop/ddns")
        assert removed.status_code == 204
        await resolves_to(knot, "ada2", [])
        assert (await laptop.get("/api/v1/devices/laptop/ddns")).status_code == 404
        assert (await laptop.delete("/api/v1/devices/laptop/ddns")).status_code == 404

        metrics = await scrape(running)
        assert metric(metrics, 'yggdrasil_ddns_updates_total{result="ok"}') >= 5
        assert metric(metrics, 'yggdrasil_ddns_updates_total{result="failed"}') == 0


async def test_a_wrong_tsig_key_is_logged_counted_and_retried_and_the_session_goes_on(
    knot: Knot, data_dir: Path, asyncio_loop: None, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = base64.b64encode(os.urandom(32)).decode()
    caplog.set_level(logging.INFO, logger="yggdrasil.ddns")
    async with (
        ddns_server(data_dir, "sqlite", knot.ddns(key_secret=wrong)) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        outbox = data_dir / "outbox"
        laptop = await sign_in(http, outbox, "ada@example.org", device_body=device("laptop"))
        phone = await sign_in(http, outbox, "ada@example.org", device_body=device("phone"))
        named = await laptop.put("/api/v1/devices/laptop/ddns", json={"label": "ada"})
        assert named.status_code == 200
        async with (
            raw_device(running.gateway_url, laptop.session["access_token"]) as a,
            raw_device(running.gateway_url, phone.session["access_token"]),
        ):
            # The first try and a retry (after 1 s) fail; each is logged and counted.
            for _ in range(100):
                failed = 'yggdrasil_ddns_updates_total{result="failed"}'
                if metric(await scrape(running), failed) >= 2:
                    break
                await trio.sleep(0.1)
            else:
                raise AssertionError("the failed updates were not counted")
            failures = [r for r in caplog.records if "ddns update of" in r.getMessage()]
            assert failures
            assert f"ada.{ZONE}" in failures[0].getMessage()
            assert "TSIG" in failures[0].getMessage()
            assert wrong not in caplog.text
            # The session is untouched.
            await a.send(ReportAddress(id=1, addresses=["127.0.0.8"]))
            assert await a.receive_type((Ack, Nack)) == Ack(id=1)
            await a.send(Send(id=2, to="phone", data=b"hello"))
            assert await a.receive_type((Ack, Nack)) == Ack(id=2)
        assert await resolve(knot, "ada") == []
        metrics = await scrape(running)
        assert metric(metrics, 'yggdrasil_ddns_updates_total{result="ok"}') == 0
        assert metric(metrics, "yggdrasil_ddns_pending") >= 1  # still being retried


async def test_a_deleted_devices_name_leaves_the_zone_and_its_label_is_free_again(
    knot: Knot, data_dir: Path, backend: str, asyncio_loop: None
) -> None:
    async with (
        ddns_server(data_dir, backend, knot.ddns(sweep_s=0.2)) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        outbox = data_dir / "outbox"
        laptop = await sign_in(http, outbox, "ada@example.org", device_body=device("laptop"))
        ada = await sign_in(http, outbox, "ada@example.org")
        tablet = await sign_in(http, outbox, "bob@example.org", device_body=device("tablet"))
        assert (await ada.put("/api/v1/devices/laptop/ddns", json={"label": "gone"})).is_success
        async with raw_device(running.gateway_url, laptop.session["access_token"]):
            await resolves_to(knot, "gone", ["127.0.0.1"])
        deleted = await ada.delete("/api/v1/devices/laptop")
        assert deleted.status_code == 204
        await resolves_to(knot, "gone", [])
        taken = await tablet.put("/api/v1/devices/tablet/ddns", json={"label": "gone"})
        assert taken.status_code == 200, taken.text
        # A new device under the old id does not inherit the name.
        again = await ada.post("/api/v1/devices", json=device("laptop"))
        assert again.status_code == 201, again.text
        assert (await ada.get("/api/v1/devices/laptop/ddns")).status_code == 404


async def test_yggdrasil_serve_refuses_a_ddns_zone_without_a_key_in_one_line(
    tmp_path: Path,
) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("YGG_")}
    environment.update(
        YGG_DDNS_ZONE="dyn.example.org", YGG_DDNS_SERVER="127.0.0.1:53", YGG_DDNS_KEY_NAME="k"
    )
    with trio.fail_after(60):
        result = await trio.run_process(
            [*yggdrasil_command(), "serve", "--data-dir", str(tmp_path / "data")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=environment,
        )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2
    assert lines == ["yggdrasil: ddns: a zone needs its TSIG key: key_secret or key_file"]


async def test_the_device_client_reports_its_address_and_sees_its_peers(
    data_dir: Path, asyncio_loop: None
) -> None:
    async with (
        ddns_server(data_dir, "sqlite", None) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
        trio.open_nursery() as nursery,
    ):
        clients = {}
        for device_id in ("laptop", "phone"):
            user = await sign_in(
                http, data_dir / "outbox", "ada@example.org", device_body=device(device_id)
            )
            credentials = Credentials(
                api_url=str(http.base_url),
                gateway_url=running.gateway_url,
                device_id=device_id,
                network_id=user.session["network_id"],
                access_token=user.session["access_token"],
                refresh_token=user.session["refresh_token"],
            )
            clients[device_id] = DeviceClient(credentials)
            await nursery.start(clients[device_id].run)
            await clients[device_id].wait_connected()
        laptop, phone = clients["laptop"], clients["phone"]
        assert phone.peers["laptop"].addresses == ["127.0.0.1"]
        await laptop.report_address(["2001:db8::7", "198.51.100.7"])
        with trio.fail_after(10):
            while True:
                event = await phone.events.get()
                if isinstance(event, PresenceChanged) and event.device.device_id == "laptop":
                    break
        assert event.device.addresses == ["2001:db8::7", "198.51.100.7"]
        assert phone.peers["laptop"].addresses == ["2001:db8::7", "198.51.100.7"]
        with pytest.raises(DeliveryFailed, match="invalid"):
            await laptop.report_address(["localhost"])
        await laptop.send("phone", b"the relay is still the path")
        nursery.cancel_scope.cancel()


async def test_only_global_addresses_go_into_the_zone_unless_the_operator_says_so(
    knot: Knot, data_dir: Path, asyncio_loop: None
) -> None:
    async with (
        ddns_server(data_dir, "sqlite", knot.ddns(publish_private=False)) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        laptop = await sign_in(
            http, data_dir / "outbox", "ada@example.org", device_body=device("laptop")
        )
        assert (await laptop.put("/api/v1/devices/laptop/ddns", json={"label": "pub"})).is_success
        async with raw_device(running.gateway_url, laptop.session["access_token"]) as a:
            # Its session comes from loopback: nothing to publish.
            await a.send(ReportAddress(id=1, addresses=["1.2.3.4", "10.0.0.5", "2a00:1450::1"]))
            assert await a.receive_type((Ack, Nack)) == Ack(id=1)
            await resolves_to(knot, "pub", ["1.2.3.4"])  # the global ones only
            assert await resolve(knot, "pub", "AAAA") == ["2a00:1450::1"]
            # Only private addresses now: the zone keeps the last global one.
            await a.send(ReportAddress(id=2, addresses=["10.0.0.6"]))
            assert await a.receive_type((Ack, Nack)) == Ack(id=2)
            await trio.sleep(0.5)
            assert await resolve(knot, "pub") == ["1.2.3.4"]
            assert await resolve(knot, "pub", "AAAA") == ["2a00:1450::1"]
            shown = (await laptop.get("/api/v1/devices/laptop/ddns")).json()
            assert shown["addresses"] == ["10.0.0.6"]  # the registry has the truth
        metrics = await scrape(running)
        assert metric(metrics, 'yggdrasil_ddns_updates_total{result="ok"}') == 1
        # Ada's data export has the name and the addresses.
        ada = await sign_in(http, data_dir / "outbox", "ada@example.org")
        export = (await ada.get("/api/v1/users/me/export")).json()["ddns"]
        assert [(n["label"], n["device_id"]) for n in export["names"]] == [("pub", "laptop")]
        [recorded] = export["addresses"]
        assert (recorded["device_id"], recorded["seen"], recorded["reported"]) == (
            "laptop",
            "127.0.0.1",
            ["10.0.0.6"],
        )


# --------------------------------------------------------------------------- the store


def _offline_ddns(database: Database) -> Ddns:
    """A ddns service over ``database`` whose worker does not run (nothing is sent)."""
    config = {
        "zone": ZONE,
        "server": "127.0.0.1:53",
        "key_name": KEY_NAME,
        "key_secret": base64.b64encode(b"k" * 32).decode(),
        "publish_private": True,
    }
    return Ddns(msgspec.convert(config, DdnsConfig), lambda: database)


async def test_a_label_goes_to_exactly_one_of_many_parallel_claims(database: Database) -> None:
    store = Store(database)
    ddns = _offline_ddns(database)
    claimants = []
    for n in range(12):
        user, home = await store.create_user(f"user{n}@example.org")
        scope = Scope(user.user_id)
        await store.register_device(scope, home.network_id, NewDevice("box", "Box", "midgard"))
        claimants.append((scope, home.network_id))
    outcomes: list[str] = []

    async def claim(scope: Scope, network_id: str) -> None:
        try:
            await ddns.set_name(scope, network_id, "box", "shared")
            outcomes.append("ok")
        except NameTaken:
            outcomes.append("taken")

    async with trio.open_nursery() as nursery:
        for scope, network_id in claimants:
            nursery.start_soon(claim, scope, network_id)
    assert sorted(outcomes) == ["ok"] + ["taken"] * 11


async def test_a_name_left_by_an_earlier_device_of_the_same_id_is_not_inherited(
    database: Database,
) -> None:
    store = Store(database)
    ddns = _offline_ddns(database)
    user, home = await store.create_user("ada@example.org")
    scope, network_id = Scope(user.user_id), home.network_id
    await store.register_device(scope, network_id, NewDevice("laptop", "Laptop", "midgard"))
    named = await ddns.set_name(scope, network_id, "laptop", "Lap")
    assert (named.label, named.addresses) == ("lap", [])
    assert (await ddns.get_name(scope, network_id, "laptop")).label == "lap"

    async def orphan(tx: Tx) -> None:  # as if the row were left by another user's device
        await tx.execute("UPDATE ddns_names SET user_id = 'u_gone' WHERE label = 'lap'")

    await database.write(orphan)
    with pytest.raises(NotFound):
        await ddns.get_name(scope, network_id, "laptop")
    with pytest.raises(NotFound):
        await ddns.remove_name(scope, network_id, "laptop")
    # Its address changes do not touch the old name ...
    ddns.address_changed(network_id, "laptop", "198.51.100.1", [])
    assert await ddns._record()  # the worker's step, without the worker
    assert ddns._wanted == {}
    # ... and the device may take the label for itself.
    again = await ddns.set_name(scope, network_id, "laptop", "lap")
    assert (again.label, again.addresses) == ("lap", ["198.51.100.1"])
    assert ddns._wanted == {"lap": ["198.51.100.1"]}


async def test_yggdrasil_serve_keeps_a_name_current_configured_from_the_environment(
    knot: Knot, tmp_path: Path
) -> None:
    """The real command, its ``[ddns]`` section from ``YGG_DDNS_*`` (the secret never in a
    file or on the command line)."""
    settings = {
        f"YGG_DDNS_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in knot.ddns().items()
    }
    data_dir = tmp_path / "data"
    with server_process(data_dir, env={**settings, **RELAXED_ENV}) as server:
        async with httpx.AsyncClient(base_url=server.api_url, timeout=30) as http:
            laptop = await sign_in(
                http, data_dir / "outbox", "ada@example.org", device_body=device("laptop")
            )
            named = await laptop.put("/api/v1/devices/laptop/ddns", json={"label": "served"})
            assert named.json()["name"] == f"served.{ZONE}"
            async with raw_device(server.gateway_url, laptop.session["access_token"]) as a:
                await resolves_to(knot, "served", ["127.0.0.1"])
                await a.send(ReportAddress(id=1, addresses=["127.0.0.42"]))
                await resolves_to(knot, "served", ["127.0.0.42"])
        assert 'yggdrasil_ddns_updates_total{result="ok"} 2.0' in server.metrics()
        assert knot.secret not in server.log_path.read_text()
