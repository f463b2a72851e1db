"""NATS for tests: the machine's server (127.0.0.1:4222, with JetStream) shared by every test under
a prefix of its own, or a private ``nats-server`` a test may stop and start again."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from benchmarks._harness import free_port
from tests.conftest import IN_CI
from tests.servers import ServerProcess, server_process

NATS_HOST = os.environ.get("YGG_TEST_NATS_HOST", "127.0.0.1")
NATS_PORT = int(os.environ.get("YGG_TEST_NATS_PORT", "4222"))
NATS_URL = f"nats://{NATS_HOST}:{NATS_PORT}"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_nats() -> str:
    """The shared NATS server's URL; skip without it, except in CI, where that fails."""
    if _reachable(NATS_HOST, NATS_PORT):
        return NATS_URL
    if IN_CI:
        pytest.fail(f"NATS is not reachable on {NATS_HOST}:{NATS_PORT} (CI=true)")
    pytest.skip(f"NATS is not reachable on {NATS_HOST}:{NATS_PORT}")


def unique_prefix() -> str:
    """Subjects and buckets of one test's cluster, apart from every other test's."""
    return f"t{secrets.token_hex(5)}"


class PrivateNats:
    """A ``nats-server -js`` of a test's own, on a free loopback port, that it may restart."""

    def __init__(self, store: Path) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).exists():
            if IN_CI:
                pytest.fail("nats-server is missing (Debian's nats-server package)")
            pytest.skip("nats-server is missing")
        self.binary = binary
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _reachable("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("the private nats-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def private_nats(store: Path) -> Iterator[PrivateNats]:
    server = PrivateNats(store)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def cluster_env(prefix: str, **extra: str) -> dict[str, str]:
    """The environment of one cluster's instances in tests: fast liveness, relaxed limits."""
    from tests.clients import RELAXED_LIMITS

    env = {
        "YGG_BUS_PREFIX": prefix,
        "YGG_BUS_HEARTBEAT_S": "0.3",
        "YGG_BUS_INSTANCE_TIMEOUT_S": "1.5",
        "YGG_BUS_RECONNECT_WAIT_S": "0.5",
        "YGG_AUTH_CODES_PER_ADDRESS": "50",
        "YGG_AUTH_CODES_PER_ADDRESS_TOTAL": "500",
        "YGG_GATEWAY_CONFIRM_TIMEOUT_S": "5",
    }
    for key, value in RELAXED_LIMITS.items():
        env[f"YGG_LIMITS_{key.upper()}"] = str(value)
    env.update(extra)
    return env


@contextmanager
def cluster_processes(
    data_dir: Path, count: int, *, database_url: str, bus_url: str, env: dict[str, str]
) -> Iterator[list[ServerProcess]]:
    """``count`` instances of one cluster: one PostgreSQL, one NATS, one data directory (the
    instances of a cluster share its secrets), started one after the other."""
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                server_process(
                    data_dir,
                    "--database-url",
                    database_url,
                    "--bus-url",
                    bus_url,
                    env={**env, "YGG_SERVER_INSTANCE_ID": f"i{n}"},
                )
            )
            for n in range(count)
        ]
        yield servers
