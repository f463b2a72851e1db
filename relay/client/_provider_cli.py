"""``yggdrasil provider run``: the reference provider agent. It connects as a device (the
credentials of ``yggdrasil device login``), receives the marketplace's jobs and answers them
from a local OpenAI-compatible endpoint (``--upstream http://127.0.0.1:8080/v1``: llama.cpp
server, Ollama, vLLM), streaming, or from the built-in ``echo`` model (the last user message,
word by word). Register the device as a provider afterwards (``POST
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
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from ..protocol import (
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
        help="a model this agent serves (repeatable; 'echo' is built in); default echo",
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
        if any(m != ECHO for m in models) and not args.upstream:
            raise ProviderCliError("models other than echo need --upstream URL")
        credentials = _load(Path(args.credentials))
        try:
            trio.run(_serve, credentials, models, args.upstream, args.timeout)
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


async def _serve(
    credentials: Credentials, models: list[str], upstream: str | None, timeout_s: float
) -> None:
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
        print(
            f"provider: device {welcome.device_id} connected, serving {', '.join(models)}",
            flush=True,
        )
        send, receive = trio.open_memory_channel[bytes](256)
        running: dict[str, trio.CancelScope] = {}
        async with httpx.AsyncClient(timeout=timeout_s) as http, trio.open_nursery() as nursery:

            async def writer() -> None:
                async for data in receive:
                    await ws.send_message(data)

            async def serve_job(job: Job, scope: trio.CancelScope) -> None:
                with scope:
                    try:
                        await _answer(job, models, upstream, http, send)
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
                        scope = running[frame.id] = trio.CancelScope()
                        nursery.start_soon(serve_job, frame, scope)
                    case JobCancel(id=job_id):
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
) -> None:
    prompt = sum(len(m.content.split()) for m in job.messages)
    if job.model not in models:
        await send.send(encode(JobFail(id=job.id, error=f"model {job.model} is not served here")))
        return
    completion = 0
    if job.model == ECHO:
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
