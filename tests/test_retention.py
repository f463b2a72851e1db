"""The retention job, on both backends, in virtual time (``now`` is an input of a round): it
removes exactly the rows past their configured age and nothing else, once per cluster at a time,
and the audit log loses only a prefix whose cut is recorded, so the chain still verifies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.clients import sign_in
from yggdrasil import AuditChainBroken, Config, Database, Store, Tx
from yggdrasil._domain import retention_purges
from yggdrasil._ids import new_id, now_ms
from yggdrasil.accounts import insert_user
from yggdrasil.server import Running
from yggdrasil.store import Purge, Retention

DAY = 86_400_000
CONFIG = Config()
R = CONFIG.retention


def retention(db: Database, instance: str = "a", **changes: Any) -> Retention:
    config = Config(retention=Config().retention.__class__(**{**_fields(R), **changes}))
    return Retention(db, retention_purges(config), config.retention, instance=instance)


def _fields(struct: Any) -> dict[str, Any]:
    return {name: getattr(struct, name) for name in struct.__struct_fields__}


async def seed(db: Database, now: int) -> dict[str, tuple[str, str]]:
    """For each kind of row, one just past its age (``old``) and one exactly at it (``kept``):
    the row's clock column at ``cutoff - 1`` and ``cutoff``."""
    cutoffs = {
        "login_codes": now - R.login_codes_days * DAY,
        "refresh_tokens": now - R.refresh_tokens_days * DAY,
        "oauth_states": now - R.oauth_states_days * DAY,
        "token_revocations": now
        - R.token_revocations_days * DAY
        - (CONFIG.auth.access_ttl_s + 60) * 1000,
        "webhook_events": now - R.webhook_events_days * DAY,
        "marketplace_requests": now - R.marketplace_requests_days * DAY,
    }
    ids: dict[str, tuple[str, str]] = {}

    async def work(tx: Tx) -> None:
        user_id, _ = await insert_user(tx, db.vault, "ada@example.org")
        for kind, cutoff in cutoffs.items():
            pair = []
            for label, at in (("old", cutoff - 1), ("kept", cutoff)):
                key = f"{kind}-{label}-{new_id('x')}"
                pair.append(key)
                await insert(tx, kind, key, at, user_id)
            ids[kind] = (pair[0], pair[1])

    await db.write(work)
    return ids


async def insert(tx: Tx, kind: str, key: str, at: int, user_id: str) -> None:
    if kind == "login_codes":
        await tx.execute(
            "INSERT INTO login_codes (code_id, email, code_hash, created_at, expires_at)"
            " VALUES ($1, 'ada@example.org', 'h', $2, $3)",
            key,
            at - 600_000,
            at,
        )
    elif kind == "refresh_tokens":
        # one expired at ``at``, and a twin revoked at ``at`` that would live on otherwise
        for suffix, expires, revoked in (("", at, None), ("-revoked", at + 30 * DAY, at)):
            await tx.execute(
                "INSERT INTO refresh_tokens (token_id, family_id, user_id, secret_hash,"
                " created_at, expires_at, revoked_at) VALUES ($1, 'f', $2, 'h', $3, $4, $5)",
                key + suffix,
                user_id,
                at - DAY,
                expires,
                revoked,
            )
    elif kind == "oauth_states":
        await tx.execute(
            "INSERT INTO oauth_states (state, provider, nonce, code_verifier, redirect_uri,"
            " created_at, expires_at) VALUES ($1, 'google', 'n', 'v', 'https://x', $2, $3)",
            key,
            at - 600_000,
            at,
        )
    elif kind == "token_revocations":
        await tx.execute(
            "INSERT INTO token_revocations (subject, not_before) VALUES ($1, $2)", key, at
        )
    elif kind == "webhook_events":
        await tx.execute(
            "INSERT INTO payment_webhook_events (provider, event_id, event_type, applied,"
            " received_at) VALUES ('stripe', $1, 'charge.succeeded', 1, $2)",
            key,
            at,
        )
    elif kind == "marketplace_requests":
        for suffix, state in (("", "COMPLETED"), ("-running", "PROCESSING")):
            await tx.execute(
                "INSERT INTO marketplace_requests (request_id, user_id, idempotency_key,"
                " fingerprint, model, messages, max_cost, max_tokens, state, attempts, answer,"
                " created_at) VALUES ($1, $2, $1, 'f', 'm', '[]', 10, 10, $3, '[]', 'a', $4)",
                key + suffix,
                user_id,
                state,
                at,
            )
    else:  # pragma: no cover
        raise AssertionError(kind)


