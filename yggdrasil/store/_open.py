"""Opening the configured database: SQLite in the data directory, or PostgreSQL by URL."""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from .._asyncio_thread import AsyncioThread
from .._config import DatabaseConfig
from .._errors import ConfigError, StoreUnavailable
from ._db import Database
from ._postgres import PostgresDatabase
from ._sqlite import SqliteDatabase

log = logging.getLogger(__name__)


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def check_database(config: DatabaseConfig) -> None:
    """:class:`ConfigError` for a ``[database]`` section that cannot run."""
    if config.url and not _is_postgres(config.url):
        raise ConfigError("database.url must be empty (SQLite) or a postgresql:// URL")
    if config.pool_min > config.pool_max:
        raise ConfigError("database.pool_min must not exceed database.pool_max")


async def open_database(config: DatabaseConfig, data_dir: Path, bridge: AsyncioThread) -> Database:
    """Open the configured database once; ``StoreUnavailable`` if it cannot be reached. The
    caller closes it (``aclose``), before ``bridge`` (where PostgreSQL's pool lives) stops."""
    if _is_postgres(config.url):
        return await PostgresDatabase.open(
            config.url,
            bridge,
            min_size=config.pool_min,
            max_size=config.pool_max,
            query_timeout_s=config.query_timeout_s,
        )
    return await SqliteDatabase.open(data_dir / "yggdrasil.sqlite3")


async def open_database_retrying(
    config: DatabaseConfig, data_dir: Path, bridge: AsyncioThread
) -> Database:
    """Keep trying for ``database.connect_timeout_s`` (exponential backoff), then give up with
    ``StoreUnavailable``."""
    deadline = trio.current_time() + config.connect_timeout_s
    delay = 0.2
    while True:
        try:
            return await open_database(config, data_dir, bridge)
        except StoreUnavailable as exc:
            if trio.current_time() + delay > deadline:
                raise
            log.warning("store unreachable (%s); retrying in %.1f s", exc.message, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)
