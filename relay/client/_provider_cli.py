"""``yggdrasil provider run``: the reference provider agent. It connects as a device (the
credentials of ``yggdrasil device login``), receives the marketplace's jobs and answers them
from a local OpenAI-compatible endpoint (``--upstream http://127.0.0.1:8080/v1``: llama.cpp
server, Ollama, vLLM), streaming, or from the built-in ``echo`` model (the last user message,
word by word). Two more built-in models are for tests: ``echo-slow`` (echo, after
``--delay-first-token`` seconds) and ``echo-fail`` (fails every job at once). It prints a line
for every job it gets (``job <id> <model>``) and every job it is told to stop (``cancelled
<id>``). Register the device as a provider afterwards (``POST
/api/v1/marketplace/providers/register``); the registration's test job comes to this agent.

Every failure is one line on standard error and exit status 1 (``--debug`` adds the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
import trio.lowlevel
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, open_websocket_url

from ..protocol import (
    CLOSE_REPLACED,
    VERSION,
    Error,
    Hello,
    Job,
    JobCancel,
    JobChunk,
    JobDone,
    JobFail,
    Ping,
    Pong,
    ProtocolError,
    Welcome,
    decode_server_frame,
    encode,
)
from ._client import Credentials

ECHO = "echo"
ECHO_SLOW = "echo-slow"
ECHO_FAIL = "echo-fail"
BUILT_IN = (ECHO, ECHO_SLOW, ECHO_FAIL)
"""Built-in models: ``echo``, and for tests ``echo-slow`` (echo after a delay) and ``echo-fail``."""


class ProviderCliError(Exception):
    """A failure already in words for the user (one line)."""


def add_commands(
    commands: Any, *, debug: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    provider = commands.add_parser("provider", help="sell this device's compute on the marketplace")
    tasks = provider.add_subparsers(dest="provider_command", required=True, metavar="TASK")
    run = tasks.add_parser("run", help="serve marketplace jobs as this device")
    if debug is not None:
        debug(run)
    run.add_argument(
        "--credentials",
        default="yggdrasil-device.json",
        metavar="FILE",
        help="this device's tokens, from 'yggdrasil device login' (yggdrasil-device.json)",
    )
    run.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="a model this agent serves (repeatable; 'echo' is built in, and for tests"
        " 'echo-slow' and 'echo-fail'); default echo",
    )
    run.add_argument(
        "--delay-first-token",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long the test model echo-slow waits before its first token (5)",
    )
    run.add_argument(
        "--upstream",
        metavar="URL",
        help="a local OpenAI-compatible API (http://127.0.0.1:8080/v1) for models other than echo",
    )
    run.add_argument("--timeout", type=float, default=120.0, help="seconds per upstream answer")


def run(args: argparse.Namespace) -> int:
    try:
        models = args.model or [ECHO]
        if any(m not in BUILT_IN for m in models) and not args.upstream:
            raise ProviderCliError("models other than the built-in echo need --upstream URL")
        if not 0 <= args.delay_first_token <= 86_400:
            raise ProviderCliError("--delay-first-token: 0 to 86400 seconds")
        path = Path(args.credentials)
        agent = _Agent(
            _load(path), path, models, args.upstream, args.timeout, args.delay_first_token
        )
        try:
            trio.run(agent.run)
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if getattr(args, "debug", False):
            traceback.print_exception(exc)
        print(f"yggdrasil: {' '.join(_describe(exc).split())}", file=sys.stderr, flush=True)
        return 1


def _describe(exc: BaseException) -> str:
    match exc:
        case ProviderCliError():
            return str(exc)
        case HandshakeError():
            return f"the gateway refused the session: {exc}"
        case OSError():
            return f"cannot reach the gateway: {exc.strerror or exc}"
        case ConnectionClosed():
            reason = exc.reason
            return f"the gateway closed the session ({reason.code if reason else '?'})"
    return f"unexpected error: {type(exc).__name__}: {exc} (--debug shows the traceback)"


def _load(path: Path) -> Credentials:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Credentials)
    except FileNotFoundError:
        raise ProviderCliError(
            f"no credentials in {path}: sign the device in with 'yggdrasil device login'"
        ) from None
    except (OSError, msgspec.DecodeError) as exc:
        raise ProviderCliError(f"cannot read the credentials in {path}: {exc}") from None


class _Agent:
    """One agent: its credentials (refreshed and saved back to ``path`` when the gateway says
    the access token expired), its models, and the session it keeps up."""

    def __init__(
        self,
        credentials: Credentials,
        path: Path | None,
        models: list[str],
        upstream: str | None,
        timeout_s: float,
        delay_s: float,
    ) -> None:
        self.credentials = credentials
        self.path = path
        self.models = models
        self.upstream = upstream
        self.timeout_s = timeout_s
        self.delay_s = delay_s

    async def run(self) -> None:
        """Stay connected: a session that ends after it was welcomed is opened again (with a
        backoff); an expired access token is refreshed first. Returns or raises only for what a
        user must fix (a refused refresh token, another session of this device)."""
        ever = False  # a session was welcomed once: losing one later is not fatal
        backoff = 0.5
        refreshed = False
        while True:
            try:
                await self._session()
            except ConnectionRejected as rejected:
                if rejected.status_code == 401 and not refreshed:
                    await self._refresh()  # the access token expired (the agent runs for hours)
                    refreshed = True
                    continue
                if not ever:
                    raise
            except ConnectionClosed as closed:
                if closed.reason is not None and closed.reason.code == CLOSE_REPLACED:
                    raise ProviderCliError("another session of this device took over") from None
                if not (ever or self._welcomed):
                    raise
            except (OSError, HandshakeError):
                if not (ever or self._welcomed):
                    raise
            if self._welcomed:
                ever, backoff, refreshed = True, 0.5, False
            print("provider: the session ended, connecting again", flush=True)
            await trio.sleep(backoff)
            backoff = min(30.0, backoff * 2)

    async def _refresh(self) -> None:
        body = {
            "refresh_token": self.credentials.refresh_token,
            "device_id": self.credentials.device_id,
            "network_id": self.credentials.network_id,
        }
        async with httpx.AsyncClient(base_url=self.credentials.api_url, timeout=30) as http:
            response = await http.post("/api/v1/auth/refresh", json=body)
        if response.status_code != 200:
            raise ProviderCliError(
                f"the refresh token was refused ({response.status_code}): sign the device in"
                " again with 'yggdrasil device login'"
            )
        session = response.json()
        self.credentials = msgspec.structs.replace(
            self.credentials,
            access_token=session["access_token"],
            refresh_token=session["refresh_token"],
        )
        if self.path is not None:
            temporary = self.path.with_suffix(".tmp")
            temporary.write_bytes(msgspec.json.encode(self.credentials))
            temporary.chmod(0o600)
            temporary.replace(self.path)
        print("provider: access token refreshed", flush=True)

    _welcomed = False

    async def _session(self) -> None:
        self._welcomed = False
        credentials = self.credentials
        models = self.models
        headers = [(b"authorization", f"Bearer {credentials.access_token}".encode())]
        async with open_websocket_url(
            credentials.gateway_url, extra_headers=headers, max_message_size=4 * 1024 * 1024
        ) as ws:
            await ws.send_message(encode(Hello(v=VERSION, client="yggdrasil-provider")))
            with trio.fail_after(30):
                welcome = decode_server_frame(await ws.get_message())
            if isinstance(welcome, Error):
                raise ProviderCliError(f"the gateway refused the session: {welcome.message}")
            if not isinstance(welcome, Welcome):
                raise ProviderCliError("the gateway did not welcome this device")
            self._welcomed = True
            print(
                f"provider: device {welcome.device_id} connected, serving {', '.join(models)}",
                flush=True,
            )
            send, receive = trio.open_memory_channel[bytes](256)
            running: dict[str, trio.CancelScope] = {}
            async with (
                httpx.AsyncClient(timeout=self.timeout_s) as http,
                trio.open_nursery() as nursery,
            ):

                async def writer() -> None:
                    async for data in receive:
                        await ws.send_message(data)

                async def serve_job(job: Job, scope: trio.CancelScope) -> None:
                    with scope:
                        try:
                            await _answer(job, models, self.upstream, http, send, self.delay_s)
                        except Exception as exc:  # one job's failure is that job's only
                            await send.send(encode(JobFail(id=job.id, error=str(exc)[:200])))
                    running.pop(job.id, None)

                nursery.start_soon(writer)
                while True:
                    try:
                        frame = decode_server_frame(await ws.get_message())
                    except ProtocolError:
                        continue  # a frame this agent does not know (a newer server)
                    match frame:
                        case Job():
                            print(f"provider: job {frame.id} {frame.model}", flush=True)
                            scope = running[frame.id] = trio.CancelScope()
                            nursery.start_soon(serve_job, frame, scope)
                        case JobCancel(id=job_id):
                            print(f"provider: cancelled {job_id}", flush=True)
                            cancelled = running.pop(job_id, None)
                            if cancelled is not None:
                                cancelled.cancel()
                        case Ping(nonce=nonce):
                            await send.send(encode(Pong(nonce=nonce)))
                        case _:
                            pass


async def _answer(
    job: Job,
    models: list[str],
    upstream: str | None,
    http: httpx.AsyncClient,
    send: trio.MemorySendChannel[bytes],
    delay_s: float = 0.0,
) -> None:
    prompt = sum(len(m.content.split()) for m in job.messages)
    if job.model not in models:
        await send.send(encode(JobFail(id=job.id, error=f"model {job.model} is not served here")))
        return
    completion = 0
    if job.model == ECHO_FAIL:
        await send.send(encode(JobFail(id=job.id, error="echo-fail fails every job")))
        return
    if job.model in (ECHO, ECHO_SLOW):
        if job.model == ECHO_SLOW:
            await trio.sleep(delay_s)
        last = next((m.content for m in reversed(job.messages) if m.role == "user"), "")
        words = last.split()[: job.max_tokens]
        for i, word in enumerate(words):
            text = word if i == len(words) - 1 else word + " "
            await send.send(encode(JobChunk(id=job.id, text=text, tokens=1)))
            completion += 1
            await trio.lowlevel.checkpoint()
    else:
        assert upstream is not None
        body = {
            "model": job.model,
            "messages": [{"role": m.role, "content": m.content} for m in job.messages],
            "max_tokens": job.max_tokens,
            "stream": True,
        }
        url = upstream.rstrip("/") + "/chat/completions"
        async with http.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                raise ProviderCliError(f"the upstream answered {response.status_code}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                for choice in event.get("choices", []):
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        completion += 1
                        await send.send(encode(JobChunk(id=job.id, text=text, tokens=1)))
    await send.send(encode(JobDone(id=job.id, prompt_tokens=prompt, completion_tokens=completion)))