_KEYS = {
    "login_codes": ("login_codes", "code_id"),
    "refresh_tokens": ("refresh_tokens", "token_id"),
    "oauth_states": ("oauth_states", "state"),
    "token_revocations": ("token_revocations", "subject"),
    "webhook_events": ("payment_webhook_events", "event_id"),
    "marketplace_requests": ("marketplace_requests", "request_id"),
}


async def keys(db: Database) -> set[str]:
    async def read(tx: Tx) -> set[str]:
        found: set[str] = set()
        for table, column in _KEYS.values():
            found |= {row[column] for row in await tx.fetch(f"SELECT {column} FROM {table}")}
        return found

    return await db.read(read)


async def add_audit(db: Database, entries: list[tuple[int, str]]) -> None:
    """Audit entries written at the given times, through the pending table and the sealer."""

    async def work(tx: Tx) -> None:
        for at, action in entries:
            await tx.execute(
                "INSERT INTO audit_pending (at, actor, action, subject, detail)"
                " VALUES ($1, 'system', $2, '', '{}')",
                at,
                action,
            )

    await db.write(work)


async def actions(store: Store) -> list[str]:
    return [entry.action for entry in await store.audit_entries()]


async def test_a_round_removes_exactly_what_is_past_its_age(store: Store) -> None:
    db, now = store.db, now_ms()
    audit_cutoff = now - R.audit_days * DAY
    # written in this order: an old prefix, one at the cutoff, then an old one after it
    await add_audit(
        db,
        [
            (audit_cutoff - 5 * DAY, "old.1"),
            (audit_cutoff - 1, "old.2"),
            (audit_cutoff, "kept.at_cutoff"),
            (audit_cutoff - 1, "kept.behind_a_younger_one"),
        ],
    )
    await store.audit_log.seal()
    ids = await seed(db, now)
    before = await keys(db)

    removed = await retention(db).run_once(now)

    old = {pair[0] for pair in ids.values()} | {ids["refresh_tokens"][0] + "-revoked"}
    assert removed == {
        "login_codes": 1,
        "refresh_tokens": 2,
        "oauth_states": 1,
        "token_revocations": 1,
        "webhook_events": 1,
        "marketplace_requests": 1,
        "audit_log": 2,
    }
    assert await keys(db) == before - old
    # the running request stays whatever its age
    assert ids["marketplace_requests"][0] + "-running" in await keys(db)
    left = await actions(store)
    assert left[:2] == ["kept.at_cutoff", "kept.behind_a_younger_one"]
    assert "old.1" not in left
    assert "old.2" not in left
    assert left[-2:] == ["audit.cut", "retention.run"]
    assert await store.verify_audit_chain() == len(left)
    # A second round at the same time finds nothing; one a millisecond later only what aged.
    assert await retention(db).run_once(now) == {}
    later = await retention(db).run_once(now + 1)
    assert later is not None
    assert later["login_codes"] == 1
    assert later["audit_log"] == 2
    assert await store.verify_audit_chain() == len(await actions(store))


async def test_zero_keeps_for_ever(store: Store) -> None:
    db, now = store.db, now_ms()
    await add_audit(db, [(now - 10_000 * DAY, "ancient")])
    await seed(db, now)
    before = await keys(db)
    forever = retention(db, audit_days=0, marketplace_requests_days=0, login_codes_days=0)
    removed = await forever.run_once(now)
    assert removed is not None
    assert set(removed) == {"refresh_tokens", "oauth_states", "token_revocations", "webhook_events"}
    assert "ancient" in await actions(store)
    assert len(before - await keys(db)) == 5


