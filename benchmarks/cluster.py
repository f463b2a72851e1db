"""A cluster of instances: what crossing between instances costs, what a second instance adds, and
the directory's two candidate homes.

Run:  .venv/bin/python -m benchmarks.cluster [--seconds 3] [--pairs 10] [--size 64]
Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and NATS with JetStream on 127.0.0.1:4222.

Two ``yggdrasil serve`` processes form one cluster (a fresh PostgreSQL database, one NATS, one
data directory for their shared keys, a bus prefix of this run's own); devices are registered
directly in the database, ten to a network, and their tokens minted with the data directory's key.
The load generator (a separate process, as in ``benchmarks.relay``) runs windowed pairs of devices,
64-byte ``send`` frames, acknowledgements without receipts (a message in the recipient's queue),
and measures in one run:

- **local**: every pair's two ends on instance A (the bus is there but unused): the baseline;
- **crossing**: every sender on A, every recipient on B: each message and each acknowledgement
  crosses NATS once;
- **one instance** against **two**: the same number of pairs, all on A, or half on A and half on
  B (each pair local to its instance): what a second instance adds to the cluster's rate.

It prints each rate as a ratio to the local baseline, with one-way latency p50/p99. Then the
directory: claims and releases of an address per second, as the cluster does them (a NATS
key-value ``create`` and a ``delete`` of that revision), against the same in PostgreSQL (an
``INSERT`` of the address's row, then a ``DELETE`` of it), one at a time from one task.

What a 2-core machine can show: the crossing cost and the directory figures carry over. The
scaling figure cannot: two instances, NATS, PostgreSQL and the load generator share two cores, so
the second instance competes for the same CPU the first one uses; on N machines each instance
has its own core(s), and the cluster's rate is about N times one instance's local rate, reduced
by the share of traffic that crosses instances (at the measured crossing cost).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks._harness import mint_tokens, raise_fd_limit, register_devices, start_server
from benchmarks.relay import Target, run_cell

PG = os.environ.get("YGG_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
NATS = os.environ.get("YGG_BENCH_NATS", "nats://127.0.0.1:4222")


# ----------------------------------------------------------------------------- set-up


async def _admin(sql: str) -> None:
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


def prepare(database_url: str, data_dir: Path, count: int, per_network: int) -> list[str]:
    """Register ``count`` devices in the cluster's database and mint their tokens."""
    from yggdrasil import open_asyncio_thread
    from yggdrasil.store import PostgresDatabase, migrate

    async def main() -> list[tuple[str, str]]:
        async with open_asyncio_thread() as bridge:
            db = await PostgresDatabase.open(
                database_url, bridge, min_size=1, max_size=2, query_timeout_s=60
            )
            try:
                await migrate(db)
                return await register_devices(db, count, per_network, data_dir=data_dir)
            finally:
                await db.aclose()

    return mint_tokens(data_dir, trio.run(main))


def start_instance(
    data_dir: Path, name: str, database_url: str, prefix: str
) -> tuple[subprocess.Popen[bytes], str]:
    relaxed = {
        "YGG_GATEWAY_MESSAGES_PER_S": "1000000",
        "YGG_GATEWAY_TENANT_MESSAGES_PER_S": "100000000",
        "YGG_GATEWAY_TENANT_BYTES_PER_S": "100000000000",
        "YGG_GATEWAY_MAX_SESSIONS_PER_USER": "100000",
        "YGG_GATEWAY_QUEUE_SIZE": "1024",
        "YGG_GATEWAY_PING_INTERVAL_S": "600",
        "YGG_BUS_PREFIX": prefix,
        "YGG_SERVER_INSTANCE_ID": name,
    }
    process, urls = start_server(
        data_dir,
        data_dir.parent / f"{name}.log",
        "--database-url",
        database_url,
        "--bus-url",
        NATS,
        env=relaxed,
    )
    return process, urls["gateway"]


# ----------------------------------------------------------------------------- load


