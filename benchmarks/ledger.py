"""Ledger settlements per second on SQLite and PostgreSQL, as a ratio to bare single-row INSERTs.

Run:  .venv/bin/python -m benchmarks.ledger [--pairs 2000] [--workers 32]
Needs PostgreSQL on 127.0.0.1:5432 (user ``postgres``, trust auth; another server:
``YGG_BENCH_PG=postgresql://user@host:port``); ``--sqlite-only`` skips it. About 30 s.

For each backend, in this process and one after the other, on a fresh database (a temporary
SQLite file; a PostgreSQL database created for the run and dropped at the end), with the
migrations applied:

- the baseline: ``--pairs`` write transactions of one single-row ``INSERT`` each into a table of
  its own (``bench_rows``: a text key and a number), through the same ``Database.write`` units;
- the target: ``--pairs`` hold + capture pairs through :class:`yggdrasil.billing.Ledger` (each
  with its idempotency key: a hold of 100 cents, then a capture of 60 to a provider's earnings
  and the company's fee; the rest stays held), two write transactions per pair.

Both run ``--workers`` concurrent tasks (each its own funded user, so that they contend on the
database as a real load does, not on one balance row). It prints pairs per second, the baseline's
INSERTs per second, and their ratio (hold+capture pairs per bare INSERT transaction), then checks
the ledger's invariants (every account sums to zero) once the load is done.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from yggdrasil import (
    AsyncioThread,
    Database,
    PostgresDatabase,
    SqliteDatabase,
    Tx,
    load_config,
    migrate,
    open_asyncio_thread,
)
from yggdrasil.billing import Ledger, Posting, company_account, split, user_account

PG = os.environ.get("YGG_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


async def run_workers(
    workers: int, total: int, one: Callable[[int, int], Awaitable[None]]
) -> float:
    """``one(worker, n)`` ``total`` times over ``workers`` tasks; the seconds it took."""
    counter = iter(range(total))

    async def worker(w: int) -> None:
        for n in counter:
            await one(w, n)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(workers):
            nursery.start_soon(worker, w)
    return time.perf_counter() - started


async def bare_inserts(db: Database, total: int, workers: int) -> float:
    async def create(tx: Tx) -> None:
        await tx.execute_script(
            "CREATE TABLE IF NOT EXISTS bench_rows (id TEXT PRIMARY KEY, n BIGINT NOT NULL);\n"
        )

    await db.write(create)

    async def one(w: int, n: int) -> None:
        async def insert(tx: Tx) -> None:
            await tx.execute("INSERT INTO bench_rows (id, n) VALUES ($1, $2)", f"r{w}-{n}", n)

        await db.write(insert)

    return await run_workers(workers, total, one)


async def hold_capture_pairs(ledger: Ledger, total: int, workers: int) -> float:
    run = secrets.token_hex(4)
    users = [f"u_bench{run}{w}" for w in range(workers)]
    provider = f"u_provider{run}"
    for user in users:
        await ledger.deposit(
            user, 100 * total, key=f"fund-{user}", provider="sandbox", provider_ref="bench"
        )
    fee, earned = split(60, ledger.config.company_fee_bp)
    legs = [
        Posting(user_account(provider, "earnings"), earned),
        Posting(company_account("fees"), fee),
    ]

    async def one(w: int, n: int) -> None:
        hold = await ledger.hold(users[w], 100, key=f"h{n}", purpose="compute")
        await ledger.capture(hold.hold_id, 60, key=f"c{n}", to=legs)

    return await run_workers(workers, total, one)


async def measure(name: str, db: Database, pairs: int, workers: int) -> dict[str, Any]:
    await migrate(db)
    ledger = Ledger(db, load_config().ledger)
    baseline_s = await bare_inserts(db, pairs, workers)
    target_s = await hold_capture_pairs(ledger, pairs, workers)
    check = await ledger.verify()
    if not check.ok:
        raise SystemExit(f"{name}: the ledger's invariants do not hold: {check}")
    return {
        "backend": name,
        "inserts_per_s": pairs / baseline_s,
        "pairs_per_s": pairs / target_s,
        "ratio": baseline_s / target_s,
    }


async def on_postgres(bridge: AsyncioThread, pairs: int, workers: int) -> dict[str, Any]:
    import asyncpg

    name = f"ygg_bench_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(f"{PG}/postgres")
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    await bridge.run(admin, f"CREATE DATABASE {name}")
    try:
        db = await PostgresDatabase.open(
            f"{PG}/{name}", bridge, min_size=4, max_size=10, query_timeout_s=30
        )
        try:
            return await measure("PostgreSQL", db, pairs, workers)
        finally:
            await db.aclose()
    finally:
        await bridge.run(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def main(pairs: int, workers: int, sqlite_only: bool) -> None:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        db = await SqliteDatabase.open(Path(folder) / "bench.sqlite3")
        try:
            results.append(await measure("SQLite", db, pairs, workers))
        finally:
            await db.aclose()
    if not sqlite_only:
        async with open_asyncio_thread("bench-asyncio") as bridge:
            results.append(await on_postgres(bridge, pairs, workers))
    print(f"{pairs} pairs, {workers} workers")
    print(f"{'backend':<12} {'INSERT tx/s':>12} {'hold+capture/s':>15} {'ratio':>7}")
    for row in results:
        print(
            f"{row['backend']:<12} {row['inserts_per_s']:>12,.0f} {row['pairs_per_s']:>15,.0f}"
            f" {row['ratio']:>7.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    trio.run(main, args.pairs, args.workers, args.sqlite_only)
