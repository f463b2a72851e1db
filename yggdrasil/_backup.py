"""Backups of a server's data and secrets, and restoring them (``yggdrasil backup`` and
``yggdrasil restore``).

A backup is one gzip-compressed tar file of mode 0600 that holds everything a new server needs:

- ``MANIFEST.json``, first: the archive's format, the backend, when and by which version it was
  made, and the size and SHA-256 of every other member;
- the database: ``yggdrasil.sqlite3`` (SQLite's online backup API, one consistent snapshot taken
  while the server runs and writes; a single file, its WAL folded in) or ``database.pgdump``
  (``pg_dump --format=custom``, a consistent snapshot of PostgreSQL);
- ``secrets/``: the data directory's whole secrets folder, whatever it holds (signing keys,
  retired keys, data keys): without it the restored server could verify no token and decrypt
  nothing. The archive is therefore as secret as that folder.

Restoring goes into an empty (or absent) data directory only, and checks before it trusts: the
manifest and every member's checksum, ``PRAGMA integrity_check``, the audit log's hash chain, and
that the schema is not newer than this program. A SQLite restore is built in a staging folder
beside the target and renamed into place only when every check has passed; a PostgreSQL restore
goes into an empty database (``pg_restore --single-transaction``) and the secrets follow only when
it checked out.

Failures raise :class:`~yggdrasil._errors.ConfigError` for what the operator must change (a
non-empty target, a missing ``pg_dump``, a wrong backend) and :class:`BackupFailed` for what went
wrong at run time (a corrupt archive, a failing ``pg_dump``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import unquote

import msgspec
import trio

from ._asyncio_thread import open_asyncio_thread
from ._config import Config
from ._errors import ConfigError, StoreUnavailable, YggdrasilError
from ._version import VERSION
from .store import (
    AuditChainBroken,
    AuditLog,
    Database,
    SqliteDatabase,
    Tx,
    current_version,
    open_database,
)

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "MANIFEST.json"
SQLITE_FILE = "yggdrasil.sqlite3"
PGDUMP_FILE = "database.pgdump"
SECRETS = "secrets"
_CHUNK = 1 << 20
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class BackupFailed(YggdrasilError):
    """Taking or restoring a backup failed at run time (exit status 1)."""

    code = "backup_failed"
    default_message = "the backup failed"


class Member(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    size: int
    sha256: str


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["yggdrasil-backup"]
    format: int
    backend: Literal["sqlite", "postgres"]
    created_at_ms: int
    version: str
    database: str
    files: list[Member]
    audit_entries: int | None = None
    """Entries of the audit chain in the snapshot (SQLite; checked again when restored)."""


@dataclass(frozen=True)
class Summary:
    """What a backup holds, or what a restore brought back."""

    backend: str
    secret_files: int
    audit_entries: int
    size: int = 0


# ----------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _newest_migration() -> int:
    """The newest migration this program knows (a restored schema must not be newer)."""
    found = [
        int(match.group(1))
        for entry in resources.files("yggdrasil").joinpath("migrations").iterdir()
        if (match := _MIGRATION.match(entry.name))
    ]
    return max(found, default=0)


def _postgres_env(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment that carries the password (so that it
    never shows in the process list) for ``pg_dump`` and ``pg_restore``."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGAPPNAME"] = "yggdrasil-backup"
    env.setdefault("PGCONNECT_TIMEOUT", "30")
    if not at:
        return url, env
    user, colon, password = userinfo.partition(":")
    if colon:
        env["PGPASSWORD"] = unquote(password)
    return f"{scheme}{sep}{user}@{host}{slash}{tail}", env


def _redacted(url: str) -> str:
    return _postgres_env(url)[0]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name} is not on PATH: install PostgreSQL's client tools (the server's major"
            " version or newer), or see docs/operations.md, 'Backup and restore', for pg_dump"
            " and point-in-time recovery"
        )
    return found


def _run_tool(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit status {result.returncode}"
        raise BackupFailed(f"{what} failed: {detail}")


async def _verify_chain(db: Database, where: str) -> int:
    try:
        return await AuditLog(db).verify_chain()
    except AuditChainBroken as exc:
        raise BackupFailed(f"the audit log in {where} is broken: {exc.message}") from None


async def _check_schema(db: Database, where: str) -> None:
    version, newest = await current_version(db), _newest_migration()
    if version > newest:
        raise BackupFailed(
            f"{where} has schema version {version}, newer than this yggdrasil's {newest}:"
            " restore it with the version that made it"
        )


def _secrets_folder(config: Config) -> Path:
    folder = config.data_path / SECRETS
    if not folder.is_dir():
        raise ConfigError(
            f"no secrets in {folder}: is --data-dir right? (the server creates them at its first"
            " start)"
        )
    return folder


def _copy_secrets(source: Path, staging: Path) -> int:
    target = staging / SECRETS
    # Symlinks are copied as the files they point to; a Kubernetes Secret volume's own
    # bookkeeping (``..data``, ``..2026_...``) is left out, its files are there by name.
    shutil.copytree(source, target, symlinks=False, ignore=shutil.ignore_patterns("..*"))
    return sum(1 for path in target.rglob("*") if path.is_file())


# ----------------------------------------------------------------------------- backup


async def backup(config: Config, target: Path) -> Summary:
    """Write a backup of the configured store and the data directory's secrets to ``target``
    (created with mode 0600; an existing file is refused). The server may run and write
    meanwhile: the database part is one consistent snapshot. On failure or cancellation the
    staging folder beside ``target`` is removed and ``target`` does not appear."""
    secrets, staging = await trio.to_thread.run_sync(_prepare_backup, config, target)
    try:
        if config.database.url:
            database = staging / PGDUMP_FILE
            await trio.to_thread.run_sync(_pg_dump, config.database.url, database)
            backend: Literal["sqlite", "postgres"] = "postgres"
            entries = None
        else:
            database = staging / SQLITE_FILE
            await trio.to_thread.run_sync(_sqlite_snapshot, config.data_path, database)
            db = await SqliteDatabase.open(database)
            try:
                entries = await _verify_chain(db, f"the snapshot of {config.data_path}")
            finally:
                await db.aclose()
            await trio.to_thread.run_sync(_sqlite_finish, database)
            backend = "sqlite"
        count = await trio.to_thread.run_sync(_copy_secrets, secrets, staging)
        size = await trio.to_thread.run_sync(
            _write_archive, staging, target, backend, database.name, entries
        )
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, staging, True)
    return Summary(backend, count, entries or 0, size)


def _prepare_backup(config: Config, target: Path) -> tuple[Path, Path]:
    """Check what a backup needs; the secrets folder and a new staging folder beside
    ``target``."""
    if target.exists():
        raise ConfigError(f"{target} exists already: back up to a new file")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot write {target}: no directory {target.parent}")
    secrets = _secrets_folder(config)
    if not config.database.url and not (config.data_path / SQLITE_FILE).is_file():
        raise ConfigError(
            f"no database at {config.data_path / SQLITE_FILE}: is --data-dir (or"
            " --database-url) right?"
        )
    return secrets, Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def _sqlite_snapshot(data_dir: Path, copy: Path) -> None:
    """SQLite's online backup API in one step (``pages=-1``): one read transaction, so the copy
    is the database as of one commit; in WAL mode the server's writers go on meanwhile."""
    path = data_dir / SQLITE_FILE
    try:
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        try:
            destination = sqlite3.connect(copy)
            try:
                source.backup(destination, pages=-1)
            finally:
                destination.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise BackupFailed(f"cannot back up {path}: {exc}") from None


