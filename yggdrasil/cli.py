"""The ``yggdrasil`` command line.

Every failure is one line on standard error, ``yggdrasil: <what and where>``, and an exit status:
2 for a configuration error (and for bad arguments, as argparse does), 1 for anything that went
wrong at run time, 130 after Ctrl-C. ``--debug`` (before or after the command) adds the
traceback.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from actors import Escalated
from relay.client import device_cli, provider_cli

from . import _admin_cli, server
from ._asyncio_thread import open_asyncio_thread
from ._backup import backup, restore
from ._config import Config, load_config
from ._crypto import keyring_path, open_vault, retire_data_key, rotate_data_key
from ._domain import SEALED_COLUMNS
from ._errors import ConfigError, NotFound, StoreUnavailable, YggdrasilError, sole_exception
from ._logging import configure
from ._secrets import rotate_signing_key
from ._version import VERSION
from .accounts import Operators
from .store import AuditLog, Database, Tx, key_usage, migrate, open_database, reseal_all

log = logging.getLogger("yggdrasil")
T = TypeVar("T")

# flag -> (section, key)
_FLAGS: dict[str, tuple[str, str]] = {
    "data_dir": ("server", "data_dir"),
    "host": ("server", "host"),
    "api_port": ("api", "port"),
    "gateway_port": ("gateway", "port"),
    "turn_port": ("turn", "port"),
    "database_url": ("database", "url"),
    "bus_url": ("bus", "url"),
    "smtp_url": ("mail", "smtp_url"),
    "turn_static_user": ("turn", "static_users"),
    "turn_allow_peer": ("turn", "allow_peers"),
    "log_format": ("log", "format"),
    "log_level": ("log", "level"),
}


def _debug(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """``--debug`` on the top-level parser and on each command (where it must not reset what
    the top level set: hence SUPPRESS)."""
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show the traceback of a failure"
    )


def _common(parser: argparse.ArgumentParser) -> None:
    _debug(parser)
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--data-dir", metavar="DIR", help="data directory (./yggdrasil-data)")
    parser.add_argument("--database-url", metavar="URL", help="postgresql://... (default SQLite)")
    parser.add_argument("--log-format", choices=["text", "json"])
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yggdrasil", description="The central server of the Edda device network."
    )
    parser.add_argument("--version", action="version", version=f"yggdrasil {VERSION}")
    _debug(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    _common(serve)
    serve.add_argument("--host", help="address every listener binds to (127.0.0.1)")
    serve.add_argument("--api-port", type=int, metavar="PORT", help="HTTP API port (8080)")
    serve.add_argument("--gateway-port", type=int, metavar="PORT", help="device gateway (8081)")
    serve.add_argument("--turn-port", type=int, metavar="PORT", help="STUN/TURN port (3478)")
    serve.add_argument("--bus-url", metavar="URL", help="NATS of a cluster (in-process)")
    serve.add_argument(
        "--smtp-url", metavar="URL", help="send e-mail through SMTP (default: <data-dir>/outbox)"
    )
    serve.add_argument(
        "--turn-static-user",
        action="append",
        metavar="USER:PASS",
        help="a static TURN user (repeatable; off by default)",
    )
    serve.add_argument(
        "--turn-allow-peer",
        action="append",
        metavar="CIDR",
        help="let relays reach this network despite the deny list (repeatable)",
    )

    migrate_cmd = commands.add_parser("migrate", help="apply database migrations and exit")
    _common(migrate_cmd)

    admin = commands.add_parser("admin", help="operator tasks on the data store")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="TASK")
    grant = admin_commands.add_parser("grant", help="give a user the operator (or user) role")
    grant.add_argument("email")
    grant.add_argument("--role", choices=["operator", "user"], default="operator")
    _common(grant)

    keys = commands.add_parser("keys", help="token signing keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="TASK")
    rotate = keys_commands.add_parser(
        "rotate", help="sign new tokens with a new key; tokens of the old key stay valid"
    )
    _common(rotate)
    rotate_data = keys_commands.add_parser(
        "rotate-data",
        help="seal personal data with a new data key; running servers re-encrypt to it",
    )
    _common(rotate_data)
    usage = keys_commands.add_parser(
        "data-usage", help="how many stored values each data key sealed"
    )
    _common(usage)
    retire = keys_commands.add_parser(
        "retire-data", help="remove a data key from the keyring once no stored value uses it"
    )
    retire.add_argument("kid")
    _common(retire)

    backup_cmd = commands.add_parser(
        "backup", help="write the database and the secrets to one archive, while the server runs"
    )
    _common(backup_cmd)
    backup_cmd.add_argument("--to", required=True, metavar="FILE", help="the new archive")
    restore_cmd = commands.add_parser(
        "restore", help="restore an archive of 'yggdrasil backup' into an empty data directory"
    )
    _common(restore_cmd)
    restore_cmd.add_argument("archive", metavar="FILE", help="an archive of 'yggdrasil backup'")

    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="TASK")
    verify = audit_commands.add_parser(
        "verify", help="check the audit log's hash chain (from the retention cut on)"
    )
    _common(verify)

    device_cli.add_commands(commands, debug=_debug)
    provider_cli.add_commands(commands, debug=_debug)
    _admin_cli.add_commands(commands, _common)
    return parser


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {}
    for flag, (section, key) in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return load_config(args.config, environ=os.environ, overrides=overrides)


async def _serve(config: Config) -> None:
    try:
        await _serve_until_signalled(config)
    except BaseExceptionGroup as group:
        raise sole_exception(group) from None


async def _serve_until_signalled(config: Config) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if not stop.is_set():
                        log.info(
                            "received %s, shutting down (grace %.0f s)",
                            signal.Signals(signum).name,
                            config.server.grace_s,
                        )
                        stop.set()
                        # Whatever has not finished after the grace period is cancelled.
                        nursery.cancel_scope.deadline = (
                            trio.current_time() + config.server.grace_s + 1.0
                        )
                    else:
                        log.warning("second signal: stopping now")
                        nursery.cancel_scope.cancel()

        async def run(task_status: trio.TaskStatus[server.Running]) -> None:
            await server.serve(config, stop=stop, task_status=task_status)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_signals)
        await nursery.start(run)
        # What the process loaded to start lives as long as it does: leave it out of the cyclic
        # collector's full passes, which otherwise walk all of it again and again (measured with
        # benchmarks/relay.py: the one-way p99 at half load fell from ~117 ms to ~19 ms). Only
        # here, in the process of its own: a process that embeds serve() keeps its own policy.
        gc.freeze()


async def _with_database(
    config: Config, work: Callable[[Database], Awaitable[T]], *, make_keyring: bool = False
) -> T:
    server.check(config)
    if not config.database.url:  # SQLite lives in the data directory; PostgreSQL needs none
        server.prepare_data_dir(config)

    # The data keyring: only 'migrate' makes one (beside SQLite; with PostgreSQL it must be
    # there already, or in encryption.key_file: a new one would seal data that the servers
    # cannot read). Without one, nothing sealed can be there to read.
    make = make_keyring and not config.database.url
    vault = open_vault(config.data_path, config.encryption.key_file, create=make)
    async with open_asyncio_thread() as bridge:
        db = await open_database(config.database, config.data_path, bridge)
        if vault is not None:
            db.vault = vault
        try:
            return await work(db)
        finally:
            await db.aclose()


async def _migrate(config: Config) -> list[int]:
    async def work(db: Database) -> list[int]:
        applied = await migrate(db)
        if db.vault.path is not None:  # else the server seals at its start
            await reseal_all(db, SEALED_COLUMNS, config.encryption.reencrypt_batch)
        return applied

    return await _with_database(config, work, make_keyring=True)


def _require_keyring(config: Config) -> Path:
    path = keyring_path(config.data_path, config.encryption.key_file)
    if not path.exists():
        raise ConfigError(
            f"no data keyring at {path}: is --data-dir (or encryption.key_file) right?"
        )
    return path


async def _data_usage(config: Config) -> dict[str, int]:
    _require_keyring(config)

    async def work(db: Database) -> dict[str, int]:
        await migrate(db)
        return await key_usage(db, SEALED_COLUMNS)

    return await _with_database(config, work)


def _keys(config: Config, args: argparse.Namespace) -> None:
    key_file = config.encryption.key_file
    if args.keys_command == "rotate":
        _rotate(config)
    elif args.keys_command == "rotate-data":
        old, new = rotate_data_key(config.data_path, key_file)
        where = keyring_path(config.data_path, key_file)
        if old is None:
            print(f"new data keyring {where} with key {new}")
        else:
            print(f"new data key {new} in {where}; key {old} stays for what it sealed")
            print(
                "running servers read the keyring again within"
                f" {config.encryption.reencrypt_interval_s:g} s and re-encrypt their rows;"
                " the audit log keeps its keys (see 'yggdrasil keys data-usage')"
            )
    elif args.keys_command == "data-usage":
        usage = trio.run(_data_usage, config)
        vault = open_vault(config.data_path, key_file, create=False)
        assert vault is not None
        for kid in sorted(set(vault.key_ids) | set(usage)):
            state = "current" if kid == vault.current else "old"
            if kid not in vault.key_ids:
                state = "plain" if kid == "plain" else "missing from the keyring"
            print(f"{kid}\t{usage.get(kid, 0)}\t{state}")
    else:
        usage = trio.run(_data_usage, config)
        if usage.get(args.kid):
            raise ConfigError(
                f"data key {args.kid} still seals {usage[args.kid]} stored values: keep it"
            )
        retire_data_key(config.data_path, key_file, args.kid)
        print(f"data key {args.kid} removed from the keyring")


async def _grant(config: Config, email: str, role: Literal["user", "operator"]) -> bool:
    sqlite = config.data_path / "yggdrasil.sqlite3"
    if not config.database.url and not sqlite.exists():
        raise ConfigError(f"no database at {sqlite}: is --data-dir (or --database-url) right?")

    async def work(db: Database) -> bool:
        if not await _has_schema(db):  # a wrong URL: do not fill that database with tables
            raise ConfigError(f"{where} holds no Yggdrasil data: is the URL right?")
        if db.vault.path is None:  # addresses are found by their blind index: its key
            _require_keyring(config)
        await migrate(db)
        try:
            return await Operators(db).grant_role(email, role)
        except NotFound:
            raise NotFound(f"no such user {email} in {where}") from None

    where = _redacted(config.database.url) if config.database.url else str(sqlite)
    return await _with_database(config, work)


async def _has_schema(db: Database) -> bool:
    """Whether migrations ever ran in ``db`` (a wrong database has no ``schema_migrations``)."""
    query = (
        "SELECT to_regclass('schema_migrations') IS NOT NULL"
        if db.dialect == "postgres"
        else "SELECT COUNT(*) FROM sqlite_master"
        " WHERE type = 'table' AND name = 'schema_migrations'"
    )

    async def read(tx: Tx) -> bool:
        return bool(await tx.fetchval(query))

    return await db.read(read)


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{userinfo.partition(':')[0]}{at}{host}" if at else url


def _rotate(config: Config) -> None:
    if not (config.data_path / "secrets" / "signing-key.pem").exists():
        raise ConfigError(
            f"no signing key in {config.data_path / 'secrets'}: is --data-dir right?"
            " ('yggdrasil serve' creates the key)"
        )
    old, new = rotate_signing_key(config.data_path)
    print(f"new signing key {new}; key {old} is retired and still verifies its tokens")
    print("restart the server to sign with the new key")


def _run(args: argparse.Namespace) -> int:
    """Run the command; failures raise (``main`` turns them into one line)."""
    if args.command == "device":
        configure("warning", "text")
        return device_cli.run(args)
    if args.command == "provider":
        configure("warning", "text")
        return provider_cli.run(args)
    config = _config(args)
    configure(config.log.level, config.log.format)
    if args.command in _admin_cli.COMMANDS:
        return _admin_cli.run(args, config)
    if args.command == "serve":
        trio.run(_serve, config)
    elif args.command == "migrate":
        applied = trio.run(_migrate, config)
        print(f"applied {len(applied)} migration(s): {applied}" if applied else "up to date")
    elif args.command == "admin":
        if trio.run(_grant, config, args.email, args.role):
            print(f"{args.email} now has the role {args.role}; their own tokens were revoked")
        else:
            print(f"{args.email} has the role {args.role} already; nothing changed")
    elif args.command in ("backup", "restore"):
        _backup_or_restore(config, args)
    elif args.command == "audit":
        print(trio.run(_verify_audit, config))
    else:
        _keys(config, args)
    return 0


def _backup_or_restore(config: Config, args: argparse.Namespace) -> None:
    server.check(config)
    if args.command == "backup":
        target = Path(args.to)
        made = trio.run(backup, config, target)
        audit = f", {made.audit_entries} audit entries verified" if made.backend == "sqlite" else ""
        print(
            f"wrote {target} ({made.size} bytes): the {made.backend} database{audit} and"
            f" {made.secret_files} secret file(s); it holds the secrets, keep it as safe as them"
        )
    else:
        done = trio.run(restore, config, Path(args.archive))
        print(
            f"restored the {done.backend} database ({done.audit_entries} audit entries verified)"
            f" and {done.secret_files} secret file(s) into {config.data_path}"
        )


async def _verify_audit(config: Config) -> str:
    """``yggdrasil audit verify``: one line when the chain holds; a broken chain raises
    ``AuditChainBroken`` naming the first entry that does not match (exit 1)."""
    sqlite = config.data_path / "yggdrasil.sqlite3"
    if not config.database.url and not sqlite.exists():
        raise ConfigError(f"no database at {sqlite}: is --data-dir (or --database-url) right?")
    where = _redacted(config.database.url) if config.database.url else str(sqlite)

    async def work(db: Database) -> str:
        if not await _has_schema(db):
            raise ConfigError(f"{where} holds no Yggdrasil data: is the URL right?")
        await migrate(db)
        log = AuditLog(db)
        count = await log.verify_chain()
        first, last = await log.span()
        if not count:
            return f"audit chain ok: no entries (cut at {first - 1})"
        cut = f", entries up to {first - 1} removed by retention" if first > 1 else ""
        return f"audit chain ok: {count} entries, {first} to {last}{cut}"

    return await _with_database(config, work)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        failure = sole_exception(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(failure, KeyboardInterrupt):
            return 130
        if args.debug:
            traceback.print_exception(failure)
        line, status = describe(failure)
        print(f"yggdrasil: {' '.join(line.split())}", file=sys.stderr, flush=True)
        return status


def describe(exc: BaseException) -> tuple[str, int]:
    """One line for a failure, and the exit status: 2 for configuration errors, else 1."""
    match exc:
        case ConfigError():
            return exc.message, 2
        case StoreUnavailable():
            return f"store unavailable: {exc.message}", 1
        case YggdrasilError():
            return exc.message, 1
        case Escalated():
            cause = exc.__cause__
            return f"giving up: {exc}" + (f": {_one_line(cause)}" if cause else ""), 1
        case OSError() if exc.strerror:
            where = f" ({exc.filename})" if exc.filename else ""
            return f"{exc.strerror.lower()}{where}", 1
    return f"unexpected error: {_one_line(exc)} (--debug shows the traceback)", 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run() -> None:
    sys.exit(main())