async def test_one_instance_at_a_time(store: Store) -> None:
    db, now = store.db, now_ms()
    await seed(db, now)
    first, second = retention(db, "a"), retention(db, "b")

    async def hold(tx: Tx) -> None:
        await tx.execute(
            "UPDATE retention_runs SET holder = 'b', lease_until = $1 WHERE id = 1",
            now + R.lease_s * 1000,
        )

    await db.write(hold)  # b is in the middle of a round
    before = await keys(db)
    assert await first.run_once(now) is None
    assert await keys(db) == before
    # b died: its lease lapses, and a takes over
    assert await first.run_once(now + R.lease_s * 1000 + 1)
    assert await first.last_run_at() == now + R.lease_s * 1000 + 1
    # the lease is given back at the end of a round: b runs at once
    assert await second.run_once(now + R.lease_s * 1000 + 2) == {}


async def test_a_round_whose_lease_was_taken_over_stops(store: Store) -> None:
    db, now = store.db, now_ms()
    ids = await seed(db, now)
    stolen = retention(db, "a", batch=1)
    original = stolen.purges[0].work

    async def steal_then_purge(tx: Tx, before: int, limit: int) -> int:
        await tx.execute("UPDATE retention_runs SET holder = 'b' WHERE id = 1")
        return await original(tx, before, limit)

    stolen.purges[0] = Purge("login_codes", R.login_codes_days * DAY, steal_then_purge)
    assert await stolen.run_once(now) is None  # its first batch went, then it stopped
    assert ids["login_codes"][0] not in await keys(db)
    assert ids["refresh_tokens"][0] in await keys(db)
    assert await retention(db, "a").run_once(now + 1) is None  # b holds the round


async def test_the_database_lets_only_the_cut_prefix_go(store: Store) -> None:
    db, now = store.db, now_ms()
    await add_audit(db, [(now - 400 * DAY, "old"), (now, "young")])
    await store.audit_log.seal()
    assert await retention(db).run_once(now) == {"audit_log": 1}
    head = await db.read(lambda tx: tx.fetchrow("SELECT seq, hash FROM audit_cut WHERE id = 1"))
    assert head is not None
    assert head["seq"] == 1
    refused = {
        "DELETE FROM audit_log WHERE seq = 2": "append-only",
        "UPDATE audit_log SET action = 'x' WHERE seq = 2": "append-only",
        "UPDATE audit_cut SET seq = 0, hash = '' WHERE id = 1": "only moves forward",
        "UPDATE audit_cut SET seq = 2, hash = 'forged' WHERE id = 1": "only moves forward",
        "DELETE FROM audit_cut": "the audit cut stays",
    }
    for sql, why in refused.items():

        async def attempt(tx: Tx, sql: str = sql) -> None:
            await tx.execute(sql)

        with pytest.raises(Exception, match=why):
            await db.write(attempt)
    assert await store.verify_audit_chain() == 3  # young, audit.cut, retention.run


async def test_verification_sees_a_cut_moved_behind_the_jobs_back(
    store: Store, backend: str
) -> None:
    db, now = store.db, now_ms()
    await add_audit(db, [(now - 400 * DAY, "old"), (now - 399 * DAY, "old"), (now, "young")])
    await store.audit_log.seal()
    await retention(db, audit_days=399).run_once(now)
    assert await store.verify_audit_chain() == 4  # old, young, audit.cut, retention.run

    async def tamper(tx: Tx) -> None:
        # someone with the database's owner role removes one more entry and moves the cut
        if backend == "sqlite":
            await tx.execute("DROP TRIGGER audit_log_no_delete")
            await tx.execute("DROP TRIGGER audit_cut_forward")
        else:
            await tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
            await tx.execute("ALTER TABLE audit_cut DISABLE TRIGGER USER")
        row = await tx.fetchrow("SELECT seq, hash FROM audit_log WHERE seq = 2")
        assert row is not None
        await tx.execute("DELETE FROM audit_log WHERE seq = 2")
        await tx.execute("UPDATE audit_cut SET seq = 2, hash = $1 WHERE id = 1", row["hash"])

    await db.write(tamper)
    with pytest.raises(AuditChainBroken, match="audit entry 3 "):
        await store.verify_audit_chain()


