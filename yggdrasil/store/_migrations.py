"""Numbered SQL migrations, applied in order at start-up and by ``yggdrasil migrate``.

Files are ``yggdrasil/migrations/NNNN_name.sql``: one numbered history for every room's tables.
Numbers are unique and applied in order; a number may be left out (reserved for a room whose
migration is not there yet), and a migration added later below the newest applied one is applied
at the next start all the same.
Lines ``-- dialect: sqlite``, ``-- dialect: postgres`` and ``-- dialect: all`` switch which
backend the following statements are for. Each migration runs in its own transaction with its
row in ``schema_migrations``; on PostgreSQL an advisory lock keeps
instances that start together from applying the same migration twice.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from importlib import resources

from ._db import Database, Tx

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_DIALECT = re.compile(r"^--\s*dialect:\s*(all|sqlite|postgres)\s*$")
_LOCK_KEY = 0x59676764  # "Yggd"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    def script(self, dialect: str) -> str:
        keep = True
        lines: list[str] = []
        for line in self.text.splitlines():
            match = _DIALECT.match(line.strip())
            if match:
                keep = match.group(1) in ("all", dialect)
                continue
            if keep:
                lines.append(line)
        return "\n".join(lines) + "\n"


def available() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("yggdrasil").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions) or (versions and versions[0] < 1):
        raise RuntimeError(f"migrations must have distinct numbers from 1, found {versions}")
    return found


async def migrate(db: Database) -> list[int]:
    """Apply every migration not yet applied; returns the versions applied now."""

    async def bootstrap(tx: Tx) -> None:
        if db.dialect == "postgres":
            # Two CREATE TABLE IF NOT EXISTS at once can still collide on PostgreSQL.
            await tx.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await tx.execute_script(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL);\n"
        )

    await db.write(bootstrap)
    applied: list[int] = []
    for migration in available():

        async def apply(tx: Tx, migration: Migration = migration) -> bool:
            if db.dialect == "postgres":
                await tx.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            done = await tx.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
            )
            if done:
                return False
            await tx.execute_script(migration.script(db.dialect))
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                int(time.time() * 1000),
            )
            return True

        if await db.write(apply):
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration.version)
    return applied


async def current_version(db: Database) -> int:
    async def read(tx: Tx) -> int:
        value = await tx.fetchval("SELECT MAX(version) FROM schema_migrations")
        return int(value or 0)

    return await db.read(read)
