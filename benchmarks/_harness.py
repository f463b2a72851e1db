"""What the benchmarks and the tests both need to start a server and to speak to it.

The tests import this module (``tests/servers.py``, ``tests/devices.py``); it imports nothing of
theirs. ``relay`` loads only when a device session is opened: the TURN and HTTP benchmarks never
need it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

    from relay.protocol import AckMode, Welcome
    from yggdrasil import Database


def free_port() -> int:
    """A loopback port number free for both UDP and TCP (TURN listens on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def yggdrasil_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m yggdrasil``."""
    script = Path(sys.executable).with_name("yggdrasil")
    if script.exists():
        return [str(script)]
    found = shutil.which("yggdrasil")
    return [found] if found else [sys.executable, "-m", "yggdrasil"]


async def hello(
    ws: WebSocketConnection, client: str, *, receipts: bool = False, acks: AckMode = "each"
) -> Welcome:
    """Open the device session on a websocket the gateway has just upgraded: send ``hello``, and
    return the ``welcome`` (``RuntimeError`` if the gateway answers anything else)."""
    from relay.protocol import Hello, Welcome, decode_server_frame, encode

    await ws.send_message(encode(Hello(client=client, receipts=receipts, acks=acks)))
    welcome = decode_server_frame(await ws.get_message())
    if not isinstance(welcome, Welcome):
        raise RuntimeError(f"expected welcome, got {welcome!r}")
    return welcome


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to its hard limit (thousands of sockets)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_command(data_dir: Path, *args: str) -> list[str]:
    """``yggdrasil serve`` on ``data_dir`` with every listener on a free port, logging JSON."""
    return [
        *yggdrasil_command(),
        "serve",
        "--data-dir",
        str(data_dir),
        "--api-port",
        "0",
        "--gateway-port",
        "0",
        "--turn-port",
        "0",
        "--log-format",
        "json",
        *args,
    ]


def start_server(
    data_dir: Path, log_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """``yggdrasil serve`` on a data directory, every listener on a free port, logging JSON to
    ``log_path``; returns the process and each listener's URL once the API and the gateway
    listen (``RuntimeError`` with the log if it stops first). ``YGG_`` variables of this process
    are not passed on: only ``env``'s (the operator listener is on a free port too)."""
    import json
    import os
    import time

    clean = {key: value for key, value in os.environ.items() if not key.startswith("YGG_")}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            serve_command(data_dir, *args),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**clean, "YGG_OPERATOR_PORT": "0", **(env or {})},
            preexec_fn=raise_fd_limit,
        )
    urls: dict[str, str] = {}
    for _ in range(600):
        for line in log_path.read_text().splitlines():
            if '"listener":' in line:
                record = json.loads(line)
                urls[record["listener"]] = record["url"]
        if "api" in urls and "gateway" in urls:
            return process, urls
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(log_path.read_text())


async def register_devices(
    db: Database, count: int, per_network: int, *, data_dir: Path
) -> list[tuple[str, str]]:
    """Register devices ``d0`` .. ``d<count-1>`` directly in a migrated database,
    ``per_network`` to a user and network; each device's ``(user_id, network_id)``. Their
    personal data is sealed with the keyring of ``data_dir``, the servers' data directory."""
    from yggdrasil import NewDevice, Tx, load_or_create, open_vault
    from yggdrasil.accounts import insert_user
    from yggdrasil.devices import insert_device

    load_or_create(data_dir)  # the keyring starts from the data key, as the server's does
    vault = open_vault(data_dir)
    assert vault is not None
    db.vault = vault

    owners: list[tuple[str, str]] = []

    async def register(tx: Tx) -> None:
        for i in range(count):
            if i % per_network == 0:
                user_id, network_id = await insert_user(tx, db.vault, f"bench{i}@example.org")
            owners.append((user_id, network_id))
            await insert_device(
                tx, network_id, user_id, NewDevice(f"d{i}", f"bench {i}", "midgard"), vault=db.vault
            )

    await db.write(register)
    return owners


def mint_tokens(data_dir: Path, owners: list[tuple[str, str]]) -> list[str]:
    """Access tokens for the devices ``register_devices`` made, signed with the data
    directory's own key (created if it has none yet)."""
    from yggdrasil import TokenService, load_or_create

    data_dir.mkdir(parents=True, exist_ok=True)
    tokens = TokenService(
        load_or_create(data_dir), issuer="yggdrasil", audience="yggdrasil-api", access_ttl_s=3600
    )
    return [
        tokens.issue(
            user_id=user_id, role="user", family_id="f_bench", network_id=net, device_id=f"d{i}"
        )[0]
        for i, (user_id, net) in enumerate(owners)
    ]


def mint_user_token(data_dir: Path, user_id: str, home_network_id: str) -> str:
    """A **user** access token (no device: it acts on the whole account, e.g. registers devices)
    for a user ``register_devices`` made, naming their home network as a sign-in's token does,
    signed with the data directory's own key (created if it has none yet)."""
    from yggdrasil import TokenService, load_or_create

    data_dir.mkdir(parents=True, exist_ok=True)
    tokens = TokenService(
        load_or_create(data_dir), issuer="yggdrasil", audience="yggdrasil-api", access_ttl_s=3600
    )
    return tokens.issue(
        user_id=user_id, role="user", family_id="f_bench_user", home_network_id=home_network_id
    )[0]
