"""The store suite: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
import trio

from yggdrasil import (
    MAX_PAGE,
    AuditChainBroken,
    Database,
    Invalid,
    NewDevice,
    NotFound,
    Scope,
    SqliteDatabase,
    Store,
    Tx,
    UniqueViolation,
    current_version,
    migrate,
)
from yggdrasil.store import AuditLog
from yggdrasil.store._migrations import available


async def test_migrations_are_applied_once(database: Database) -> None:
    assert await current_version(database) == available()[-1].version
    assert await migrate(database) == []


async def test_user_gets_a_home_network_they_own(store: Store) -> None:
    user, home = await store.create_user("ada@example.org", display_name="Ada")
    scope = Scope(user.user_id)
    assert user.home_network_id == home.network_id
    assert (await store.get_me(scope)).email == "ada@example.org"
    assert await store.list_networks(scope) == [home]
    assert home.role == "owner"


async def test_email_is_unique(store: Store) -> None:
    await store.create_user("dup@example.org")
    with pytest.raises(UniqueViolation):
        await store.create_user("dup@example.org")


async def test_failed_write_changes_nothing(store: Store) -> None:
    user, _ = await store.create_user("one@example.org")
    before = await store.verify_audit_chain()
    with pytest.raises(UniqueViolation):
        await store.create_user("one@example.org")
    # The unit of work inserted nothing: no user, no network, no audit entry.
    assert await store.verify_audit_chain() == before
    assert len(await store.list_networks(Scope(user.user_id))) == 1


def device(device_id: str, **extra: object) -> NewDevice:
    return NewDevice(device_id=device_id, name=f"dev {device_id}", world_type="midgard", **extra)  # type: ignore[arg-type]


async def test_devices_are_scoped_to_the_members_network(store: Store) -> None:
    alice, alice_home = await store.create_user("alice@example.org")
    bob, bob_home = await store.create_user("bob@example.org")
    a, b = Scope(alice.user_id), Scope(bob.user_id)

    registered = await store.register_device(
        a, alice_home.network_id, device("laptop", capabilities={"gpu": True})
    )
    assert registered.capabilities == {"gpu": True}
    assert registered.status == "offline"

    # Bob sees nothing of Alice's network, and cannot tell it from a nonexistent one.
    for network_id in (alice_home.network_id, "n_doesnotexist"):
        with pytest.raises(NotFound) as foreign:
            await store.get_device(b, network_id, "laptop")
        assert str(foreign.value) == "not found"
        with pytest.raises(NotFound):
            await store.list_devices(b, network_id)
        with pytest.raises(NotFound):
            await store.register_device(b, network_id, device("intruder"))
        with pytest.raises(NotFound):
            await store.delete_device(b, network_id, "laptop")
        with pytest.raises(NotFound):
            await store.get_network(b, network_id)

    # The same user-assigned id in another network is no conflict and reveals nothing.
    await store.register_device(b, bob_home.network_id, device("laptop"))
    with pytest.raises(UniqueViolation):
        await store.register_device(a, alice_home.network_id, device("laptop"))

    assert [d.device_id for d in (await store.list_devices(a, alice_home.network_id)).items] == [
        "laptop"
    ]
    await store.delete_device(a, alice_home.network_id, "laptop")
    with pytest.raises(NotFound):
        await store.get_device(a, alice_home.network_id, "laptop")
    # Bob's device of the same id is untouched.
    assert (await store.get_device(b, bob_home.network_id, "laptop")).user_id == bob.user_id


async def test_device_pages_are_capped_and_complete(store: Store) -> None:
    user, home = await store.create_user("pages@example.org")
    scope = Scope(user.user_id)
    ids = [f"d{i:03d}" for i in range(7)]
    for device_id in reversed(ids):
        await store.register_device(scope, home.network_id, device(device_id))
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_devices(scope, home.network_id, cursor=cursor, limit=3)
        assert len(page.items) <= 3
        seen += [d.device_id for d in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids
    with pytest.raises(Invalid):
        await store.list_devices(scope, home.network_id, limit=MAX_PAGE + 1)
    with pytest.raises(Invalid):
        await store.list_devices(scope, home.network_id, cursor="%%%")


async def test_audit_chain_verifies_and_is_append_only(store: Store, database: Database) -> None:
    for i in range(5):
        await store.audit("system", "test.event", f"s{i}", {"i": i})
    assert await store.verify_audit_chain() == 5
    entries = await store.audit_entries()
    assert [e.detail["i"] for e in entries] == list(range(5))

    async def tamper(tx: Tx) -> None:
        await tx.execute("UPDATE audit_log SET action = 'x' WHERE seq = 2")

    async def erase(tx: Tx) -> None:
        await tx.execute("DELETE FROM audit_log WHERE seq = 2")

    for attack in (tamper, erase):
        with pytest.raises(Exception, match="append-only"):
            await database.write(attack)
    assert await store.verify_audit_chain() == 5


async def test_audit_chain_detects_a_forged_entry(store: Store, database: Database) -> None:
    await store.audit("system", "first")

    async def forge(tx: Tx) -> None:
        # An insert that bypasses append_audit: wrong hash.
        await tx.execute(
            "INSERT INTO audit_log (seq, at, actor, action, subject, detail, prev_hash, hash)"
            " VALUES (2, 0, 'mallory', 'forged', '', '{}', 'x', 'y')"
        )

    await database.write(forge)
    with pytest.raises(AuditChainBroken):
        await store.verify_audit_chain()


async def test_concurrent_audit_appends_keep_one_chain(store: Store) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(store.audit, "system", "parallel", str(i))
    assert await store.verify_audit_chain() == 20


async def test_concurrent_writes_fail_alone_and_the_rest_commit(
    store: Store, database: Database
) -> None:
    """Many writers at once (on SQLite they share transactions, each in a savepoint): a
    duplicate fails alone, the others commit, and each writer gets its own answer."""
    user, home = await store.create_user("many@example.org")
    scope = Scope(user.user_id)
    answers: dict[str, str] = {}

    async def register(device_id: str) -> None:
        try:
            await store.register_device(scope, home.network_id, device(device_id))
            answers[device_id] = answers.get(device_id, "") + "ok"
        except UniqueViolation:
            answers[device_id] = answers.get(device_id, "") + "dup"

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(register, f"d{i:02}")
        nursery.start_soon(register, "d07")  # a second writer for one id
    assert answers.pop("d07") in ("okdup", "dupok")
    assert set(answers.values()) == {"ok"}
    page = await store.list_devices(scope, home.network_id, limit=MAX_PAGE)
    assert [d.device_id for d in page.items] == [f"d{i:02}" for i in range(40)]
    assert await store.verify_audit_chain() == 1 + 40  # the sign-up and one per device
    if isinstance(database, SqliteDatabase):  # they did queue, and shared commits
        assert database.stats["writes"] > database.stats["batches"]


async def test_a_failing_write_in_a_crowd_leaves_nothing_behind(store: Store) -> None:
    user, home = await store.create_user("crowd@example.org")
    scope = Scope(user.user_id)

    async def half_done(tx: Tx) -> None:
        await tx.execute(
            "INSERT INTO audit_log (seq, at, actor, action, subject, detail, prev_hash, hash)"
            " VALUES (999999, 0, 'x', 'x', 'x', '{}', 'x', 'x')"
        )
        raise Invalid("changed my mind")

    async def fail() -> None:
        with pytest.raises(Invalid):
            await store.db.write(half_done)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(store.register_device, scope, home.network_id, device(f"c{i}"))
            nursery.start_soon(fail)
    assert await store.verify_audit_chain() == 1 + 10
    assert len((await store.list_devices(scope, home.network_id)).items) == 10


async def test_a_cancelled_writer_either_wrote_or_not_and_knows_which(store: Store) -> None:
    user, home = await store.create_user("cancel@example.org")
    scope = Scope(user.user_id)
    finished: set[str] = set()

    async def register(device_id: str) -> None:
        await store.register_device(scope, home.network_id, device(device_id))
        finished.add(device_id)

    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(register, f"x{i:02}")
        await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    written = {d.device_id for d in (await store.list_devices(scope, home.network_id)).items}
    # A writer that returned was written; one cancelled may or may not have been, but the store
    # keeps taking writes either way.
    assert finished <= written
    await store.register_device(scope, home.network_id, device("after"))


async def test_sealers_of_several_instances_keep_one_chain(
    store: Store, database: Database
) -> None:
    """Appends go to the pending table; every instance's sealer moves them into the one chain,
    in the order they were appended."""
    elsewhere = AuditLog(database)  # another instance's sealer on the same database

    async def append(i: int) -> None:
        await store.audit("system", "parallel", f"p{i:03}")

    async with trio.open_nursery() as nursery:
        for i in range(150):
            nursery.start_soon(append, i)
            if i % 10 == 0:
                nursery.start_soon(store.audit_log.seal)
                nursery.start_soon(elsewhere.seal)
    assert await store.verify_audit_chain() == 150
    entries = await store.audit_entries(limit=MAX_PAGE)
    assert len(entries) == MAX_PAGE
    assert [e.seq for e in entries] == list(range(1, MAX_PAGE + 1))
    assert len({e.subject for e in await elsewhere.entries(after=MAX_PAGE)}) == 50
