"""Every command-line and start-up failure is one line on standard error and the right exit
status (2 for configuration errors, 1 for run-time ones), never a traceback: the real
``yggdrasil`` command in a subprocess, against real sockets, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from benchmarks._harness import yggdrasil_command
from relay.client import Credentials, DeviceClient, Disconnected
from tests.clients import RELAXED_LIMITS, count_mail, device, read_code, sign_in
from tests.conftest import fresh_pg_database, pg_url, require_postgres
from tests.servers import running_server
from yggdrasil.server import Running

pytestmark = pytest.mark.slow


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("YGG_")}
    # Any free operator port, so that another server on this machine (on the default 9464)
    # does not decide what a failure is; the operator port's own test names one.
    environment["YGG_OPERATOR_PORT"] = "0"
    environment.update(extra or {})
    return environment


def _one_line(result: subprocess.CompletedProcess[bytes], status: int) -> str:
    """The single line on standard error, after checking the exit status."""
    err = result.stderr.decode()
    assert result.returncode == status, (result.returncode, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("yggdrasil: "), lines[0]
    return lines[0]


async def _run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            [*yggdrasil_command(), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=_environment(env),
            cwd=cwd,
        )


async def fails(
    *args: str, status: int, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    """Run ``yggdrasil *args``; its one line of standard error (asserting the status)."""
    return _one_line(await _run(*args, env=env, cwd=cwd), status)


FREE_PORTS = ("--api-port", "0", "--gateway-port", "0", "--turn-port", "0")


@contextmanager
def occupied(kind: socket.SocketKind) -> Iterator[int]:
    """A port on 127.0.0.1 that another program holds (listening, for TCP)."""
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        yield holder.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# ------------------------------------------------------------------ 1. ports in use


@pytest.mark.parametrize(
    ("flag", "kind", "message"),
    [
        ("--api-port", socket.SOCK_STREAM, "the API port 127.0.0.1:{port} is in use"),
        ("--gateway-port", socket.SOCK_STREAM, "the gateway port 127.0.0.1:{port} is in use"),
        ("--turn-port", socket.SOCK_DGRAM, "the TURN port 127.0.0.1:{port} (UDP) is in use"),
        ("--turn-port", socket.SOCK_STREAM, "the TURN port 127.0.0.1:{port} (TCP) is in use"),
    ],
)
async def test_a_port_in_use_names_the_listener_and_its_address(
    tmp_path: Path, flag: str, kind: socket.SocketKind, message: str
) -> None:
    data = tmp_path / "data"
    with occupied(kind) as port:
        ports = dict(zip(FREE_PORTS[::2], FREE_PORTS[1::2], strict=True))
        ports[flag] = str(port)
        argv = [part for pair in ports.items() for part in pair]
        line = await fails("serve", "--data-dir", str(data), *argv, status=1)
    assert line == "yggdrasil: " + message.format(port=port)
    assert not data.exists()  # found before anything was written


async def test_the_operator_port_in_use_is_named_too(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with occupied(socket.SOCK_STREAM) as port:
        line = await fails(
            "serve", "--data-dir", str(data), *FREE_PORTS, status=1,
            env={"YGG_OPERATOR_PORT": str(port)},
        )  # fmt: skip
    assert line == f"yggdrasil: the operator listener port 127.0.0.1:{port} is in use"
    assert not data.exists()


async def test_an_operator_host_that_is_no_address_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    line = await fails(
        "serve", "--data-dir", str(tmp_path / "d"), *FREE_PORTS, status=2,
        env={"YGG_OPERATOR_HOST": "metrics.example"},
    )  # fmt: skip
    assert "operator.host must be an IP address" in line


async def test_two_listeners_on_one_port_are_a_configuration_error(tmp_path: Path) -> None:
    port = str(closed_port())
    line = await fails(
        "serve", "--data-dir", str(tmp_path / "d"), "--api-port", port, "--gateway-port", port,
        "--turn-port", "0", status=2,
    )  # fmt: skip
    assert line == f"yggdrasil: the API and the gateway are both configured on port {port}"


# ------------------------------------------------------------------ 2. PostgreSQL refuses


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["serve", "migrate"])
async def test_a_missing_postgres_database_is_named(tmp_path: Path, command: str) -> None:
    require_postgres()
    name = f"ygg_missing_{secrets.token_hex(4)}"
    extra = FREE_PORTS if command == "serve" else ()
    line = await fails(
        command, "--data-dir", str(tmp_path / "d"), "--database-url", pg_url(name), *extra,
        status=2,
    )  # fmt: skip
    assert line == f'yggdrasil: PostgreSQL at {pg_url(name)}: database "{name}" does not exist'
    assert not (tmp_path / "d").exists()


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["serve", "migrate"])
async def test_a_missing_postgres_role_is_named(tmp_path: Path, command: str) -> None:
    require_postgres()
    role = f"ygg_nobody_{secrets.token_hex(4)}"
    url = pg_url("postgres").replace("postgres@", f"{role}:hunter2@", 1)
    extra = FREE_PORTS if command == "serve" else ()
    line = await fails(command, "--database-url", url, *extra, status=2, cwd=tmp_path)
    assert f'role "{role}" does not exist' in line
    assert url.replace(":hunter2", "") in line
    assert "hunter2" not in line  # the password is never shown


# ------------------------------------------------------------------ 3. admin grant


async def test_admin_grant_of_an_unknown_user_on_sqlite(tmp_path: Path) -> None:
    data = tmp_path / "data"
    line = await fails("admin", "grant", "ghost@example.org", "--data-dir", str(data), status=2)
    assert line == (
        f"yggdrasil: no database at {data}/yggdrasil.sqlite3:"
        " is --data-dir (or --database-url) right?"
    )
    assert not data.exists()  # a wrong --data-dir gets no fresh database
    migrated = await _run("migrate", "--data-dir", str(data), "--log-level", "warning")
    assert migrated.returncode == 0, migrated.stderr
    line = await fails("admin", "grant", "ghost@example.org", "--data-dir", str(data), status=1)
    assert line == f"yggdrasil: no such user ghost@example.org in {data}/yggdrasil.sqlite3"


@pytest.mark.postgres
async def test_admin_grant_of_an_unknown_user_on_postgres(pg_database: str, tmp_path: Path) -> None:
    # An empty database is the wrong one: nothing is created in it.
    line = await fails("admin", "grant", "ghost@example.org", "--database-url", pg_database,
                       status=2)  # fmt: skip
    assert line == f"yggdrasil: {pg_database} holds no Yggdrasil data: is the URL right?"
    migrated = await _run("migrate", "--database-url", pg_database, "--log-level", "warning")
    assert migrated.returncode == 0, migrated.stderr
    # Addresses are found by their blind index, whose key is in the servers' keyring.
    keyring = tmp_path / "data" / "secrets" / "data-keyring.json"
    line = await fails("admin", "grant", "ghost@example.org", "--database-url", pg_database,
                       "--data-dir", str(tmp_path / "data"), status=2)  # fmt: skip
    assert line == (
        f"yggdrasil: no data keyring at {keyring}: is --data-dir (or encryption.key_file) right?"
    )
    made = await _run("keys", "rotate-data", "--data-dir", str(tmp_path / "data"))
    assert made.returncode == 0, made.stderr
    line = await fails("admin", "grant", "Ghost@Example.org", "--database-url", pg_database,
                       "--data-dir", str(tmp_path / "data"), status=1)  # fmt: skip
    assert line == f"yggdrasil: no such user Ghost@Example.org in {pg_database}"


# ------------------------------------------------------------------ 4, 5, 8, 10: bad values


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--host", "999.1.1.1"],
            "server.host must be an IP address (0.0.0.0 or :: for every interface),"
            " not '999.1.1.1'",
        ),
        (
            ["--host", "192.0.2.1"],  # TEST-NET-1: never an address of this machine
            "server.host 192.0.2.1 is not an address of this machine"
            " (the API cannot bind 192.0.2.1:8080)",
        ),
        (["--turn-allow-peer", "10.0.0.0/33"], "turn.allow_peers: '10.0.0.0/33' is not a CIDR"),
        (
            ["--turn-static-user", "nopassword"],
            "turn.static_users: the entry for user 'nopassword' is not USER:PASSWORD",
        ),
        (
            ["--turn-static-user", "ops:"],
            "turn.static_users: the entry for user 'ops' is not USER:PASSWORD",
        ),
        (
            ["--smtp-url", "http://user:pw@mail.example"],
            "mail.smtp_url must start with smtp://, smtp+starttls:// or smtps://",
        ),
        (["--smtp-url", "smtp://user:pw@"], "mail.smtp_url names no host"),
        (["--smtp-url", "smtp://user:pw@mail.example:99999"], "mail.smtp_url has an invalid"),
        (["--smtp-url", "smtps://mail.example:port"], "mail.smtp_url has an invalid"),
        (["--api-port", "70000"], "invalid api.port: expected `int` <= 65535"),
    ],
)
async def test_bad_values_are_refused_before_anything_is_written(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    data = tmp_path / "data"
    ports = [] if "--api-port" in flags else ["--api-port", "8080"]
    line = await fails(
        "serve", "--data-dir", str(data), *ports, "--gateway-port", "0", "--turn-port", "0",
        *flags, status=2,
    )  # fmt: skip
    assert line.startswith(f"yggdrasil: {message}")
    assert ":pw" not in line
    assert not data.exists()


async def test_debug_shows_the_traceback_and_still_ends_with_the_line(tmp_path: Path) -> None:
    for argv in (["--debug", "serve"], ["serve", "--debug"]):
        result = await _run(*argv, "--data-dir", str(tmp_path / "d"), "--host", "999.1.1.1")
        err = result.stderr.decode()
        assert result.returncode == 2
        assert "Traceback" in err
        assert err.splitlines()[-1].startswith("yggdrasil: server.host must be an IP address")


# ------------------------------------------------------------------ 6. keys rotate


async def test_keys_rotate_on_a_missing_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "nowhere"
    line = await fails("keys", "rotate", "--data-dir", str(data), status=2)
    assert line == (
        f"yggdrasil: no signing key in {data}/secrets: is --data-dir right?"
        " ('yggdrasil serve' creates the key)"
    )
    assert not data.exists()


# ------------------------------------------------------------------ 9. the TOML file


async def test_a_toml_value_of_the_wrong_type_names_file_section_and_key(tmp_path: Path) -> None:
    config = tmp_path / "ygg.toml"
    config.write_text('[api]\nport = "18240"\n')
    line = await fails("serve", "--config", str(config), "--data-dir", str(tmp_path / "d"),
                       status=2)  # fmt: skip
    assert line == f"yggdrasil: {config}: [api] port: expected `int`, got `str`"
    assert not (tmp_path / "d").exists()


async def test_environment_values_are_still_converted(tmp_path: Path) -> None:
    env = {"YGG_API_PORT": "18240", "YGG_LOG_LEVEL": "warning", "YGG_SERVER_GRACE_S": "2.5"}
    result = await _run("migrate", "--data-dir", str(tmp_path / "d"), env=env)
    assert result.returncode == 0, result.stderr
    line = await fails("migrate", "--data-dir", str(tmp_path / "d"), status=2,
                       env={"YGG_API_PORT": "eighty"})  # fmt: skip
    assert line == "yggdrasil: YGG_API_PORT='eighty': expected `int`, got `str`"


# ------------------------------------------------------------------ 7. device commands


async def test_device_login_without_a_server_names_the_url(tmp_path: Path) -> None:
    api = f"http://127.0.0.1:{closed_port()}"
    line = await fails(
        "device", "login", "--api", api, "--email", "me@example.org", "--device-id", "laptop",
        status=1, cwd=tmp_path,
    )  # fmt: skip
    assert line.startswith(f"yggdrasil: cannot reach the API at {api}: ")
    assert "connection refused" in line.lower()
    assert not (tmp_path / "yggdrasil-device.json").exists()


@pytest.mark.parametrize(
    "task", [["peers"], ["listen"], ["send", "phone", "hi"], ["request", "phone", "echo"]]
)
async def test_device_commands_without_a_server_name_the_url(
    tmp_path: Path, task: list[str]
) -> None:
    gateway = f"ws://127.0.0.1:{closed_port()}"
    credentials = tmp_path / "laptop.json"
    credentials.write_bytes(
        msgspec.json.encode(
            Credentials(
                api_url=f"http://127.0.0.1:{closed_port()}",
                gateway_url=gateway,
                device_id="laptop",
                network_id="n_x",
                access_token="at",
                refresh_token="rt",
            )
        )
    )
    line = await fails("device", *task, "--credentials", str(credentials), status=1)
    assert line.startswith(f"yggdrasil: cannot reach the gateway at {gateway}: ")
    line = await fails("device", *task, "--credentials", str(tmp_path / "none.json"), status=1)
    assert line == (
        f"yggdrasil: no credentials in {tmp_path / 'none.json'}; run 'yggdrasil device login' first"
    )


# ------------------------------------------------------------------ 11. codes and the journey


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    with trio.fail_after(timeout_s):
        while True:
            if condition():
                return
            await trio.sleep(0.05)


async def _login(
    running: Running, outbox: Path, cwd: Path, *args: str, email: str | None
) -> subprocess.CompletedProcess[bytes]:
    """``yggdrasil device login``, typing the e-mail code when one is sent."""
    argv = [*yggdrasil_command(), "device", "login", "--api", running.api_url]
    argv += ["--gateway", running.gateway_url, *args]
    if email is not None:
        argv += ["--email", email]
    seen = count_mail(outbox, email) if email else 0
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=_environment(),
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    out, err = bytearray(), bytearray()

    async def collect(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        async for chunk in stream:
            into.extend(chunk)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, process.stdout, out)
            nursery.start_soon(collect, process.stderr, err)
            if email is not None and b"a code was sent" not in err:
                with trio.move_on_after(10):
                    code = await read_code(outbox, email, seen=seen)
                    await process.stdin.send_all(f"{code}\n".encode())
            await process.stdin.aclose()
            await process.wait()
    assert process.returncode is not None
    return subprocess.CompletedProcess(argv, process.returncode, bytes(out), bytes(err))


@pytest.fixture
async def running(data_dir: Path, asyncio_loop: None) -> AsyncIterator[Running]:
    """One instance with the default sign-in limits (three codes per address)."""
    async with running_server(data_dir) as running:
        yield running


async def test_device_login_shows_when_to_retry_after_too_many_codes(
    running: Running, outbox: Path, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=running.api_url) as http:
        for _ in range(3):  # the three codes one client may ask for, for one address
            sent = await http.post("/api/v1/users/login", json={"email": "me@example.org"})
            assert sent.status_code == 202
    result = await _login(
        running, outbox, tmp_path, "--device-id", "laptop", email="me@example.org"
    )
    line = _one_line(result, 1)
    assert line in {
        "yggdrasil: too many codes requested; try again in 15 min",
        "yggdrasil: too many codes requested; try again in 14 min",
    }


async def test_the_documented_journey_asks_for_one_code(
    running: Running, outbox: Path, tmp_path: Path
) -> None:
    """docs/protocol.md, "Trying it by hand": two devices, one e-mail code, within the limits."""
    email = "me@example.org"
    laptop = await _login(
        running, outbox, tmp_path, "--device-id", "laptop", "--credentials", "laptop.json",
        email=email,
    )  # fmt: skip
    assert laptop.returncode == 0, laptop.stderr
    assert laptop.stdout.decode().startswith("signed in as laptop in network ")
    phone = await _login(
        running, outbox, tmp_path, "--device-id", "phone", "--credentials", "phone.json",
        email=None,
    )  # fmt: skip
    assert phone.returncode == 0, phone.stderr
    assert count_mail(outbox, email) == 1
    for name in ("laptop.json", "phone.json", "yggdrasil-account.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    # Signing the laptop in again while its credentials exist is refused in words.
    again = await _login(
        running, outbox, tmp_path, "--device-id", "laptop", "--credentials", "other.json",
        email=None,
    )  # fmt: skip
    assert _one_line(again, 1).startswith("yggdrasil: the device laptop is in network ")

    async with trio.open_nursery() as nursery:
        listen = await trio.lowlevel.open_process(
            [*yggdrasil_command(), "device", "listen", "--credentials", "laptop.json"],
            stdout=subprocess.PIPE,
            cwd=tmp_path,
            env=_environment(),
        )
        assert listen.stdout is not None
        seen = bytearray()

        async def read_listen() -> None:
            assert listen.stdout is not None
            async for chunk in listen.stdout:
                seen.extend(chunk)

        nursery.start_soon(read_listen)
        await until(lambda: b"connected as laptop" in seen)
        peers = await _run("device", "peers", "--credentials", "phone.json", cwd=tmp_path)
        assert peers.returncode == 0, peers.stderr
        assert peers.stdout.decode().splitlines()[0].startswith("laptop\tonline\t")
        sent = await _run("device", "send", "laptop", "hello", "--credentials", "phone.json",
                          cwd=tmp_path)  # fmt: skip
        assert (sent.returncode, sent.stdout.decode()) == (0, "delivered\n"), sent.stderr
        await until(lambda: b"message from phone: hello" in seen)
        listen.terminate()
        await listen.wait()
    assert count_mail(outbox, email) == 1


# ------------------------------------------------------------------ 12. a role change


async def test_admin_grant_revokes_the_users_tokens_and_not_their_devices(
    backend: str, data_dir: Path, outbox: Path, asyncio_loop: None
) -> None:
    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        where = ["--data-dir", str(data_dir)]
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
            # The data directory holds the keyring that finds the address's blind index.
            where = ["--database-url", database["url"], "--data-dir", str(data_dir)]
        running = await stack.enter_async_context(
            running_server(
                data_dir, limits=RELAXED_LIMITS, database=database,
                auth={"revocation_sync_s": 0.2},
            )
        )  # fmt: skip
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=running.api_url))
        email = "ada@example.org"
        user = await sign_in(http, outbox, email)
        laptop = await sign_in(http, outbox, email, device_body=device("laptop"))
        session = laptop.session
        client = DeviceClient(
            Credentials(
                api_url=running.api_url,
                gateway_url=running.gateway_url,
                device_id=session["device_id"],
                network_id=session["network_id"],
                access_token=session["access_token"],
                refresh_token=session["refresh_token"],
            )
        )
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        await nursery.start(client.run)
        with trio.fail_after(10):
            await client.wait_connected()

        granted = await _run("admin", "grant", email, *where, "--log-level", "warning")
        assert granted.returncode == 0, granted.stderr
        assert granted.stdout.decode() == (
            f"{email} now has the role operator; their own tokens were revoked\n"
        )
        # The running server learns of it from the store (auth.revocation_sync_s).
        with trio.fail_after(10):
            while True:
                if (await user.get("/api/v1/users/me")).status_code == 401:
                    break
                await trio.sleep(0.05)
        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": user.session["refresh_token"]}
        )
        assert refreshed.status_code == 401
        # The device's session stays up and its tokens keep working.
        await trio.sleep(1.0)  # several syncs: a wrongly revoked session would close now
        assert client.connected
        assert client.connections == 1
        while True:
            try:
                event = client.events.get_nowait()
            except trio.WouldBlock:
                break
            assert not isinstance(event, Disconnected)
        assert (await laptop.get("/api/v1/devices")).status_code == 200
        device_refresh = await http.post(
            "/api/v1/auth/refresh",
            json={
                "refresh_token": session["refresh_token"],
                "device_id": "laptop",
                "network_id": session["network_id"],
            },
        )
        assert device_refresh.status_code == 200
        # A new sign-in carries the role.
        operator = await sign_in(http, outbox, email)
        found = await operator.get("/api/admin/users", params={"email": email})
        assert found.status_code == 200
        # Granting it again changes nothing and revokes nothing.
        again = await _run("admin", "grant", email, *where, "--log-level", "warning")
        assert again.stdout.decode() == f"{email} has the role operator already; nothing changed\n"
        assert (await operator.get("/api/v1/users/me")).status_code == 200
