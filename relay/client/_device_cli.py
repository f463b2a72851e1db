"""``yggdrasil device ...``: try the network by hand with the device client.

Credentials (tokens, device and network ids, server URLs) live in a JSON file (mode 0600), one per
device, so that two terminals can be two devices.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
import trio_asyncio

from ._client import (
    BUILTIN_ACTIONS,
    Connected,
    Credentials,
    DeliveryFailed,
    DeviceClient,
    Disconnected,
    Message,
    PresenceChanged,
    Replaced,
    RequestAnswered,
    SignalReceived,
    SignedOut,
    _sole,
)


def add_commands(commands: Any) -> None:
    """Add ``device`` and its subcommands to the top-level argument parser."""
    device = commands.add_parser("device", help="act as a device: sign in, connect, send")
    tasks = device.add_subparsers(dest="device_command", required=True, metavar="TASK")

    def with_credentials(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--credentials",
            default="yggdrasil-device.json",
            metavar="FILE",
            help="where this device's tokens are kept (yggdrasil-device.json)",
        )
        return parser

    login = with_credentials(tasks.add_parser("login", help="sign in with an e-mail code"))
    login.add_argument("--api", default="http://127.0.0.1:8080", help="the server's HTTP API")
    login.add_argument("--gateway", default="ws://127.0.0.1:8081", help="the device gateway")
    login.add_argument("--email", required=True)
    login.add_argument("--device-id", required=True)
    login.add_argument("--name", default="")
    login.add_argument(
        "--world-type", default="midgard", choices=["midgard", "asgard", "alfheim", "jotnar"]
    )
    login.add_argument("--network-id", help="join this network of yours (default: home)")

    def connected(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        with_credentials(parser)
        parser.add_argument(
            "--transport",
            choices=["websocket", "webrtc"],
            default="websocket",
            help="hold the session over the websocket gateway (default) or a WebRTC data channel",
        )
        parser.add_argument(
            "--relay-only",
            action="store_true",
            help="WebRTC: reach the server only through its TURN relay",
        )
        return parser

    connected(tasks.add_parser("peers", help="print the network map"))
    send = connected(tasks.add_parser("send", help="send a message to a device"))
    send.add_argument("to")
    send.add_argument("text")
    request = connected(tasks.add_parser("request", help="ask a device to run an action"))
    request.add_argument("to")
    request.add_argument("action")
    request.add_argument("params", nargs="?", default="{}", help="JSON object")
    request.add_argument("--timeout", type=float, default=10.0)
    connected(
        tasks.add_parser("listen", help="stay online: print what happens, answer echo/whoami")
    )


def _load(path: Path) -> Credentials:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Credentials)
    except FileNotFoundError:
        raise SystemExit(f"no credentials in {path}; run 'yggdrasil device login' first") from None


def _save(path: Path) -> Callable[[Credentials], None]:
    def save(credentials: Credentials) -> None:
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(msgspec.json.encode(credentials))
        os.replace(temporary, path)

    return save


def _print(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run one ``yggdrasil device`` task; the exit status."""
    path = Path(args.credentials)
    try:
        if args.device_command == "login":
            return _login(args, path)
        try:
            return trio.run(_connected_task, args, path)
        except BaseExceptionGroup as group:
            raise _sole(group) from None
    except (SignedOut, Replaced) as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _login(args: argparse.Namespace, path: Path) -> int:
    with httpx.Client(base_url=args.api, timeout=30) as http:
        sent = http.post("/api/v1/users/login", json={"email": args.email})
        if sent.status_code != 202:
            print(f"could not send a code: {sent.text}", file=sys.stderr)
            return 1
        print(f"a code was sent to {args.email}", file=sys.stderr)
        print("code: ", end="", file=sys.stderr, flush=True)
        code = sys.stdin.readline().strip()
        body: dict[str, Any] = {
            "email": args.email,
            "code": code,
            "device": {
                "device_id": args.device_id,
                "name": args.name or args.device_id,
                "world_type": args.world_type,
            },
        }
        if args.network_id:
            body["network_id"] = args.network_id
        verified = http.post("/api/v1/users/verify", json=body)
    if verified.status_code != 200:
        print(f"sign-in failed: {verified.text}", file=sys.stderr)
        return 1
    session = verified.json()
    _save(path)(
        Credentials(
            api_url=args.api,
            gateway_url=args.gateway,
            device_id=session["device_id"],
            network_id=session["network_id"],
            access_token=session["access_token"],
            refresh_token=session["refresh_token"],
        )
    )
    _print(f"signed in as {session['device_id']} in network {session['network_id']}")
    return 0


async def _connected_task(args: argparse.Namespace, path: Path) -> int:
    client = DeviceClient(
        _load(path),
        actions=BUILTIN_ACTIONS,
        on_credentials=_save(path),
        transport=args.transport,
        relay_only=args.relay_only,
    )
    status = 0
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        await nursery.start(client.run)
        with trio.fail_after(30):
            await client.wait_connected()
        status = await _task(args, client)
        nursery.cancel_scope.cancel()
    return status


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    """Ctrl-C or SIGTERM ends the command quietly (the session closes normally)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _task(args: argparse.Namespace, client: DeviceClient) -> int:
    command = args.device_command
    if command == "peers":
        for peer in sorted(client.peers.values(), key=lambda p: p.device_id):
            state = "online" if peer.online else "offline"
            _print(f"{peer.device_id}\t{state}\t{peer.world_type}\t{peer.name}")
        return 0
    if command == "send":
        try:
            await client.send(args.to, args.text.encode())
        except DeliveryFailed as failed:
            _print(f"not delivered: {failed.reason}")
            return 1
        _print("delivered")
        return 0
    if command == "request":
        try:
            params = json.loads(args.params)
        except ValueError:
            _print("params must be a JSON object")
            return 2
        result = await client.request(args.to, args.action, params, timeout_s=args.timeout)
        _print(json.dumps(msgspec.to_builtins(result), sort_keys=True))
        return 0 if result.ok else 1
    return await _listen(client)


async def _listen(client: DeviceClient) -> int:
    async for event in client.events:
        match event:
            case Connected(welcome=welcome):
                online = sorted(p.device_id for p in welcome.devices if p.online)
                _print(f"connected as {welcome.device_id}; online: {', '.join(online)}")
            case Disconnected(code=code, reason=reason):
                _print(f"disconnected ({code} {reason}); reconnecting")
            case PresenceChanged(device=device):
                _print(f"{device.device_id} is {'online' if device.online else 'offline'}")
            case Message(from_device=sender, data=data):
                _print(f"message from {sender}: {data.decode(errors='replace')}")
            case SignalReceived(from_device=sender, kind=kind):
                _print(f"signal from {sender}: {kind}")
            case RequestAnswered(from_device=sender, action=action, result=result):
                _print(f"request from {sender}: {action} -> {'ok' if result.ok else result.error}")
    return 0
