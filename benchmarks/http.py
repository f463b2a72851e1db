"""The HTTP API on SQLite and on PostgreSQL, as a ratio to a hello-world on the same hypercorn.

Run:  .venv/bin/python -m benchmarks.http [--seconds 5] [--connections 32] [--devices 10]
Needs PostgreSQL on 127.0.0.1:5432 (user ``postgres``, trust auth; another server:
``YGG_BENCH_PG=postgresql://user@host:port``). A run takes about a minute with the defaults.

Starts, each in its own process and one after another: a bare quart-trio "hello world" on
hypercorn (the baseline: ``GET /healthz`` returning a small JSON object), then ``yggdrasil serve``
on a fresh SQLite data directory, then ``yggdrasil serve --database-url`` on a fresh PostgreSQL
database (created for the run and dropped at the end). Before each Yggdrasil server starts, one
user with ``--devices`` devices in its home network is created directly in its database, and a
**user** access token (no device: a device token may not register devices; naming the home
network, as a sign-in's does) is minted with the data directory's own key. The servers'
per-client and per-principal rate limits are raised so that they do not throttle the load.

A load generator in another process (keep-alive HTTP/1.1 over raw sockets, ``--connections``
connections, each with one request in flight) drives each target for 1 s of warm-up, then
``--seconds`` of measurement:

- the baseline hello-world;
- ``GET /healthz`` on the SQLite instance (framework, middleware, metrics, no store);
- authenticated ``GET /api/v1/devices`` (the devices of the home network the token names: token
  check, one page of devices) on SQLite, then on PostgreSQL;
- authenticated ``POST /api/v1/devices`` registering a new device each time (``device_id``
  ``b<connection>-<n>``; one audited write) on SQLite, then on PostgreSQL.

The hello-world is measured first and again last; its row (and every ratio) pools the two.

It prints requests per second, each as a ratio to the baseline measured in the same run, latency
p50 and p99 (every answer, from the request's first byte written to the answer's last byte read),
and any answer other than the expected 200 (GET) or 201 (POST); then PostgreSQL's POST rate as a
ratio to SQLite's. The load generator shares the machine's cores with the server (and with
PostgreSQL), so absolute figures are lower bounds; the ratios are the numbers to watch.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from benchmarks._harness import mint_user_token, register_devices, start_server

PG = os.environ.get("YGG_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")

# The [limits] buckets, raised so that a benchmark's load is never answered 429.
UNTHROTTLED = {
    f"YGG_LIMITS_{key}": "1000000"
    for key in ("PER_CLIENT_RATE", "PER_CLIENT_BURST", "PER_PRINCIPAL_RATE", "PER_PRINCIPAL_BURST")
}


# ----------------------------------------------------------------------------- baseline server


def hello_world(port_queue: multiprocessing.Queue[int]) -> None:
    """The baseline: the smallest quart-trio app on the same hypercorn worker."""
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart_trio import QuartTrio

    app = QuartTrio("hello")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def main() -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                lambda task_status: serve(app, config, task_status=task_status)
            )
            port_queue.put(int(binds[0].rsplit(":", 1)[1]))

    trio.run(main)


# ----------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Target:
    """One row of the table: what to request of which server, and the status expected."""

    name: str
    port: int
    path: str = "/healthz"
    token: str = ""
    register: bool = False
    """``POST`` a new device to ``path`` each time (else ``GET`` it)."""

    @property
    def expected(self) -> int:
        return 201 if self.register else 200

    def requests(self, label: str) -> Iterator[bytes]:
        """The requests of one connection, forever; ``label`` makes its device ids unique."""
        method = "POST" if self.register else "GET"
        head = f"{method} {self.path} HTTP/1.1\r\nHost: bench\r\n"
        if self.token:
            head += f"Authorization: Bearer {self.token}\r\n"
        if not self.register:
            request = (head + "\r\n").encode()
            while True:
                yield request
        n = 0
        while True:
            body = json.dumps(
                {"device_id": f"{label}-{n}", "name": f"bench {label}-{n}", "world_type": "midgard"}
            ).encode()
            yield (
                head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            n += 1


async def _answer(stream: trio.SocketStream, buffer: bytes) -> tuple[str, bool, bytes]:
    """Read one answer: its status (``closed`` if the server closed the connection instead),
    whether the connection stays open, and what was read beyond it."""
    while True:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buffer[:head_end].lower()
            length_at = head.find(b"content-length:")
            length = int(head[length_at + 15 :].split(b"\r\n", 1)[0]) if length_at >= 0 else 0
            if len(buffer) >= head_end + 4 + length:
                keep_alive = b"\r\nconnection: close" not in head
                return head[9:12].decode(), keep_alive, buffer[head_end + 4 + length :]
        chunk = await stream.receive_some(65536)
        if not chunk:
            return "closed", False, b""
        buffer += chunk


async def _connection(
    target: Target,
    label: str,
    stop_at: float,
    latencies: list[float],
    statuses: Counter[str],
) -> None:
    """One keep-alive connection, one request in flight, until ``stop_at``; a new connection
    whenever the server closes one (hypercorn does after ``keep_alive_max_requests``)."""
    requests = target.requests(label)
    while trio.current_time() < stop_at:
        stream = await trio.open_tcp_stream("127.0.0.1", target.port)
        buffer = b""
        async with stream:
            keep_alive = True
            while keep_alive and trio.current_time() < stop_at:
                started = time.perf_counter()
                await stream.send_all(next(requests))
                status, keep_alive, buffer = await _answer(stream, buffer)
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1


def load(
    target: Target,
    phase: str,
    seconds: float,
    connections: int,
    out: multiprocessing.Queue[tuple[list[float], dict[str, int]]],
) -> None:
    async def main() -> None:
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        stop_at = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(_connection, target, f"{phase}{i}", stop_at, latencies, statuses)
        out.put((latencies, dict(statuses)))

    trio.run(main)


def measure(target: Target, seconds: float, connections: int) -> dict[str, Any]:
    """1 s of warm-up, then ``seconds`` measured, in a load-generator process of its own."""
    queue: multiprocessing.Queue[tuple[list[float], dict[str, int]]] = multiprocessing.Queue()
    results = []
    for phase, duration in (("w", 1.0), ("b", seconds)):
        worker = multiprocessing.Process(
            target=load, args=(target, phase, duration, connections, queue)
        )
        worker.start()
        results.append(queue.get(timeout=duration + 120))
        worker.join()
    (_, warm_statuses), (latencies, statuses) = results
    return _summary(sorted(latencies), seconds, statuses, warm_statuses, target.expected)


def pooled(first: dict[str, Any], second: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Two measurements of one target as one (the baseline, before and after the others)."""
    summary = _summary(
        sorted(first["latencies"] + second["latencies"]),
        2 * seconds,
        Counter(first["statuses"]) + Counter(second["statuses"]),
        Counter(first["warm_statuses"]) + Counter(second["warm_statuses"]),
        200,
    )
    summary["rounds"] = (first["rps"], second["rps"])
    return summary


