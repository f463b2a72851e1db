"""``yggdrasil audit verify`` as a subprocess on both backends: exit 0 and one line when the
chain holds (also after a retention cut); a database tampered with directly (its triggers
dropped) is exit 1 and one line naming the first entry that does not match."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import fresh_pg_database
from tests.test_admin_cli import run_cli
from yggdrasil import AsyncioThread, Database, Store, Tx
from yggdrasil._config import RetentionConfig
from yggdrasil._ids import now_ms
from yggdrasil.store import PostgresDatabase, Retention, SqliteDatabase, migrate

pytestmark = pytest.mark.slow
DAY = 86_400_000


@dataclass
class Place:
    db: Database
    args: list[str]
    backend: str


@pytest.fixture
async def place(
    backend: str, tmp_path: Path, asyncio_loop: None, bridge: AsyncioThread
) -> AsyncIterator[Place]:
    """A migrated store where the command finds it: a data directory's SQLite, or PostgreSQL."""
    async with AsyncExitStack() as stack:
        db: Database
        if backend == "sqlite":
            data = tmp_path / "data"
            data.mkdir()
            db = await SqliteDatabase.open(data / "yggdrasil.sqlite3")
            args = ["--data-dir", str(data)]
        else:
            url = await stack.enter_async_context(fresh_pg_database())
            db = await PostgresDatabase.open(
                url,
                bridge,
                min_size=1,
                max_size=2,
                query_timeout_s=10.0,
            )
            args = ["--database-url", url, "--data-dir", str(tmp_path / "data")]
        stack.push_async_callback(db.aclose)
        await migrate(db)
        yield Place(db, args, backend)


async def verify(place: Place) -> tuple[int, str, str]:
    result = await run_cli("audit", "verify", *place.args)
    return result.code, result.out, result.err


async def drop_triggers(tx: Tx, backend: str) -> None:
    if backend == "sqlite":
        await tx.execute("DROP TRIGGER audit_log_no_update")
        await tx.execute("DROP TRIGGER audit_log_no_delete")
    else:
        await tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")


async def test_verify_reports_a_sound_chain_and_the_first_bad_entry(place: Place) -> None:
    store = Store(place.db)
    for i in range(6):
        await store.audit("system", "test.event", f"s{i}", {"i": i})
    code, out, err = await verify(place)
    assert (code, err) == (0, "")
    assert out == "audit chain ok: 6 entries, 1 to 6\n"

    async def tamper(tx: Tx) -> None:
        await drop_triggers(tx, place.backend)
        await tx.execute("UPDATE audit_log SET detail = '{\"i\": 99}' WHERE seq = 4")

    await place.db.write(tamper)
    code, out, err = await verify(place)
    assert code == 1
    assert out == ""
    assert err == "yggdrasil: audit entry 4 does not match its chain\n"


async def test_verify_after_a_retention_cut_and_a_removed_entry(place: Place) -> None:
    store, now = Store(place.db), now_ms()

    async def old_entries(tx: Tx) -> None:
        for i in range(3):
            await tx.execute(
                "INSERT INTO audit_pending (at, actor, action) VALUES ($1, 'system', 'old')",
                now - (400 - i) * DAY,
            )

    await place.db.write(old_entries)
    for i in range(3):
        await store.audit("system", "young", str(i))
    await store.audit_log.seal()
    removed = await Retention(place.db, [], RetentionConfig()).run_once(now)
    assert removed == {"audit_log": 3}
    code, out, _ = await verify(place)
    assert code == 0
    # young x3, audit.cut, retention.run
    assert out == "audit chain ok: 5 entries, 4 to 8, entries up to 3 removed by retention\n"

    async def erase(tx: Tx) -> None:
        await drop_triggers(tx, place.backend)
        await tx.execute("DELETE FROM audit_log WHERE seq = 6")

    await place.db.write(erase)
    code, out, err = await verify(place)
    assert code == 1
    assert err == "yggdrasil: audit entry 6 does not match its chain\n"


async def test_verify_without_a_database_is_a_configuration_error(tmp_path: Path) -> None:
    result = await run_cli("audit", "verify", "--data-dir", str(tmp_path / "none"))
    assert result.code == 2
    assert result.err.startswith("yggdrasil: no database at ")
    assert len(result.err.strip().splitlines()) == 1
