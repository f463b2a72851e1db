"""Operator commands on the server's data store: ``users``, ``devices``, ``enrolment-keys``,
``networks``; ``config show`` and ``config example``; ``status`` of a running server.

The store commands open the configured store (the data directory's SQLite, or
``--database-url``) in this process, act as :data:`~yggdrasil.accounts.CLI_OPERATOR` (the
audit log names it ``cli``) and write what they revoke to the store, where every running
instance picks it up within ``auth.revocation_sync_s`` and ends the sessions concerned. What
they delete goes exactly as if its owner (or an operator through the API) had deleted it.

Output is a table for people, or JSON with ``--json``. Destructive commands (suspend, delete,
revoke) do nothing without ``--yes``. A failure is one line on standard error: exit 2 for a
mistake in the command or configuration, 1 for anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx
import msgspec
import trio

from . import server
from ._asyncio_thread import open_asyncio_thread
from ._config import Config
from ._config_text import example_config, render_config
from ._crypto import open_vault
from ._errors import (
    ConfigError,
    Invalid,
    NotFound,
    YggdrasilError,
    sole_exception,
)
from .accounts import CLI_OPERATOR, Operators, User
from .billing import BillingData, Ledger
from .devices import Device
from .store import MAX_PAGE, AuditLog, Page, migrate, open_database

T = TypeVar("T")
log = logging.getLogger(__name__)

KEYS_COMMAND = "enrolment-keys"
COMMANDS = {"users", "devices", KEYS_COMMAND, "enrollment-keys", "networks", "config", "status"}
"""The top-level commands this module adds and runs."""


class UsageError(Exception):
    """The command cannot run as given (exit 2)."""


# --------------------------------------------------------------------- the parser


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add this module's commands to the ``yggdrasil`` parser; ``common`` adds the options
    every store command takes (``--config``, ``--data-dir``, ``--database-url``, logging)."""

    def command(
        group: argparse._SubParsersAction,  # type: ignore[type-arg]
        name: str,
        help_: str,
        *,
        listing: bool = False,
        confirm: bool = False,
        json_output: bool = True,
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, help=help_, description=help_)
        common(parser)
        if json_output:
            parser.add_argument("--json", action="store_true", help="print JSON for machines")
        if listing:
            parser.add_argument(
                "--limit", type=int, default=50, metavar="N", help=f"at most N (1..{MAX_PAGE})"
            )
            parser.add_argument("--cursor", help="continue a listing where it said 'more'")
        if confirm:
            parser.add_argument("--yes", action="store_true", help="really do it")
        return parser

    def group(name: str, help_: str, **kwargs: Any) -> argparse._SubParsersAction:  # type: ignore[type-arg]
        parser = commands.add_parser(name, help=help_, description=help_, **kwargs)
        tasks: argparse._SubParsersAction = parser.add_subparsers(  # type: ignore[type-arg]
            dest="task", required=True, metavar="TASK"
        )
        return tasks

    users = group("users", "find, show, suspend and delete users")
    found = command(users, "list", "list users, oldest first", listing=True)
    found.add_argument("--search", metavar="TEXT", help="part of an e-mail address, or a user id")
    found.add_argument("--status", choices=["active", "suspended", "deleted"])
    command(users, "show", "a user with their networks and devices").add_argument(
        "user", metavar="EMAIL_OR_ID"
    )
    suspend = command(
        users,
        "suspend",
        "revoke every token of a user, disconnect their devices, refuse their sign-in",
        confirm=True,
    )
    suspend.add_argument("user", metavar="EMAIL_OR_ID")
    command(users, "reactivate", "let a suspended user sign in again").add_argument(
        "user", metavar="EMAIL_OR_ID"
    )
    delete = command(
        users, "delete", "delete an account as its owner would (cannot be undone)", confirm=True
    )
    delete.add_argument("user", metavar="EMAIL_OR_ID")

    devices = group("devices", "list, show and delete devices")
    listed = command(devices, "list", "list devices by network and id", listing=True)
    listed.add_argument("--user", metavar="EMAIL_OR_ID", help="only this user's devices")
    listed.add_argument("--network", metavar="NETWORK_ID", help="only this network's devices")
    for name, help_ in (
        ("show", "one device"),
        ("delete", "delete a device as its user would: its tokens end, its session closes"),
    ):
        parser = command(devices, name, help_, confirm=name == "delete")
        parser.add_argument(
            "device", metavar="[NETWORK_ID/]DEVICE_ID", help="device ids are unique per network"
        )
        parser.add_argument("--user", metavar="EMAIL_OR_ID", help="the device of this user")
        parser.add_argument("--network", metavar="NETWORK_ID", help="the device in this network")

    keys = group(KEYS_COMMAND, "list and revoke enrolment keys", aliases=["enrollment-keys"])
    listed = command(keys, "list", "list enrolment keys (never their secrets)", listing=True)
    listed.add_argument("--user", metavar="EMAIL_OR_ID", help="only the keys this user created")
    listed.add_argument("--network", metavar="NETWORK_ID", help="only this network's keys")
    listed.add_argument("--usable", action="store_true", help="only keys that can still be used")
    command(keys, "revoke", "end an enrolment key's validity now", confirm=True).add_argument(
        "key_id", metavar="KEY_ID"
    )

    networks = group("networks", "list, rename and delete networks")
    listed = command(networks, "list", "list networks, oldest first", listing=True)
    listed.add_argument("--user", metavar="EMAIL_OR_ID", help="only networks this user is in")
    command(networks, "show", "one network").add_argument("network_id", metavar="NETWORK_ID")
    rename = command(networks, "rename", "rename a network")
    rename.add_argument("network_id", metavar="NETWORK_ID")
    rename.add_argument("name", metavar="NAME")
    command(
        networks,
        "delete",
        "delete a network with its devices (not a home network; cannot be undone)",
        confirm=True,
    ).add_argument("network_id", metavar="NETWORK_ID")

    config = group("config", "the configuration")
    show = config.add_parser(
        "show",
        help="print the effective configuration (file, YGG_ environment, flags), secrets masked",
    )
    common(show)
    show.add_argument("--host", help="as for serve")
    show.add_argument("--api-port", type=int, metavar="PORT", help="as for serve")
    show.add_argument("--gateway-port", type=int, metavar="PORT", help="as for serve")
    show.add_argument("--turn-port", type=int, metavar="PORT", help="as for serve")
    show.add_argument("--bus-url", metavar="URL", help="as for serve")
    show.add_argument("--smtp-url", metavar="URL", help="as for serve")
    example = config.add_parser(
        "example", help="print every setting with its default and documentation"
    )
    example.set_defaults(config=None)

    status = commands.add_parser(
        "status", help="ask a running server whether it is ready (exit 0) or not (exit 1)"
    )
    common(status)
    status.add_argument("--host", help="the server's API host (server.host)")
    status.add_argument("--api-port", type=int, metavar="PORT", help="its API port (api.port)")
    status.add_argument("--url", help="the server's API URL (default: from the configuration)")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")