def _summary(
    latencies: list[float],
    seconds: float,
    statuses: dict[str, int],
    warm_statuses: dict[str, int],
    expected: int,
) -> dict[str, Any]:
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "latencies": latencies,
        "statuses": dict(statuses),
        "warm_statuses": dict(warm_statuses),
        "unexpected": {code: n for code, n in statuses.items() if code != str(expected)},
        "warm_unexpected": {code: n for code, n in warm_statuses.items() if code != str(expected)},
    }


# ----------------------------------------------------------------------------- servers


async def _postgres_admin(sql: str) -> None:
    import asyncpg
    import trio_asyncio

    async def run() -> None:
        connection = await asyncpg.connect(f"{PG}/postgres")
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(run)()


def prepare_sqlite(data_dir: Path, devices: int) -> str:
    """A user with ``devices`` devices in a fresh SQLite data directory; the user's token."""
    from yggdrasil import SqliteDatabase, migrate

    data_dir.mkdir(parents=True, exist_ok=True)

    async def main() -> list[tuple[str, str]]:
        db = await SqliteDatabase.open(data_dir / "yggdrasil.sqlite3")
        try:
            await migrate(db)
            return await register_devices(db, devices, per_network=devices, data_dir=data_dir)
        finally:
            await db.aclose()

    return mint_user_token(data_dir, *trio.run(main)[0])


def prepare_postgres(database_url: str, data_dir: Path, devices: int) -> str:
    """A user with ``devices`` devices in a fresh PostgreSQL database; the user's token."""
    from yggdrasil import open_asyncio_thread
    from yggdrasil.store import PostgresDatabase, migrate

    async def main() -> list[tuple[str, str]]:
        async with open_asyncio_thread() as bridge:
            db = await PostgresDatabase.open(
                database_url, bridge, min_size=1, max_size=2, query_timeout_s=60
            )
            try:
                await migrate(db)
                return await register_devices(db, devices, per_network=devices, data_dir=data_dir)
            finally:
                await db.aclose()

    return mint_user_token(data_dir, *trio.run(main)[0])


