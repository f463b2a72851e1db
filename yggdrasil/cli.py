"""The ``yggdrasil`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import trio

from actors import Escalated
from relay.client import device_cli

from . import _admin_cli, server
from ._asyncio_thread import open_asyncio_thread
from ._config import Config, load_config
from ._errors import ConfigError, NotFound, StoreUnavailable, sole_exception
from ._logging import configure
from ._secrets import rotate_signing_key
from ._version import VERSION
from .accounts import Operators
from .store import Database, migrate, open_database

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


def _common(parser: argparse.ArgumentParser) -> None:
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

    device_cli.add_commands(commands)
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

        nursery.start_soon(watch_signals)
        await server.serve(config, stop=stop)
        nursery.cancel_scope.cancel()


async def _with_database(config: Config, work: Callable[[Database], Awaitable[T]]) -> T:
    server.check(config)
    server.prepare_data_dir(config)

    async with open_asyncio_thread() as bridge:
        db = await open_database(config.database, config.data_path, bridge)
        try:
            return await work(db)
        finally:
            await db.aclose()


async def _migrate(config: Config) -> list[int]:
    return await _with_database(config, migrate)


async def _grant(config: Config, email: str, role: Literal["user", "operator"]) -> str:
    async def work(db: Database) -> str:
        await migrate(db)
        user = await Operators(db).grant_role(email, role)
        return user.user_id

    return await _with_database(config, work)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "device":
        configure("warning", "text")
        return device_cli.run(args)
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"yggdrasil: {exc.message}", file=sys.stderr)
        return 2
    configure(config.log.level, config.log.format)
    if args.command in _admin_cli.COMMANDS:
        return _admin_cli.run(args, config)
    try:
        if args.command == "serve":
            trio.run(_serve, config)
        elif args.command == "migrate":
            applied = trio.run(_migrate, config)
            print(f"applied {len(applied)} migration(s): {applied}" if applied else "up to date")
        elif args.command == "admin":
            user_id = trio.run(_grant, config, args.email, args.role)
            print(
                f"{args.email} ({user_id}) now has the role {args.role}; their tokens were revoked"
            )
        else:
            old, new = rotate_signing_key(config.data_path)
            print(f"new signing key {new}; key {old} is retired and still verifies its tokens")
            print("restart the server to sign with the new key")
    except ConfigError as exc:
        log.error("%s", exc.message)
        return 2
    except NotFound:
        log.error("no such user")
        return 1
    except StoreUnavailable as exc:
        log.error("store unavailable: %s", exc.message)
        return 1
    except Escalated as exc:
        log.error("giving up: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def run() -> None:
    sys.exit(main())