# --------------------------------------------------------------------- running


def run(args: argparse.Namespace, config: Config) -> int:
    """Run one of this module's commands; the exit status. A mistake in the command is one line
    on stderr and exit 2 here; every other failure propagates to ``cli.main``, which prints its
    one line (and, with ``--debug``, the traceback)."""
    try:
        if args.command == "config":
            print(render_config(config) if args.task == "show" else example_config(), end="")
            return 0
        if args.command == "status":
            return _status(config, args.url, args.timeout)
        return _run_store_command(args, config)
    except (UsageError, Invalid) as exc:
        _fail(exc.message if isinstance(exc, YggdrasilError) else str(exc))
        return 2


def _fail(message: str) -> None:
    print(f"yggdrasil: {message}", file=sys.stderr)


def _run_store_command(args: argparse.Namespace, config: Config) -> int:
    command = KEYS_COMMAND if args.command == "enrollment-keys" else args.command
    if getattr(args, "yes", None) is False:
        raise UsageError(f"{command} {args.task} changes data for good: add --yes to do it")
    if getattr(args, "limit", 1) not in range(1, MAX_PAGE + 1):
        raise UsageError(f"--limit must be between 1 and {MAX_PAGE}")
    handler = _HANDLERS[(command, args.task)]

    async def work(operators: Operators) -> Any:
        return await handler(operators, args, config)

    try:
        output = trio.run(_with_operators, config, work)
    except BaseExceptionGroup as group:
        raise sole_exception(group) from None
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(output), indent=2).decode())
    else:
        print(_human(command, args.task, output, config))
    return 0