class SplitTarget(Target):
    """Devices ``2i`` (senders) and ``2i + 1`` (recipients) on the gateways ``placement`` picks."""

    def __init__(self, urls: list[str], tokens: list[str], placement: str, pairs: int) -> None:
        super().__init__("yggdrasil", urls[0], tokens)
        self.urls = urls
        self.placement = placement
        self.pairs = pairs

    def url_for(self, index: int) -> str:
        pair, recipient = divmod(index, 2)
        if self.placement == "crossing":
            return self.urls[recipient]
        if self.placement == "spread":
            return self.urls[0 if pair < self.pairs // 2 else 1]
        return self.urls[0]

    async def connect(self, index: int) -> Any:
        self.url = self.url_for(index)
        return await super().connect(index)


def _cell(job: dict[str, Any], out: Any) -> None:
    raise_fd_limit()
    target = SplitTarget(job["urls"], job["tokens"], job["placement"], job["pairs"])
    out.put(trio.run(run_cell, target, job["pairs"], job["size"], job["seconds"], job["window"]))


def measure(urls: list[str], tokens: list[str], placement: str, args: Any) -> dict[str, float]:
    out: Any = multiprocessing.Queue()
    job = {
        "urls": urls,
        "tokens": tokens,
        "placement": placement,
        "pairs": args.pairs,
        "size": args.size,
        "seconds": args.seconds,
        "window": args.window,
    }
    process = multiprocessing.Process(target=_cell, args=(job, out))
    process.start()
    result: dict[str, float] = out.get(timeout=args.seconds + 120)
    process.join()
    return result


# ----------------------------------------------------------------------------- the directory


async def directory_rates(database_url: str, prefix: str, count: int) -> dict[str, float]:
    """Claims and releases per second: NATS key-value against PostgreSQL, one at a time."""
    import asyncpg
    import nats
    import trio_asyncio

    async def on_nats() -> float:
        nc = await nats.connect(NATS)
        try:
            js = nc.jetstream()
            kv = await js.create_key_value(bucket=f"{prefix}_bench", history=1)
            started = time.perf_counter()
            for i in range(count):
                revision = await kv.create(f"address-{i}", b"instance")
                await kv.delete(f"address-{i}", last=revision)
            elapsed = time.perf_counter() - started
            await js.delete_key_value(f"{prefix}_bench")
            return count / elapsed
        finally:
            await nc.close()

    async def on_postgres() -> float:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute(
                "CREATE TABLE bench_directory (address TEXT PRIMARY KEY, holder TEXT NOT NULL)"
            )
            started = time.perf_counter()
            for i in range(count):
                await connection.execute(
                    "INSERT INTO bench_directory VALUES ($1, 'instance')", f"address-{i}"
                )
                await connection.execute(
                    "DELETE FROM bench_directory WHERE address = $1 AND holder = 'instance'",
                    f"address-{i}",
                )
            elapsed = time.perf_counter() - started
            await connection.execute("DROP TABLE bench_directory")
            return count / elapsed
        finally:
            await connection.close()

    async with trio_asyncio.open_loop():
        return {
            "nats": await trio_asyncio.aio_as_trio(on_nats)(),
            "postgres": await trio_asyncio.aio_as_trio(on_postgres)(),
        }


# ----------------------------------------------------------------------------- report


def _row(name: str, result: dict[str, float], base: float) -> str:
    return (
        f"| {name} | {result['rate']:,.0f} | {result['rate'] / base:.2f} "
        f"| {result['p50']:.2f} / {result['p99']:.2f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--claims", type=int, default=1000, help="directory claims to time")
    args = parser.parse_args(argv)
    raise_fd_limit()
    database = f"ygg_bench_{secrets.token_hex(4)}"
    database_url = f"{PG}/{database}"
    prefix = f"bench{secrets.token_hex(3)}"
    trio.run(_admin, f"CREATE DATABASE {database}")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp) / "data"
            tokens = prepare(database_url, data_dir, 2 * args.pairs, per_network=10)
            urls = []
            for name in ("a", "b"):
                process, url = start_instance(data_dir, name, database_url, prefix)
                processes.append(process)
                urls.append(url)
            time.sleep(1.0)  # both instances see each other's heartbeats
            local = measure(urls, tokens, "local", args)
            crossing = measure(urls, tokens, "crossing", args)
            spread = measure(urls, tokens, "spread", args)
            directory = trio.run(directory_rates, database_url, prefix, args.claims)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        trio.run(_admin, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    base = local["rate"]
    print(
        f"cluster: 2 instances on {os.cpu_count()} cores, {args.pairs} pairs, {args.size} B, "
        f"window {args.window}, {args.seconds:g} s per cell"
    )
    print("| placement | msg/s | ratio to local | one-way p50 / p99 ms |")
    print("|---|---:|---:|---:|")
    print(_row("both ends on one instance (local)", local, base))
    print(_row("ends on different instances (crossing)", crossing, base))
    print(_row("half the pairs on each of two instances", spread, base))
    print()
    print("| directory | claims + releases /s | ratio to PostgreSQL |")
    print("|---|---:|---:|")
    for name in ("nats", "postgres"):
        rate = directory[name]
        print(f"| {name} | {rate:,.0f} | {rate / directory['postgres']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
