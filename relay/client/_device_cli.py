"""``yggdrasil device ...``: try the network by hand with the device client.

Credentials (tokens, device and network ids, server URLs) live in a JSON file (mode 0600), one per
device, so that two terminals can be two devices. ``login`` asks for one e-mail code per account,
not per device: the account's own session (signed in without a device) is kept in a second file,
``--account``, and each device joins with a single-use enrolment key made with it.

Every failure is one line on standard error and exit status 1 (``--debug`` adds the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import trio
import trio_asyncio

from ._client import (
    BUILTIN_ACTIONS,
    ComputeRefused,
    Connected,
    Credentials,
    DeliveryFailed,
    DeviceClient,
    Disconnected,
    Message,
    NotConnected,
    PresenceChanged,
    Replaced,
    RequestAnswered,
    SignalReceived,
    SignedOut,
    _sole,
)

ACCOUNT_FILE = "yggdrasil-account.json"


class DeviceCliError(Exception):
    """A failure of a ``yggdrasil device`` task, already in words for the user (one line)."""


class _Account(msgspec.Struct):
    """The account's own session (signed in without a device), for making enrolment keys."""

    api_url: str
    email: str
    user_id: str
    access_token: str
    refresh_token: str


def add_commands(
    commands: Any, *, debug: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    """Add ``device`` and its subcommands to the top-level argument parser; ``debug`` adds the
    ``--debug`` flag to each."""
    device = commands.add_parser("device", help="act as a device: sign in, connect, send")
    tasks = device.add_subparsers(dest="device_command", required=True, metavar="TASK")

    def with_credentials(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        if debug is not None:
            debug(parser)
        parser.add_argument(
            "--credentials",
            default="yggdrasil-device.json",
            metavar="FILE",
            help="where this device's tokens are kept (yggdrasil-device.json)",
        )
        return parser

    login = with_credentials(
        tasks.add_parser("login", help="sign a device in (one e-mail code per account)")
    )
    login.add_argument("--api", default="http://127.0.0.1:8080", help="the server's HTTP API")
    login.add_argument("--gateway", default="ws://127.0.0.1:8081", help="the device gateway")
    login.add_argument(
        "--account",
        metavar="FILE",
        help="the account's own session, reused by the next login"
        " (yggdrasil-account.json beside the credentials)",
    )
    login.add_argument("--email", help="needed when --account holds no session (yet)")
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
    ask = connected(
        tasks.add_parser("ask", help="ask the marketplace to answer a prompt (service/geri)")
    )
    ask.add_argument("prompt", help="the user message")
    ask.add_argument("--model", default="echo", help="the model to ask for (echo)")
    ask.add_argument("--max-cost", type=int, default=10, help="the most it may cost, in cents (10)")
    ask.add_argument("--max-tokens", type=int, default=1024)
    ask.add_argument("--system", default="", help="a system message before the prompt")
    ask.add_argument("--key", default=None, help="an idempotency key (default: a fresh one)")
    ask.add_argument("--timeout", type=float, default=300.0)
    connected(
        tasks.add_parser("listen", help="stay online: print what happens, answer echo/whoami")
    )


def _load(path: Path) -> Credentials:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Credentials)
    except FileNotFoundError:
        raise DeviceCliError(
            f"no credentials in {path}; run 'yggdrasil device login' first"
        ) from None
    except (OSError, msgspec.DecodeError) as exc:
        raise DeviceCliError(f"cannot read the credentials in {path}: {exc}") from None


def _write_private(path: Path, content: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.replace(temporary, path)


def _save(path: Path) -> Callable[[Credentials], None]:
    def save(credentials: Credentials) -> None:
        _write_private(path, msgspec.json.encode(credentials))

    return save


def _print(line: str) -> None:
    print(line, flush=True)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run one ``yggdrasil device`` task; the exit status. A failure is one line on standard
    error (with the traceback after it under ``--debug``)."""
    path = Path(args.credentials)
    try:
        if args.device_command == "login":
            return _login(args, path)
        try:
            return trio.run(_connected_task, args, path)
        except BaseExceptionGroup as group:
            raise _sole(group) from None
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if getattr(args, "debug", False):
            traceback.print_exception(exc)
        _say(f"yggdrasil: {' '.join(_describe(exc).split())}")
        return 1


def _describe(exc: Exception) -> str:
    match exc:
        case DeviceCliError():
            return str(exc)
        case SignedOut() | Replaced():
            return f"stopped: {exc}"
        case httpx.TransportError():
            return f"cannot reach {exc.request.url}: {_reason(exc)}"
        case trio.TooSlowError():
            return "no session with the gateway within 30 s"
        case ComputeRefused(code=code, message=message):
            return f"the marketplace refused the request ({code}): {message}"
        case NotConnected():
            return "the session ended before the answer did (ask again with the same --key)"
    return f"unexpected error: {type(exc).__name__}: {exc} (--debug shows the traceback)"


def _reason(exc: BaseException) -> str:
    """The innermost cause in words: "connection refused", "timed out"."""
    while True:
        if isinstance(exc, BaseExceptionGroup):  # trio: every address it tried failed
            exc = exc.exceptions[0]
        elif exc.__cause__ is not None or exc.__context__ is not None:
            exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        else:
            break
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _error(response: httpx.Response) -> str:
    """The server's error message (``{"error": {"code", "message"}}``), or the status."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
    return str(message)


def _retry_after(response: httpx.Response) -> str:
    """``try again in 14 min`` from a 429's or 503's ``Retry-After`` (seconds)."""
    try:
        seconds = int(response.headers.get("retry-after", ""))
    except ValueError:
        return "try again later"
    if seconds < 60:
        return f"try again in {max(seconds, 1)} s"
    return f"try again in {math.ceil(seconds / 60)} min"


class _Api:
    """The HTTP calls of ``login``: each failure is a :class:`DeviceCliError` in words."""

    def __init__(self, http: httpx.Client, url: str) -> None:
        self.http = http
        self.url = url

    def post(self, what: str, path: str, body: dict[str, Any], token: str = "") -> httpx.Response:
        return self._call(what, "POST", path, body, token)

    def get(self, what: str, path: str, token: str) -> httpx.Response:
        return self._call(what, "GET", path, None, token)

    def _call(
        self, what: str, method: str, path: str, body: dict[str, Any] | None, token: str
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        try:
            response = self.http.request(method, path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise DeviceCliError(f"cannot reach the API at {self.url}: {_reason(exc)}") from None
        if response.status_code == 429 and path == "/api/v1/users/login":
            raise DeviceCliError(f"too many codes requested; {_retry_after(response)}")
        if response.status_code in (429, 503):
            raise DeviceCliError(f"{what}: {_error(response)}; {_retry_after(response)}")
        return response

    def require(self, what: str, response: httpx.Response, status: int) -> dict[str, Any]:
        if response.status_code != status:
            raise DeviceCliError(f"{what}: {_error(response)}")
        answer: dict[str, Any] = response.json()
        return answer


def _login(args: argparse.Namespace, path: Path) -> int:
    with httpx.Client(base_url=args.api, timeout=30) as http:
        api = _Api(http, args.api)
        account_file = Path(args.account) if args.account else path.with_name(ACCOUNT_FILE)
        account = _account_session(args, api, account_file)
        network_id = args.network_id
        if not network_id:
            me = api.get("cannot read your account", "/api/v1/users/me", account.access_token)
            network_id = api.require("cannot read your account", me, 200)["home_network_id"]
        made = api.post(
            "cannot make an enrolment key",
            f"/api/v1/networks/{network_id}/enrollment-keys",
            {"ttl_s": 600},
            account.access_token,
        )
        key = api.require("cannot make an enrolment key", made, 201)["key"]
        device = {
            "device_id": args.device_id,
            "name": args.name or args.device_id,
            "world_type": args.world_type,
        }
        enrolled = api.post(
            "cannot sign the device in", "/api/v1/enroll", {"key": key, "device": device}
        )
        if enrolled.status_code == 409:
            raise DeviceCliError(
                f"the device {args.device_id} is in network {network_id} already: use its"
                " credentials file, or another --device-id"
            )
        session = api.require("cannot sign the device in", enrolled, 200)
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


def _account_session(args: argparse.Namespace, api: _Api, path: Path) -> _Account:
    """The account's own session: the one in ``path``, refreshed, or a new one from an
    e-mail code (saved to ``path``)."""
    email = args.email.strip().lower() if args.email else None
    try:
        kept: _Account | None = msgspec.json.decode(path.read_bytes(), type=_Account)
    except FileNotFoundError:
        kept = None
    except (OSError, msgspec.DecodeError) as exc:
        raise DeviceCliError(f"cannot read the account session in {path}: {exc}") from None
    if kept is not None and kept.api_url == args.api and email in (None, kept.email):
        refreshed = api.post(
            "cannot refresh the account session",
            "/api/v1/auth/refresh",
            {"refresh_token": kept.refresh_token},
        )
        if refreshed.status_code == 200:
            return _keep(path, kept.email, refreshed.json(), args.api)
        if email is None:
            raise DeviceCliError(
                f"the account session in {path} has ended; sign in again with --email"
            )
    if email is None:
        raise DeviceCliError(f"no account session in {path}: sign in with --email")
    sent = api.post("cannot send a code", "/api/v1/users/login", {"email": email})
    api.require("cannot send a code", sent, 202)
    _say(f"a code was sent to {email}")
    print("code: ", end="", file=sys.stderr, flush=True)
    code = sys.stdin.readline().strip()
    if not code:
        raise DeviceCliError("no code was entered")
    verified = api.post("sign-in failed", "/api/v1/users/verify", {"email": email, "code": code})
    return _keep(path, email, api.require("sign-in failed", verified, 200), args.api)


def _keep(path: Path, email: str, session: dict[str, Any], api_url: str) -> _Account:
    account = _Account(
        api_url=api_url,
        email=email,
        user_id=session["user_id"],
        access_token=session["access_token"],
        refresh_token=session["refresh_token"],
    )
    _write_private(path, msgspec.json.encode(account))
    return account


async def _connected_task(args: argparse.Namespace, path: Path) -> int:
    credentials = _load(path)
    await _reachable(credentials, args.transport)
    client = DeviceClient(
        credentials,
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


async def _reachable(credentials: Credentials, transport: str) -> None:
    """Fail at once, naming the URL, when nothing listens where the session would go (the
    client itself would keep retrying)."""
    url = credentials.gateway_url if transport == "websocket" else credentials.api_url
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    try:
        host, port = parts.hostname or "", parts.port or (443 if secure else 80)
    except ValueError:
        raise DeviceCliError(f"the URL {url} in the credentials is not valid") from None
    try:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        reason = "timed out" if isinstance(exc, trio.TooSlowError) else _reason(exc)
        what = "gateway" if transport == "websocket" else "API"
        raise DeviceCliError(f"cannot reach the {what} at {url}: {reason}") from None
    await stream.aclose()


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
    if command == "ask":
        return await _ask(args, client)
    return await _listen(client)


async def _ask(args: argparse.Namespace, client: DeviceClient) -> int:
    """The answer on standard output as it streams; how it ended on standard error."""
    messages = [("system", args.system)] if args.system else []
    messages.append(("user", args.prompt))
    stream = client.ask(
        args.model,
        messages,
        max_cost=args.max_cost,
        key=args.key,
        max_tokens=args.max_tokens,
        timeout_s=args.timeout,
    )
    async with contextlib.aclosing(stream):
        async for item in stream:
            if isinstance(item, str):
                print(item, end="", flush=True)
                continue
            print(flush=True)
            usage = f"{item.prompt_tokens}+{item.completion_tokens} tokens"
            where = f"provider {item.provider_id}" if item.provider_id else "no provider"
            if item.state != "COMPLETED":
                raise DeviceCliError(f"request {item.request_id} {item.state}: {item.error or ''}")
            _say(f"request {item.request_id} {item.state}: {usage}, {item.cost} cents, {where}")
            return 0
    raise NotConnected()


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