async def _with_operators(config: Config, work: Callable[[Operators], Awaitable[T]]) -> T:
    server.check(config)
    server.prepare_data_dir(config)
    vault = open_vault(config.data_path, config.encryption.key_file, create=False)
    async with open_asyncio_thread() as bridge:
        db = await open_database(config.database, config.data_path, bridge)
        try:
            # Addresses and names are sealed with the servers' keyring. A data directory
            # without one holds nothing sealed; PostgreSQL's keyring is elsewhere.
            if vault is None and config.database.url:
                raise ConfigError(
                    f"no data keyring in {config.data_path / 'secrets'}: is --data-dir (or"
                    " encryption.key_file) right?"
                )
            if vault is not None:
                db.vault = vault
            await migrate(db)
            # Deleting a user here forgets their billing data exactly as the API does.
            billing = BillingData(Ledger(db, config.ledger), config.payouts)
            result = await work(Operators(db, {"billing": billing}))
            # Seal this command's audit entries into the chain now, rather than leave them to
            # the next server's sealer.
            await AuditLog(db).seal()
            return result
        finally:
            await db.aclose()


# --------------------------------------------------------------------- the handlers

Handler = Callable[[Operators, argparse.Namespace, Config], Awaitable[Any]]
_HANDLERS: dict[tuple[str, str], Handler] = {}


