"""What the benchmarks and the tests both need to start a server and to speak to it.

The tests import this module (``tests/servers.py``, ``tests/devices.py``); it imports nothing of
theirs. ``relay`` loads only when a device session is opened: the TURN and HTTP benchmarks never
need it.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

    from relay.protocol import Welcome


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


async def hello(ws: WebSocketConnection, client: str, *, receipts: bool = False) -> Welcome:
    """Open the device session on a websocket the gateway has just upgraded: send ``hello``, and
    return the ``welcome`` (``RuntimeError`` if the gateway answers anything else)."""
    from relay.protocol import Hello, Welcome, decode_server_frame, encode

    await ws.send_message(encode(Hello(client=client, receipts=receipts)))
    welcome = decode_server_frame(await ws.get_message())
    if not isinstance(welcome, Welcome):
        raise RuntimeError(f"expected welcome, got {welcome!r}")
    return welcome
