"""The locks room's store on SQLite and PostgreSQL: fencing tokens only grow across restarts of
the lock manager, a live grant survives them, and the store grants one lock once however many
writers race for it."""

from __future__ import annotations

import pytest
import trio

from yggdrasil import AccountData, Database, NotFound, Scope, Store
from yggdrasil.locks import Granted, LockFailed, LockStore, Released

from .locks_harness import acquire, instance, new_network, release


async def test_tokens_grow_across_restarts_and_live_grants_survive(database: Database) -> None:
    network = await new_network(database)
    tokens: list[int] = []
    held: Granted | None = None
    for _ in range(4):  # four incarnations of the network's lock manager
        async with instance(database) as node:
            if held is not None:
                # The grant of the last incarnation still runs: nobody else gets the lock.
                refused = await node.ask(network, acquire("shared", "user:other"))
                assert isinstance(refused, LockFailed), refused
                assert refused.code == "busy"
                again = await node.ask(network, acquire("shared", "user:keeper"))
                assert isinstance(again, Granted)
                assert again.token == held.token
                assert isinstance(
                    await node.ask(network, release("shared", "user:keeper", held.token)), Released
                )
            for name in ("a", "b"):
                granted = await node.ask(network, acquire(name, "user:x", lease_ms=100))
                assert isinstance(granted, Granted), granted
                tokens.append(granted.token)
                assert isinstance(
                    await node.ask(network, release(name, "user:x", granted.token)), Released
                )
            held = await node.ask(network, acquire("shared", "user:keeper", lease_ms=60_000))
            assert isinstance(held, Granted)
            tokens.append(held.token)
            node.crash()
    assert tokens == sorted(set(tokens)), tokens  # strictly increasing
    assert len(tokens) == 12


async def test_racing_writers_grant_one_lock_once(database: Database) -> None:
    network = await new_network(database)
    locks = LockStore(database)
    now = 1_000_000
    won: list[int] = []

    async def race() -> None:
        grant = await locks.grant(network, "slot", "user:r", 0, now, 5_000)
        if grant is not None:
            won.append(grant.token)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(race)
    assert len(won) == 1
    # Once the lease has ended, the next grant replaces it, with a larger token.
    assert await locks.grant(network, "slot", "user:s", 0, now + 4_999, 5_000) is None
    later = await locks.grant(network, "slot", "user:s", 0, now + 5_000, 5_000)
    assert later is not None
    assert later.token > won[0]
    assert [g.holder for g in await locks.live_grants(network, now + 5_001)] == ["user:s"]
    # Renewal and release go by token: the ended grant's token is no good any more.
    assert not await locks.renew(network, "slot", won[0], now + 5_001, 5_000)
    assert not await locks.release(network, "slot", won[0])
    assert await locks.renew(network, "slot", later.token, now + 5_001, 5_000)
    assert await locks.release(network, "slot", later.token)
    assert await locks.live_grants(network, now + 5_002) == []
    # Rows whose lease ended (a manager died before it tidied them) go when the next one starts.
    assert await locks.grant(network, "left", "user:gone", 0, now, 1_000) is not None
    assert await locks.forget_ended(network, now + 999) == 0
    assert await locks.forget_ended(network, now + 1_000) == 1
    assert await locks.current(network, "left") is None


async def test_the_tables_go_with_the_network(database: Database) -> None:
    store = Store(database)
    user, _ = await store.create_user("gone@example.org")
    lab = await store.create_network(Scope(user.user_id), "lab")
    assert await store.locks.grant(lab.network_id, "x", "user:g", 0, 10, 1_000_000) is not None
    await AccountData(database).delete_network(Scope(user.user_id), lab.network_id)
    assert await store.locks.live_grants(lab.network_id, 11) == []
    with pytest.raises(NotFound):  # a grant for a network that is gone
        await store.locks.grant(lab.network_id, "x", "user:g", 0, 20, 1_000)
