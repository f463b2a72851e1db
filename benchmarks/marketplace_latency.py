"""``latency`` part of ``benchmarks/marketplace.py``: what Yggdrasil adds to a compute request
on the device wire, against the same echo provider called directly, in the same run.

One ``yggdrasil serve`` (SQLite) subprocess; in this process, a provider device (raw websocket,
the built-in echo model: the prompt back word by word as ``job_chunk`` frames, then
``job_done``) and a requester device that sends ``compute_request`` frames to ``service/geri``.
The baseline: the same echo code behind a bare trio-websocket server that the client sends the
``job`` frame to itself (no hold, routing, settlement or relay).

Measured: at concurrency 1, the added time from the request leaving the client to the job
reaching the provider, and from the provider's last frame to the answer's end reaching the
client (p50/p99, minus the baseline's one hop each way), and the whole request; the server
process's CPU (``/proc/<pid>/stat``) per request (1-chunk answers) and per extra streamed chunk
(64-chunk answers); requests per second through the instance at a concurrency.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection, open_websocket_url, serve_websocket

from benchmarks._harness import hello, mint_tokens, mint_user_token, register_devices, start_server
from relay.protocol import (
    ChatMessage,
    ComputeDone,
    ComputeFail,
    ComputeRequest,
    Job,
    JobChunk,
    JobDone,
    decode_client_frame,
    decode_server_frame,
    encode,
)

UNTHROTTLED = {
    **{
        f"YGG_LIMITS_{key}": "1000000"
        for key in (
            "PER_CLIENT_RATE",
            "PER_CLIENT_BURST",
            "PER_PRINCIPAL_RATE",
            "PER_PRINCIPAL_BURST",
        )
    },
    "YGG_GATEWAY_MESSAGES_PER_S": "1000000",
    "YGG_GATEWAY_MAX_PENDING_REQUESTS": "1024",
    "YGG_PAYOUTS_KYC_REGIONS": "[]",
    "YGG_MARKETPLACE_MAX_RUNNING": "1024",
}


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Echo:
    """The echo model on a websocket: each ``job`` answered word by word; when each job
    arrived and when its last frame left (perf_counter)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.finished: dict[str, float] = {}

    async def serve(self, ws: WebSocketConnection, decode: Callable[[Any], Any]) -> None:
        while True:
            frame = decode(await ws.get_message())
            if not isinstance(frame, Job):
                continue
            self.arrived[frame.id] = time.perf_counter()
            words = frame.messages[-1].content.split()
            for n, word in enumerate(words):
                text = word if n == 0 else " " + word
                await ws.send_message(encode(JobChunk(id=frame.id, text=text, tokens=1)))
            await ws.send_message(encode(JobDone(id=frame.id, completion_tokens=len(words))))
            self.finished[frame.id] = time.perf_counter()


def _server_decode(data: Any) -> Any:
    return decode_server_frame(data)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _direct(n: int, words: int) -> tuple[list[float], list[float], list[float]]:
    """The baseline: the client sends the job to a bare echo server; (in, out, whole)."""
    echo = Echo()

    async def handler(request: Any) -> None:
        ws = await request.accept()
        await echo.serve(ws, lambda data: decode_server_frame(data))

    prompt = " ".join(["word"] * words)
    ins, outs, whole = [], [], []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        port = server.port
        async with open_websocket_url(f"ws://127.0.0.1:{port}") as ws:
            for i in range(n):
                job_id = f"j{i}"
                sent = time.perf_counter()
                job = Job(
                    id=job_id, model="echo", messages=[ChatMessage("user", prompt)], max_tokens=1024
                )
                await ws.send_message(encode(job))
                while True:
                    frame = decode_client_frame(await ws.get_message())
                    if isinstance(frame, JobDone):
                        break
                got = time.perf_counter()
                ins.append(echo.arrived[job_id] - sent)
                outs.append(got - echo.finished[job_id])
                whole.append(got - sent)
        nursery.cancel_scope.cancel()
    return ins, outs, whole