async def test_retention_in_a_running_server(server: Running, http: Any, outbox: Path) -> None:
    ada = await sign_in(http, outbox, "ada@example.org")
    domain = server.services.domain.get()
    db = domain.store.db
    codes = await db.read(lambda tx: tx.fetchval("SELECT COUNT(*) FROM login_codes"))
    assert codes == 1
    removed = await domain.retention.run_once(now_ms() + 2 * DAY)
    assert removed == {"login_codes": 1}
    assert (await ada.get("/api/v1/users/me/export")).json()["login_codes"] == []
    refreshed = await http.post(
        "/api/v1/auth/refresh", json={"refresh_token": ada.session["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    # a year on, her sign-in's audit entries are cut; the chain still verifies
    year = await domain.retention.run_once(now_ms() + 366 * DAY)
    assert year is not None
    assert year["audit_log"] >= 2
    assert await domain.store.verify_audit_chain() >= 2


async def test_the_server_runs_the_job_on_its_interval(
    data_dir: Path, backend: str, asyncio_loop: None
) -> None:
    from contextlib import AsyncExitStack

    import trio

    from tests.conftest import fresh_pg_database
    from tests.servers import running_server

    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
        running = await stack.enter_async_context(
            running_server(data_dir, database=database, retention={"interval_s": 0.2})
        )
        domain = running.services.domain.get()
        now = now_ms()
        ids = await seed(domain.store.db, now)
        old = {pair[0] for pair in ids.values()}

        async def webhook_events_removed() -> int:
            entries = await domain.store.audit_entries(limit=100)
            runs = [e for e in entries if e.action == "retention.run"]
            assert {run.actor for run in runs} <= {"retention"}
            return sum(run.detail.get("webhook_events", 0) for run in runs)

        with trio.fail_after(20):
            # rounds run until one has removed the old rows and recorded it
            while not await webhook_events_removed():  # noqa: ASYNC110 (the database changes)
                await trio.sleep(0.1)
        assert not old & await keys(domain.store.db)
        assert await domain.retention.last_run_at() >= now
        # (its clock ran on past ``now``, so the row at the cutoff may have gone too)
        assert await webhook_events_removed() in (1, 2)


def test_retention_settings_are_checked() -> None:
    from yggdrasil import ConfigError, load_config

    environ = {"YGG_RETENTION_AUDIT_DAYS": "30", "YGG_RETENTION_WEBHOOK_EVENTS_DAYS": "0"}
    config = load_config(environ=environ)
    assert (config.retention.audit_days, config.retention.webhook_events_days) == (30, 0)
    with pytest.raises(
        ConfigError, match=r"retention\.webhook_events_days must be 0 .* at least 7"
    ):
        load_config(overrides={"retention": {"webhook_events_days": 3}})
    with pytest.raises(ConfigError, match=r"retention\.login_codes_days"):
        load_config(overrides={"auth": {"codes_window_s": 2 * 86400}})
    with pytest.raises(ConfigError, match="YGG_RETENTION_AUDIT_DAYS='-1'"):
        load_config(environ={"YGG_RETENTION_AUDIT_DAYS": "-1"})


async def test_verification_during_a_cut_never_sees_a_broken_chain(store: Store) -> None:
    import trio

    db, now = store.db, now_ms()
    await add_audit(db, [(now - 400 * DAY + i, f"old.{i}") for i in range(200)])
    await store.audit_log.seal()
    job = retention(db, batch=7)
    done = trio.Event()
    verified = 0

    async def cut() -> None:
        assert await job.run_once(now) == {"audit_log": 200}
        done.set()

    async def verify() -> None:
        nonlocal verified
        while not done.is_set():
            await store.verify_audit_chain()
            verified += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(verify)
        nursery.start_soon(verify)
        nursery.start_soon(cut)
    assert verified > 0
    assert await store.verify_audit_chain() == 200 // 7 + 1 + 1  # the cuts' records and the run


async def test_a_database_from_before_the_cut_still_verifies(store: Store) -> None:
    """A backup made before migration 12, restored by this version (which migrates it only at
    its next start), is checked all the same."""
    for i in range(3):
        await store.audit("system", "before", str(i))

    async def older(tx: Tx) -> None:
        await tx.execute("DELETE FROM schema_migrations WHERE version = 12")
        await tx.execute("DROP TABLE audit_cut")

    await store.db.write(older)
    assert await store.verify_audit_chain() == 3
