"""Global locks: uncontended acquire + release per second, against a bare router request/reply.

Run:  .venv/bin/python -m benchmarks.locks [--seconds 5] [--clients 1,16] [--no-postgres]
PostgreSQL on 127.0.0.1:5432 (trust auth) adds its rows; without it they are skipped.

One process, one trio run, one router on the in-process bus, as one instance runs them:

- **baseline**: a bare echo actor; each client sends a request and awaits the reply, in a loop
  (a round trip through the router: the rule, a mailbox, the reply's correlation);
- **locks**: the network's lock manager (``locks/<network>``, started by the router on first
  use, as in the server) on a real store; each client acquires its own lock (no waiting, no
  contention) and releases it, in a loop. One acquire + release is two round trips through the
  router and two committed writes (the grant with its fencing token, compare-and-set; the
  release), so the ratio says what the store and the manager add to two bare round trips.

Each row runs ``--seconds`` after a short warm-up, with 1 and with 16 concurrent clients (each
with its own lock, all in one network: one manager serves them all, in order). It prints each
rate, and the lock rows as a ratio to the baseline's round trips per second with the same number
of clients.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import msgspec
import trio

from actors import Actor, Address, Codec, Envelope, InProcessHub, Placement, Router
from yggdrasil import (
    Config,
    Database,
    PostgresDatabase,
    SqliteDatabase,
    Store,
    migrate,
    open_asyncio_thread,
    tenant_rule,
)
from yggdrasil.locks import (
    LOCK_MESSAGES,
    Acquire,
    Granted,
    Release,
    Released,
    lock_managers,
    locks_address,
)

PG = os.environ.get("YGG_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


class Ping(msgspec.Struct, frozen=True, tag="bench.ping"):
    n: int


class Echo(Actor):
    """The baseline: answers every request at once."""

    mailbox_capacity = 1024

    async def handle(self, envelope: Envelope) -> None:
        await self.reply(envelope, envelope.body)


async def measure(clients: int, seconds: float, one: Callable[[int], Awaitable[None]]) -> float:
    """Operations per second: ``clients`` tasks each calling ``one(client)`` in a loop, after
    a warm-up of a fifth of ``seconds``; each finishes the operation it is in at the end (a
    write is never cut off half-way)."""
    counts = [0] * clients
    counting = False
    stopping = False

    async def client(n: int) -> None:
        while not stopping:
            await one(n)
            if counting:
                counts[n] += 1

    async with trio.open_nursery() as nursery:
        for n in range(clients):
            nursery.start_soon(client, n)
        await trio.sleep(seconds / 5)
        counting = True
        started = time.perf_counter()
        await trio.sleep(seconds)
        elapsed = time.perf_counter() - started
        counting = False
        stopping = True
    return sum(counts) / elapsed


@asynccontextmanager
async def instance(db: Database | None) -> AsyncIterator[Router]:
    """One router with the echo actor and (over ``db``) the ``locks`` kind."""
    router = Router("bench", InProcessHub(Codec(Ping, *LOCK_MESSAGES)).bus(), rule=tenant_rule)
    router.define("service", placement=Placement.INSTANCE)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.bus.serve)
        await nursery.start(Echo(Address.of("service", "echo")).run, router)
        if db is not None:
            store = Store(db)
            managers = lock_managers(router, "locks", lambda: store.locks, Config().locks)
            await nursery.start(managers.run)
        yield router
        nursery.cancel_scope.cancel()


async def baseline(clients: int, seconds: float) -> float:
    me, echo = Address.of("service", "bench"), Address.of("service", "echo")
    async with instance(None) as router:

        async def one(n: int) -> None:
            await router.request(me, echo, Ping(n), timeout_s=10)

        return await measure(clients, seconds, one)


async def locks(db: Database, clients: int, seconds: float) -> float:
    _, home = await Store(db).create_user(f"bench-{secrets.token_hex(4)}@example.org")
    target = locks_address(home.network_id)
    me = Address.of("service", "bench")
    async with instance(db) as router:

        async def one(n: int) -> None:
            name = f"lock-{n}"
            holder = f"user:bench-{n}"
            granted = await router.request(
                me, target, Acquire(name, 10_000, holder=holder), timeout_s=10
            )
            assert isinstance(granted, Granted), granted
            released = await router.request(
                me, target, Release(name, granted.token, holder), timeout_s=10
            )
            assert isinstance(released, Released), released

        return await measure(clients, seconds, one)


@asynccontextmanager
async def postgres() -> AsyncIterator[Database | None]:
    import asyncpg
    import trio_asyncio

    name = f"ygg_bench_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(f"{PG}/postgres")
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    async with trio_asyncio.open_loop():
        try:
            await trio_asyncio.aio_as_trio(admin)(f"CREATE DATABASE {name}")
        except OSError:
            print("PostgreSQL is not reachable: its rows are skipped")
            yield None
            return
        try:
            async with open_asyncio_thread() as bridge:
                db = await PostgresDatabase.open(
                    f"{PG}/{name}", bridge, min_size=1, max_size=4, query_timeout_s=30
                )
                try:
                    await migrate(db)
                    yield db
                finally:
                    await db.aclose()
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(admin)(f"DROP DATABASE IF EXISTS {name}")


async def main(seconds: float, clients: list[int], with_postgres: bool) -> None:
    rows: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        async with AsyncExitStack() as stack:
            sqlite = await SqliteDatabase.open(Path(folder) / "bench.sqlite3")
            stack.push_async_callback(sqlite.aclose)
            await migrate(sqlite)
            stores: list[tuple[str, Database]] = [("SQLite", sqlite)]
            if with_postgres:
                pg = await stack.enter_async_context(postgres())
                if pg is not None:
                    stores.append(("PostgreSQL", pg))
            for n in clients:
                base = await baseline(n, seconds)
                rows.append(("bare router request/reply", n, base, 1.0))
                for label, db in stores:
                    rate = await locks(db, n, seconds)
                    rows.append((f"{label} acquire + release", n, rate, rate / base))
    print("| what | clients | per second | ratio to the bare round trip |")
    print("|---|---:|---:|---:|")
    for what, n, rate, ratio in rows:
        print(f"| {what} | {n} | {rate:,.0f} | {ratio:.4f} |")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    trio.run(main, args.seconds, clients, not args.no_postgres)


if __name__ == "__main__":
    cli()