async def _yggdrasil(
    gateway: str, api: str, tokens: dict[str, str], pid: int, n: int, concurrency: int
) -> dict[str, Any]:
    echo = Echo()

    def headers(token: str) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", f"Bearer {token}".encode())]

    results: dict[str, Any] = {}
    async with (
        trio.open_nursery() as nursery,
        open_websocket_url(gateway, extra_headers=headers(tokens["seller_device"])) as pws,
    ):
        await hello(pws, "bench-provider")
        nursery.start_soon(echo.serve, pws, _server_decode)
        async with httpx.AsyncClient(base_url=api, timeout=30) as http:
            registered = await http.post(
                "/api/v1/marketplace/providers/register",
                headers={"Authorization": f"Bearer {tokens['seller']}"},
                json={
                    "device_id": "d0",
                    "models": ["echo"],
                    "price_per_1k": 1,
                    "max_concurrent": 1000,
                },
            )
            assert registered.status_code == 201, registered.text
        async with open_websocket_url(
            gateway, extra_headers=headers(tokens["buyer_device"])
        ) as rws:
            await hello(rws, "bench-requester")
            waiting: dict[int, trio.Event] = {}
            got: dict[int, tuple[float, ComputeDone]] = {}

            async def reader() -> None:
                while True:
                    frame = decode_server_frame(await rws.get_message())
                    if isinstance(frame, ComputeDone):
                        got[frame.id] = (time.perf_counter(), frame)
                        waiting.pop(frame.id).set()
                    elif isinstance(frame, ComputeFail):
                        raise RuntimeError(f"refused: {frame}")

            nursery.start_soon(reader)
            counter = iter(range(1, 10**9))

            async def one(words: int) -> tuple[float, float, float]:
                ask_id = next(counter)
                done = waiting[ask_id] = trio.Event()
                prompt = " ".join(["word"] * words)
                sent = time.perf_counter()
                await rws.send_message(
                    encode(
                        ComputeRequest(
                            id=ask_id,
                            model="echo",
                            messages=[ChatMessage("user", prompt)],
                            max_cost=10,
                            key=f"bench-{ask_id}",
                            max_tokens=1024,
                        )
                    )
                )
                await done.wait()
                at, answer = got.pop(ask_id)
                assert answer.state == "COMPLETED", answer
                return sent, at, 0.0

            # Concurrency 1: match each request to its job by order (one at a time).
            for _ in range(20):
                await one(1)  # warm up
            ins, outs, whole = [], [], []
            for _ in range(n):
                before = set(echo.arrived)
                sent, at, _ = await one(1)
                (job_id,) = set(echo.arrived) - before
                ins.append(echo.arrived[job_id] - sent)
                outs.append(at - echo.finished[job_id])
                whole.append(at - sent)
            results["ins"], results["outs"], results["whole"] = ins, outs, whole

            for words in (1, 64):
                start = cpu_s(pid)
                for _ in range(n):
                    await one(words)
                results[f"cpu{words}"] = (cpu_s(pid) - start) / n

            start_cpu, start = cpu_s(pid), time.perf_counter()
            total = max(n, 10 * concurrency)

            async def worker(count: int) -> None:
                for _ in range(count):
                    await one(1)

            async with trio.open_nursery() as workers:
                for _ in range(concurrency):
                    workers.start_soon(worker, total // concurrency)
            elapsed = time.perf_counter() - start
            results["rps"] = (total // concurrency) * concurrency / elapsed
            results["cpu_busy"] = (cpu_s(pid) - start_cpu) / elapsed
            nursery.cancel_scope.cancel()
    return results


def prepare(data_dir: Path) -> dict[str, str]:
    from yggdrasil import SqliteDatabase, migrate

    data_dir.mkdir(parents=True, exist_ok=True)

    async def main() -> list[tuple[str, str]]:
        db = await SqliteDatabase.open(data_dir / "yggdrasil.sqlite3")
        try:
            await migrate(db)
            return await register_devices(db, 2, per_network=1, data_dir=data_dir)
        finally:
            await db.aclose()

    owners = trio.run(main)
    device_tokens = mint_tokens(data_dir, owners)
    return {
        "seller": mint_user_token(data_dir, *owners[0]),
        "buyer": mint_user_token(data_dir, *owners[1]),
        "seller_device": device_tokens[0],
        "buyer_device": device_tokens[1],
    }


def setup_money(api: str, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=api, timeout=30) as http:

        def post(who: str, path: str, body: dict[str, Any], key: str | None = None) -> None:
            headers = {"Authorization": f"Bearer {tokens[who]}"}
            if key:
                headers["Idempotency-Key"] = key
            response = http.post(path, json=body, headers=headers)
            assert response.status_code == 201, response.text

        post(
            "seller",
            "/api/v1/payments/methods",
            {"kind": "paypal", "token": "tok_sandbox_paypal", "purposes": ["payout"]},
        )
        post("buyer", "/api/v1/payments/methods", {"kind": "card", "token": "tok_sandbox_visa"})
        post("buyer", "/api/v1/payments/process", {"amount": 50_000}, key="bench-fund")


def latency(n: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        tokens = prepare(data_dir)
        process, urls = start_server(data_dir, Path(tmp) / "server.log", env=UNTHROTTLED)
        try:
            setup_money(urls["api"], tokens)
            base_in, base_out, base_whole = trio.run(_direct, n, 1)
            got = trio.run(
                _yggdrasil, urls["gateway"], urls["api"], tokens, process.pid, n, concurrency
            )
        finally:
            process.terminate()
            process.wait(timeout=15)
    rows = [
        ("request in -> job at provider", got["ins"], base_in),
        ("last token -> answer complete", got["outs"], base_out),
        ("whole request (1 chunk)", got["whole"], base_whole),
    ]
    print(f"latency at concurrency 1, {n} requests (ms; added = Yggdrasil - direct)")
    print(
        f"{'':32} {'ygg p50':>8} {'ygg p99':>8} {'direct p50':>11} {'direct p99':>11}"
        f" {'added p50':>10} {'added p99':>10}"
    )
    for name, ygg, base in rows:
        y50, y99, b50, b99 = _pct(ygg, 0.5), _pct(ygg, 0.99), _pct(base, 0.5), _pct(base, 0.99)
        print(
            f"{name:32} {y50:8.2f} {y99:8.2f} {b50:11.3f} {b99:11.3f}"
            f" {y50 - b50:10.2f} {y99 - b99:10.2f}"
        )
    whole50 = statistics.median(got["whole"]) / statistics.median(base_whole)
    print(f"whole request, p50 ratio to direct: {whole50:.1f}x")
    per_chunk = (got["cpu64"] - got["cpu1"]) / 63
    print(f"server CPU per request (1 chunk): {got['cpu1'] * 1000:.2f} ms")
    print(f"server CPU per extra streamed chunk: {per_chunk * 1000:.3f} ms")
    print(
        f"throughput at concurrency {concurrency}: {got['rps']:.0f} requests/s"
        f" (server CPU busy {got['cpu_busy'] * 100:.0f} %)"
    )