def _sqlite_finish(copy: Path) -> None:
    """Fold the copy's WAL into one file and check it page by page."""
    try:
        connection = sqlite3.connect(copy, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode = DELETE")
            problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise BackupFailed(f"cannot check the snapshot: {exc}") from None
    if problems != ["ok"]:
        raise BackupFailed(f"the snapshot fails PRAGMA integrity_check: {problems[0]}")


def _pg_dump(url: str, dump: Path) -> None:
    tool = _tool("pg_dump")
    plain_url, env = _postgres_env(url)
    _run_tool(
        [tool, "--format=custom", f"--file={dump}", plain_url],
        env,
        f"pg_dump of {plain_url}",
    )


def _write_archive(
    staging: Path,
    target: Path,
    backend: Literal["sqlite", "postgres"],
    database: str,
    entries: int | None,
) -> int:
    secrets = sorted(path for path in (staging / SECRETS).rglob("*") if path.is_file())
    paths = [staging / database, *secrets]
    members = [
        Member(path.relative_to(staging).as_posix(), path.stat().st_size, _sha256(path))
        for path in paths
    ]
    manifest = Manifest(
        kind="yggdrasil-backup",
        format=FORMAT,
        backend=backend,
        created_at_ms=int(time.time() * 1000),
        version=VERSION,
        database=database,
        files=members,
        audit_entries=entries,
    )
    body = msgspec.json.format(msgspec.json.encode(manifest), indent=2)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as archive:
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode, info.mtime = len(body), 0o600, time.time()
                archive.addfile(info, io.BytesIO(body))
                for path in paths:
                    archive.add(path, arcname=path.relative_to(staging).as_posix(), filter=_anon)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target.stat().st_size


def _anon(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# ----------------------------------------------------------------------------- restore


async def restore(config: Config, archive: Path) -> Summary:
    """Restore ``archive`` into the configured data directory (absent or empty) and, for a
    PostgreSQL backup, into the configured database (which must hold no tables). Every check
    passes before anything lands in the data directory."""
    target = config.data_path
    staging = await trio.to_thread.run_sync(_prepare_restore, archive, target)
    try:
        manifest = await trio.to_thread.run_sync(_unpack, archive, staging)
        database = staging / manifest.database
        if manifest.backend == "sqlite":
            if config.database.url:
                raise ConfigError(
                    f"{archive} holds a SQLite backup: restore it without a database URL"
                )
            await trio.to_thread.run_sync(_integrity, database, archive)
            entries = await _check_sqlite(database, archive)
            (staging / SQLITE_FILE).chmod(0o600)
        else:
            if not config.database.url:
                raise ConfigError(
                    f"{archive} holds a PostgreSQL backup: give the URL of an empty database"
                    " (--database-url)"
                )
            entries = await _restore_postgres(config, database, archive)
            database.unlink()
        _lock_down(staging)
        await trio.to_thread.run_sync(_move_into_place, staging, target)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, staging, True)
    secrets = sum(1 for m in manifest.files if m.path.startswith(f"{SECRETS}/"))
    return Summary(manifest.backend, secrets, entries)


def _prepare_restore(archive: Path, target: Path) -> Path:
    """Check that ``archive`` exists and ``target`` is empty or absent; a new staging folder
    beside ``target``."""
    if not archive.is_file():
        raise ConfigError(f"no backup at {archive}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"the data directory {target} is not empty: restore into an empty one")
    parent = target.resolve().parent
    if not parent.is_dir():
        raise ConfigError(f"cannot create the data directory {target}: no directory {parent}")
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=parent))