def start_yggdrasil(data_dir: Path, *args: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``yggdrasil serve`` with the limits raised; the process, its API port and its log."""
    log_path = data_dir.with_suffix(".log")
    process, urls = start_server(data_dir, log_path, *args, env=UNTHROTTLED)
    return process, int(urls["api"].rsplit(":", 1)[1]), log_path


def stop(process: subprocess.Popen[bytes], log_path: Path, show_log: bool) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if show_log:
        lines = log_path.read_text(errors="replace").splitlines()
        print(f"--- last lines of {log_path.name}:", *lines[-20:], sep="\n", file=sys.stderr)


def _any_unexpected(results: dict[str, dict[str, Any]]) -> bool:
    return any(result["unexpected"] or result["warm_unexpected"] for result in results.values())


# ----------------------------------------------------------------------------- report


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    ).stdout.strip()


def _commit() -> str:
    """The commit measured, and the files changed since (outside ``benchmarks/``), if any."""
    try:
        commit = _git("log", "--oneline", "-1")
        paths = [line.split(maxsplit=1)[1] for line in _git("status", "--porcelain").splitlines()]
        changed = [path for path in paths if not path.startswith("benchmarks/")]
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return commit + (f"\nplus uncommitted changes to {', '.join(changed)}" if changed else "")


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{code} x{count}" for code, count in sorted(counts.items())) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured per target")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--devices", type=int, default=10, help="in the user's home network")
    args = parser.parse_args(argv)
    run = (args.seconds, args.connections)
    started = time.monotonic()

    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    baseline_server = multiprocessing.Process(target=hello_world, args=(ports,), daemon=True)
    baseline_server.start()
    results: dict[str, dict[str, Any]] = {}
    database = f"ygg_bench_http_{secrets.token_hex(4)}"
    try:
        baseline_port = ports.get(timeout=30)
        hello = Target("hello-world", baseline_port)
        results["baseline hello-world"] = first_baseline = measure(hello, *run)
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp) / "sqlite"
            token = prepare_sqlite(data_dir, args.devices)
            process, port, log_path = start_yggdrasil(data_dir)
            try:
                for name, target in (
                    ("SQLite `/healthz`", Target("healthz", port)),
                    ("SQLite `GET /api/v1/devices`", Target("get", port, "/api/v1/devices", token)),
                    (
                        "SQLite `POST /api/v1/devices`",
                        Target("post", port, "/api/v1/devices", token, register=True),
                    ),
                ):
                    results[name] = measure(target, *run)
            finally:
                stop(process, log_path, _any_unexpected(results))

            trio.run(_postgres_admin, f"CREATE DATABASE {database}")
            try:
                database_url = f"{PG}/{database}"
                data_dir = Path(tmp) / "postgres"
                token = prepare_postgres(database_url, data_dir, args.devices)
                process, port, log_path = start_yggdrasil(data_dir, "--database-url", database_url)
                try:
                    for name, target in (
                        (
                            "PostgreSQL `GET /api/v1/devices`",
                            Target("get", port, "/api/v1/devices", token),
                        ),
                        (
                            "PostgreSQL `POST /api/v1/devices`",
                            Target("post", port, "/api/v1/devices", token, register=True),
                        ),
                    ):
                        results[name] = measure(target, *run)
                finally:
                    stop(process, log_path, _any_unexpected(results))
            finally:
                trio.run(_postgres_admin, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        # Again at the end: the baseline row pools both, so that drift of the machine during
        # the run moves the ratios less.
        results["baseline hello-world"] = pooled(first_baseline, measure(hello, *run), args.seconds)
    finally:
        baseline_server.kill()

    base = results["baseline hello-world"]["rps"]
    print(f"HTTP API at {_commit()}")
    print(
        f"{os.cpu_count()} cores, {args.connections} keep-alive connections, {args.seconds:g} s "
        f"per target, {args.devices} devices in the home network"
    )
    print("| target | req/s | ratio | p50 ms | p99 ms | other statuses |")
    print("|---|---:|---:|---:|---:|---|")
    for name, result in results.items():
        print(
            f"| {name} | {result['rps']:,.0f} | {result['rps'] / base:.2f} "
            f"| {result['p50_ms']:.1f} | {result['p99_ms']:.1f} "
            f"| {_statuses(result['unexpected'])} |"
        )
    sqlite_post = results["SQLite `POST /api/v1/devices`"]["rps"]
    postgres_post = results["PostgreSQL `POST /api/v1/devices`"]["rps"]
    print(f"PostgreSQL POST / SQLite POST: {postgres_post / sqlite_post:.2f}")
    before, after = results["baseline hello-world"]["rounds"]
    print(
        f"hello-world: {before:,.0f} req/s first, {after:,.0f} last (the baseline row pools both)"
    )
    for name, result in results.items():
        if result["warm_unexpected"]:
            print(f"warm-up of {name}: {_statuses(result['warm_unexpected'])}")
    print(f"({time.monotonic() - started:.0f} s in all)")
    return 1 if _any_unexpected(results) else 0


if __name__ == "__main__":
    sys.exit(main())