def _handles(command: str, task: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _HANDLERS[(command, task)] = handler
        return handler

    return register


async def _user_id(operators: Operators, ref: str | None) -> str | None:
    if ref is None:
        return None
    return (await operators.find_user(CLI_OPERATOR, ref)).user_id


@_handles("users", "list")
async def _users_list(ops: Operators, args: argparse.Namespace, _: Config) -> Page[User]:
    return await ops.list_users(
        CLI_OPERATOR, search=args.search, status=args.status, cursor=args.cursor, limit=args.limit
    )


@_handles("users", "show")
async def _users_show(ops: Operators, args: argparse.Namespace, _: Config) -> Any:
    user = await ops.find_user(CLI_OPERATOR, args.user)
    return await ops.user_detail(CLI_OPERATOR, user.user_id)


@_handles("users", "suspend")
async def _users_suspend(ops: Operators, args: argparse.Namespace, _: Config) -> User:
    user = await ops.find_user(CLI_OPERATOR, args.user)
    suspended, _at = await ops.set_status(CLI_OPERATOR, user.user_id, "suspended")
    return suspended


@_handles("users", "reactivate")
async def _users_reactivate(ops: Operators, args: argparse.Namespace, _: Config) -> User:
    user = await ops.find_user(CLI_OPERATOR, args.user)
    active, _at = await ops.set_status(CLI_OPERATOR, user.user_id, "active")
    return active


@_handles("users", "delete")
async def _users_delete(ops: Operators, args: argparse.Namespace, _: Config) -> dict[str, Any]:
    user = await ops.find_user(CLI_OPERATOR, args.user)
    await ops.delete_user(CLI_OPERATOR, user.user_id)
    return {"deleted": "user", "user_id": user.user_id, "email": user.email}


@_handles("devices", "list")
async def _devices_list(ops: Operators, args: argparse.Namespace, _: Config) -> Page[Device]:
    return await ops.list_devices(
        CLI_OPERATOR,
        user_id=await _user_id(ops, args.user),
        network_id=args.network,
        cursor=args.cursor,
        limit=args.limit,
    )


async def _one_device(ops: Operators, args: argparse.Namespace) -> Device:
    """The device ``args.device`` names (``NETWORK_ID/DEVICE_ID``, or an id that ``--user`` or
    ``--network`` make unique)."""
    network_id, slash, device_id = args.device.rpartition("/")
    if not slash:
        network_id = args.network
    elif args.network is not None and args.network != network_id:
        raise UsageError(f"{args.device} is not in the network --network {args.network}")
    page = await ops.list_devices(
        CLI_OPERATOR,
        user_id=await _user_id(ops, args.user),
        network_id=network_id or None,
        device_id=device_id,
        limit=2,
    )
    if not page.items:
        raise NotFound(f"no such device: {args.device}")
    if len(page.items) > 1:
        raise UsageError(
            f"several devices are called {device_id}: name one as NETWORK_ID/{device_id}, "
            "or add --user or --network (yggdrasil devices list shows them)"
        )
    return page.items[0]


@_handles("devices", "show")
async def _devices_show(ops: Operators, args: argparse.Namespace, _: Config) -> Device:
    return await _one_device(ops, args)


@_handles("devices", "delete")
async def _devices_delete(ops: Operators, args: argparse.Namespace, _: Config) -> dict[str, Any]:
    device = await _one_device(ops, args)
    await ops.delete_device(CLI_OPERATOR, device.network_id, device.device_id)
    return {"deleted": "device", "network_id": device.network_id, "device_id": device.device_id}


@_handles(KEYS_COMMAND, "list")
async def _keys_list(ops: Operators, args: argparse.Namespace, _: Config) -> Any:
    return await ops.list_enrollment_keys(
        CLI_OPERATOR,
        user_id=await _user_id(ops, args.user),
        network_id=args.network,
        usable=args.usable,
        cursor=args.cursor,
        limit=args.limit,
    )


@_handles(KEYS_COMMAND, "revoke")
async def _keys_revoke(ops: Operators, args: argparse.Namespace, _: Config) -> Any:
    return await ops.revoke_enrollment_key(CLI_OPERATOR, args.key_id)


@_handles("networks", "list")
async def _networks_list(ops: Operators, args: argparse.Namespace, _: Config) -> Any:
    return await ops.list_networks(
        CLI_OPERATOR, user_id=await _user_id(ops, args.user), cursor=args.cursor, limit=args.limit
    )


@_handles("networks", "show")
async def _networks_show(ops: Operators, args: argparse.Namespace, _: Config) -> Any:
    return await ops.get_network(CLI_OPERATOR, args.network_id)


@_handles("networks", "rename")
async def _networks_rename(ops: Operators, args: argparse.Namespace, _: Config) -> Any:
    return await ops.rename_network(CLI_OPERATOR, args.network_id, args.name)


@_handles("networks", "delete")
async def _networks_delete(ops: Operators, args: argparse.Namespace, _: Config) -> Any:
    network = await ops.get_network(CLI_OPERATOR, args.network_id)
    _at, revoked = await ops.delete_network(CLI_OPERATOR, args.network_id)
    return {
        "deleted": "network",
        "network_id": network.network_id,
        "name": network.name,
        "devices": len(revoked),
    }


# --------------------------------------------------------------------- output for people


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, headers on top."""
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _paged(text: str, page: Page[Any], empty: str) -> str:
    if not page.items:
        return empty
    if page.next_cursor is not None:
        text += f"\nmore: add --cursor {page.next_cursor}"
    return text


def _users_table(users: Sequence[User]) -> str:
    return table(
        ["USER_ID", "EMAIL", "ROLE", "STATUS", "CREATED (UTC)"],
        [(u.user_id, u.email, u.role, u.status, _when(u.created_at)) for u in users],
    )


def _devices_table(devices: Sequence[Device]) -> str:
    return table(
        ["NETWORK_ID", "DEVICE_ID", "NAME", "USER_ID", "STATUS", "LAST SEEN (UTC)"],
        [
            (d.network_id, d.device_id, d.name, d.user_id, d.status, _when(d.last_seen))
            for d in devices
        ],
    )


def _human(command: str, task: str, output: Any, config: Config) -> str:
    sync = f"{config.auth.revocation_sync_s:g} s"
    match command, task:
        case ("users", "list"):
            return _paged(_users_table(output.items), output, "no users")
        case ("users", "show"):
            user = output.user
            lines = [
                f"user       {user.user_id}",
                f"email      {user.email or '-'}",
                f"name       {user.display_name or '-'}",
                f"role       {user.role}",
                f"status     {user.status}",
                f"home       {user.home_network_id or '-'}",
                f"created    {_when(user.created_at)} UTC",
                "",
                table(
                    ["NETWORK_ID", "NAME", "ROLE"],
                    [(n.network_id, n.name, n.role) for n in output.networks],
                )
                if output.networks
                else "no networks",
                "",
                _devices_table(output.devices) if output.devices else "no devices",
            ]
            return "\n".join(lines)
        case ("users", "suspend"):
            return (
                f"suspended {output.email or output.user_id} ({output.user_id}): their tokens are "
                f"revoked and their devices disconnected within {sync} on every running "
                "instance; sign-in is refused until 'yggdrasil users reactivate'"
            )
        case ("users", "reactivate"):
            return f"{output.email or output.user_id} ({output.user_id}) can sign in again"
        case ("users", "delete"):
            return (
                f"deleted the account {output['email'] or ''} ({output['user_id']}) with its "
                f"devices and networks; its tokens stop working within {sync}"
            )
        case ("devices", "list"):
            return _paged(_devices_table(output.items), output, "no devices")
        case ("devices", "show"):
            return "\n".join(
                [
                    f"device     {output.network_id}/{output.device_id}",
                    f"name       {output.name}",
                    f"world      {output.world_type}",
                    f"user       {output.user_id}",
                    f"status     {output.status}",
                    f"last seen  {_when(output.last_seen)} UTC",
                    f"registered {_when(output.registered_at)} UTC",
                ]
            )
        case ("devices", "delete"):
            return (
                f"deleted the device {output['network_id']}/{output['device_id']}; its tokens "
                f"stop working and its session ends within {sync}"
            )
        case (_, "list") if command == KEYS_COMMAND:
            rows: list[Sequence[object]] = [
                (
                    k.key_id,
                    k.network_id,
                    k.created_by,
                    k.status,
                    _when(k.expires_at),
                    k.used_by_device,
                )
                for k in output.items
            ]
            headers = ["KEY_ID", "NETWORK_ID", "CREATED_BY", "STATUS", "EXPIRES (UTC)", "DEVICE"]
            return _paged(table(headers, rows), output, "no enrolment keys")
        case (_, "revoke"):
            return f"revoked the enrolment key {output.key_id}: it can no longer be used"
        case ("networks", "list"):
            rows = [
                (n.network_id, n.name, n.owner_id, n.members, _when(n.created_at))
                for n in output.items
            ]
            headers = ["NETWORK_ID", "NAME", "OWNER_ID", "MEMBERS", "CREATED (UTC)"]
            return _paged(table(headers, rows), output, "no networks")
        case ("networks", "show" | "rename"):
            return table(
                ["NETWORK_ID", "NAME", "OWNER_ID", "MEMBERS", "CREATED (UTC)"],
                [
                    (
                        output.network_id,
                        output.name,
                        output.owner_id,
                        output.members,
                        _when(output.created_at),
                    )
                ],
            )
        case ("networks", "delete"):
            return (
                f"deleted the network {output['name']} ({output['network_id']}) with "
                f"{output['devices']} device(s); their sessions end within {sync}"
            )
    raise AssertionError(f"no output for {command} {task}")


# --------------------------------------------------------------------- status


def status_url(config: Config) -> str:
    """The API's URL from the configuration: a wildcard host is asked on loopback."""
    host = config.server.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.api.port}"


def _status(config: Config, url: str | None, timeout_s: float) -> int:
    base = (url or status_url(config)).rstrip("/")
    try:
        response = httpx.get(f"{base}/readyz", timeout=timeout_s)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        _fail(f"no server answers at {base}: {reason}")
        return 1
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        _fail(f"{base}/readyz answered {response.status_code} without a JSON body")
        return 1
    lines = [("api", "answering", base)]
    ready = response.status_code == 200 and body.get("status") == "ready"
    if response.status_code == 200:
        for component, value in body.items():
            if component == "status":
                continue
            if isinstance(value, dict):
                state = str(value.get("status", ""))
                detail = str(value.get("detail") or value.get("message") or "")
            else:
                state, detail = "ready", str(value)
            lines.append((component, state, detail))
    else:
        found = body.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        code = str(error.get("code", response.status_code))
        message = str(error.get("message", ""))
        component = "store" if code.startswith("store") else "bus" if "bus" in message else code
        lines.append((component, "not ready", message))
    print(table(["COMPONENT", "STATE", "DETAIL"], lines))
    return 0 if ready else 1