def _unpack(archive: Path, staging: Path) -> Manifest:
    """Extract and check the archive: the manifest, exactly its members, their checksums."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise BackupFailed(f"{archive} is not a Yggdrasil backup (no {MANIFEST} first)")
            extracted = tar.extractfile(first)
            assert extracted is not None
            try:
                manifest = msgspec.json.decode(extracted.read(1 << 20), type=Manifest)
            except msgspec.DecodeError as exc:  # not JSON, or not a manifest
                raise BackupFailed(f"{archive} has an unreadable manifest: {exc}") from None
            if manifest.format != FORMAT:
                raise BackupFailed(
                    f"{archive} has backup format {manifest.format}; this yggdrasil reads"
                    f" format {FORMAT}"
                )
            expected = {m.path: m for m in manifest.files}
            database = {"sqlite": SQLITE_FILE, "postgres": PGDUMP_FILE}[manifest.backend]
            if (
                manifest.database != database
                or database not in expected
                or not all(_safe(path, manifest.database) for path in expected)
            ):
                raise BackupFailed(f"{archive} has a manifest with unexpected file names")
            seen: set[str] = set()
            for info in tar:  # from the start again: skip the manifest, read already
                if info is first or info.isdir():
                    continue
                if not info.isfile() or info.name not in expected or info.name in seen:
                    raise BackupFailed(f"{archive} holds {info.name!r}, which its manifest lacks")
                seen.add(info.name)
                tar.extract(info, staging, filter="data")
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise BackupFailed(f"{archive} is not a readable backup: {exc}") from None
    for path, member in expected.items():
        if path not in seen:
            raise BackupFailed(f"{archive} lacks {path}, which its manifest names")
        local = staging / path
        if local.stat().st_size != member.size or _sha256(local) != member.sha256:
            raise BackupFailed(f"{archive} is damaged: {path} does not match its checksum")
    return manifest


def _safe(path: str, database: str) -> bool:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return False
    if path == database:
        return True
    return pure.parts[0] == SECRETS and len(pure.parts) > 1


def _integrity(database: Path, archive: Path) -> None:
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise BackupFailed(
            f"the database in {archive} fails PRAGMA integrity_check: {exc}"
        ) from None
    if problems != ["ok"]:
        raise BackupFailed(f"the database in {archive} fails PRAGMA integrity_check: {problems[0]}")


async def _check_sqlite(database: Path, archive: Path) -> int:
    try:
        db = await SqliteDatabase.open(database)
    except StoreUnavailable as exc:
        raise BackupFailed(f"the database in {archive} cannot be opened: {exc.message}") from None
    try:
        await _check_schema(db, f"the database in {archive}")
        return await _verify_chain(db, archive.name)
    finally:
        await db.aclose()


async def _restore_postgres(config: Config, dump: Path, archive: Path) -> int:
    tool = _tool("pg_restore")
    url, env = _postgres_env(config.database.url)
    # The archive must be one pg_restore can read before the database is touched.
    await trio.to_thread.run_sync(
        _run_tool, [tool, "--list", str(dump)], env, f"reading the dump in {archive}"
    )
    async with open_asyncio_thread() as bridge:
        db = await open_database(config.database, config.data_path, bridge)
        try:

            async def tables(tx: Tx) -> int:
                return int(
                    await tx.fetchval(
                        "SELECT COUNT(*) FROM pg_catalog.pg_tables"
                        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
                    )
                )

            if await db.read(tables):
                raise ConfigError(
                    f"the database {_redacted(config.database.url)} is not empty: restore into"
                    " an empty one"
                )
            await trio.to_thread.run_sync(
                _run_tool,
                [
                    tool,
                    "--exit-on-error",
                    "--single-transaction",
                    "--no-owner",
                    "--no-privileges",
                    f"--dbname={url}",
                    str(dump),
                ],
                env,
                f"pg_restore into {url}",
            )
            await _check_schema(db, f"the database restored from {archive}")
            return await _verify_chain(db, f"the database restored from {archive}")
        finally:
            await db.aclose()


def _lock_down(staging: Path) -> None:
    """The data directory's modes: folders 0700, files 0600, as the server makes them."""
    staging.chmod(0o700)
    for path in staging.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)


def _move_into_place(staging: Path, target: Path) -> None:
    if target.exists():
        target.rmdir()  # empty, checked before; a file appearing since makes this fail
    os.replace(staging, target)
