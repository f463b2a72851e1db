"""coturn's own test client against ``yggdrasil serve``'s TURN server (Debian package coturn)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio

from benchmarks._harness import free_port
from tests.clients import device, sign_in
from tests.servers import ServerProcess, server_process

pytestmark = pytest.mark.slow


def coturn_tools() -> None:
    if shutil.which("turnutils_uclient") and shutil.which("turnutils_peer"):
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("turnutils_uclient is missing (apt-get install coturn); .ci/run installs it")
    pytest.skip("turnutils_uclient is not installed (apt-get install coturn)")


@contextmanager
def turn_server(
    tmp_path: Path,
    turn_port: int,
    *extra: str,
    allow_loopback: bool = True,
    static: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """``yggdrasil serve`` with TURN on ``turn_port`` (a static user; loopback peers allowed)."""
    flags = ["--turn-port", str(turn_port), *extra]
    if static:
        flags += ["--turn-static-user", "bench:secret"]
    if allow_loopback:
        flags += ["--turn-allow-peer", "127.0.0.0/8"]
    with server_process(tmp_path / "data", *flags, env=env) as server:
        yield server


@contextmanager
def echo_peer(host: str) -> Iterator[int]:
    """coturn's ``turnutils_peer`` echoing UDP on ``host``; its port."""
    coturn_tools()
    port = free_port()
    process = subprocess.Popen(
        ["turnutils_peer", "-L", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def peer() -> Iterator[int]:
    with echo_peer("127.0.0.1") as port:
        yield port


def uclient(
    turn_port: int,
    peer_port: int,
    *flags: str,
    user: str = "bench",
    password: str = "secret",
    peer_host: str = "127.0.0.1",
    clients: int = 5,
) -> tuple[int, str]:
    """``turnutils_uclient``: ``clients`` allocations (``-m``), 100 messages each to the echo
    peer; its exit code and output."""
    result = subprocess.run(
        [
            "turnutils_uclient",
            "-c",
            *flags,
            "-u",
            user,
            "-w",
            password,
            "-e",
            peer_host,
            "-r",
            str(peer_port),
            "-m",
            str(clients),
            "-n",
            "100",
            "-l",
            "120",
            "-z",
            "5",
            "-p",
            str(turn_port),
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def received(output: str) -> tuple[int, int]:
    found = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
    assert found, output[-2000:]
    sent, got = found[-1]
    return int(sent), int(got)


def relayed_without_loss(code: int, output: str, clients: int = 5) -> None:
    assert code == 0, output[-2000:]
    assert received(output) == (100 * clients, 100 * clients)
    assert "Total lost packets 0 (0.000000%)" in output
    assert "error 486" not in output


@pytest.mark.parametrize(
    "flags",
    [(), ("-s",), ("-t",), ("-t", "-s")],
    ids=["udp-channels", "udp-send-indications", "tcp-channels", "tcp-send-indications"],
)
def test_uclient_relays_through_yggdrasil_without_loss(
    tmp_path: Path, peer: int, flags: tuple[str, ...]
) -> None:
    turn_port = free_port()
    with turn_server(tmp_path, turn_port) as server:
        code, output = uclient(turn_port, peer, *flags)
        assert code == 0, output[-2000:]
        assert received(output) == (500, 500)
        assert "Total lost packets 0 (0.000000%)" in output
        metrics = server.metrics()
        assert re.search(r"yggdrasil_turn_allocations_created_total [1-9]", metrics)
        assert server.terminate() == 0


def test_uclient_relays_over_an_ipv6_relayed_address(tmp_path: Path) -> None:
    """A client on IPv4 asks for an IPv6 relay (REQUESTED-ADDRESS-FAMILY) and reaches an IPv6
    peer; without ``turn.relay_ip_v6`` the same request is refused (440)."""
    with echo_peer("::1") as port:
        turn_port = free_port()
        env = {"YGG_TURN_RELAY_IP_V6": "::1"}
        with turn_server(tmp_path, turn_port, "--turn-allow-peer", "::1/128", env=env) as server:
            code, output = uclient(turn_port, port, "-x", peer_host="::1")
            assert code == 0, output[-2000:]
            assert received(output) == (500, 500)
            assert server.terminate() == 0
        turn_port = free_port()
        with turn_server(tmp_path, turn_port, "--turn-allow-peer", "::1/128"):
            code, output = uclient(turn_port, port, "-x", peer_host="::1")
            assert code != 0 or received(output)[1] == 0


def test_wrong_passwords_get_nothing(tmp_path: Path, peer: int) -> None:
    turn_port = free_port()
    with turn_server(tmp_path, turn_port):
        code, output = uclient(turn_port, peer, password="guess")
        assert code != 0 or received(output)[1] == 0


def test_the_deny_list_keeps_relays_off_loopback(tmp_path: Path, peer: int) -> None:
    turn_port = free_port()
    with turn_server(tmp_path, turn_port, allow_loopback=False) as server:
        code, output = uclient(turn_port, peer)
        assert code != 0 or received(output)[1] == 0  # nothing reached the loopback peer
        metrics = server.metrics()
        assert re.search(r"yggdrasil_turn_refused_peers_total [1-9]", metrics)


def test_a_devices_ephemeral_credentials_work_and_expire(tmp_path: Path, peer: int) -> None:
    turn_port = free_port()
    data_dir = tmp_path / "data"
    with turn_server(tmp_path, turn_port, static=False) as server:

        async def fetch() -> dict[str, object]:
            async with httpx.AsyncClient(base_url=server.api_url) as http:
                dev = await sign_in(
                    http, data_dir / "outbox", "ice@example.org", device_body=device("cam")
                )
                response = await dev.get("/api/v1/devices/cam/ice-servers")
                assert response.status_code == 200
                body: dict[str, object] = response.json()
                return body

        body = trio.run(fetch)
        servers = body["ice_servers"]
        assert isinstance(servers, list)
        assert servers[0]["urls"] == [f"stun:127.0.0.1:{turn_port}"]
        turn = servers[1]
        # No certificate: UDP and TCP, no turns: URL.
        assert turn["urls"] == [
            f"turn:127.0.0.1:{turn_port}?transport=udp",
            f"turn:127.0.0.1:{turn_port}?transport=tcp",
        ]
        for flags in ((), ("-t",)):
            code, output = uclient(
                turn_port, peer, *flags, user=turn["username"], password=turn["credential"]
            )
            relayed_without_loss(code, output)
        # The same name with an expiry in the past is refused.
        expired = "1:" + turn["username"].split(":", 1)[1]
        code, output = uclient(turn_port, peer, user=expired, password=turn["credential"])
        assert code != 0 or received(output)[1] == 0


def test_an_operator_credential_has_a_quota_of_its_own(tmp_path: Path, peer: int) -> None:
    """A static user holds more allocations than a device may (16): 24 clients at once relay
    without a refusal; ``turn.max_allocations_per_static_user`` still caps it."""
    turn_port = free_port()
    with turn_server(tmp_path, turn_port) as server:
        code, output = uclient(turn_port, peer, clients=24)
        relayed_without_loss(code, output, clients=24)
        assert server.terminate() == 0
    turn_port = free_port()
    env = {"YGG_TURN_MAX_ALLOCATIONS_PER_STATIC_USER": "4"}
    with turn_server(tmp_path, turn_port, env=env):
        code, output = uclient(turn_port, peer, clients=8)
        assert code != 0
        assert "error 486" in output


def test_turn_over_tls(tmp_path: Path, peer: int) -> None:
    """coturn's client over TLS (``-S``) and over TCP, channels and Send indications, with the
    static user and with the ephemeral credentials of a device that was offered ``turns:``."""
    from tests.test_turn_tls import Authority, install

    leaf = Authority().issue("localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    install(leaf, cert_file, key_file)
    turn_port, tls_port = free_port(), free_port()
    env = {
        "YGG_TURN_TLS_PORT": str(tls_port),
        "YGG_TURN_TLS_CERT_FILE": str(cert_file),
        "YGG_TURN_TLS_KEY_FILE": str(key_file),
    }
    with turn_server(tmp_path, turn_port, env=env) as server:
        # The TLS listener reports itself a moment after the API does (server_process waits
        # for the API), so wait for its line rather than expect it already.
        deadline = time.monotonic() + 15
        while not any(e.get("listener") == "turns" for e in server.log()):
            assert time.monotonic() < deadline, "no 'turns' listener line in the log"
            time.sleep(0.05)
        for port, flags in [
            (tls_port, ("-t", "-S")),
            (tls_port, ("-t", "-S", "-s")),
            (turn_port, ("-t",)),
        ]:
            code, output = uclient(port, peer, *flags)
            relayed_without_loss(code, output)

        async def fetch() -> dict[str, object]:
            async with httpx.AsyncClient(base_url=server.api_url) as http:
                dev = await sign_in(
                    http, tmp_path / "data" / "outbox", "tls@example.org", device_body=device("cam")
                )
                response = await dev.get("/api/v1/devices/cam/ice-servers")
                assert response.status_code == 200
                body: dict[str, object] = response.json()
                return body

        servers = trio.run(fetch)["ice_servers"]
        assert isinstance(servers, list)
        turn = servers[1]
        assert turn["urls"][2] == f"turns:127.0.0.1:{tls_port}?transport=tcp"
        code, output = uclient(
            tls_port, peer, "-t", "-S", user=turn["username"], password=turn["credential"]
        )
        relayed_without_loss(code, output)
        assert server.terminate() == 0
