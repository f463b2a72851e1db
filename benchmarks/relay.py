"""Device-to-device relay: throughput and one-way latency, and memory per idle session.

Run:  .venv/bin/python -m benchmarks.relay [--seconds 3] [--pairs 1,10,100]
                                           [--sizes 64,1024,16384] [--sessions 1000,10000,50000]
                                           [--half-load 10:64,100:64] [--acks batch|each|both]

Two servers, each in its own process, measured in the same run by the same load generator (a third
process):

- baseline: a bare trio-websocket relay - each message names its destination, the server looks it up
  in a dict and forwards it (no authentication, no actors, no router);
- yggdrasil: ``yggdrasil serve`` on a fresh data directory - gateway, session actors, the router,
  per-session and per-network limits - with the devices' frames as a real device sends them.
  Its devices ask for batched acknowledgements (``"acks": "batch"`` in ``hello``, as the Python
  client does: one ``acks`` frame per write to the sender); ``--acks both`` (the default) measures
  each throughput cell a second time with one ``ack`` frame per message (``each``).

Senders are windowed (at most ``--window`` messages of each pair in flight) so that the figures are
a sustained rate, not a queue filling up. One-way latency is taken from a monotonic timestamp in the
payload (both ends are on this machine). Half load: for each ``pairs:size`` of ``--half-load``, both
servers get the same paced load, half the rate the baseline reached in the throughput cell, and
the one-way p99 is reported. Memory is the server's resident set growth per open idle session;
the idle clients are spread over several generator processes and 127.0.0.x source addresses (one
source address has ~28,000 ephemeral ports toward one server port), and a count the open-file
hard limit cannot hold is reported as such. Every Yggdrasil figure is printed with its ratio to
the baseline.
"""

from __future__ import annotations

import argparse
import multiprocessing
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from trio_websocket import WebSocketConnection, serve_websocket

from benchmarks._harness import (
    hello,
    mint_tokens,
    raise_fd_limit,
    register_devices,
    start_server,
)

if TYPE_CHECKING:
    from relay.protocol import AckMode

_STAMP = struct.Struct("!Q")
_DEST = struct.Struct("!I")


# ----------------------------------------------------------------------------- baseline server


def baseline_server(port_queue: Any) -> None:
    """A relay with nothing but a dict: the path names a connection, 4 bytes name the peer."""
    raise_fd_limit()
    connections: dict[int, WebSocketConnection] = {}

    async def handler(request: Any) -> None:
        ws = await request.accept()
        me = int(request.path.strip("/"))
        connections[me] = ws
        try:
            while True:
                message = await ws.get_message()
                (dest,) = _DEST.unpack_from(message)
                peer = connections.get(dest)
                if peer is not None:
                    await peer.send_message(message)
        except Exception:
            pass
        finally:
            connections.pop(me, None)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve_websocket(
                    handler,
                    "127.0.0.1",
                    0,
                    None,
                    max_message_size=2**21,
                    receive_buffer_size=65536,
                    task_status=task_status,
                )
            )
            port_queue.put(server.port)

    trio.run(main)


# ----------------------------------------------------------------------------- yggdrasil server


def prepare_yggdrasil(data_dir: Path, count: int, per_network: int) -> list[str]:
    """Register ``count`` devices directly in a fresh data directory, ``per_network`` to a user
    and network, and mint their access tokens with the data directory's own signing key."""
    from yggdrasil import SqliteDatabase, migrate

    data_dir.mkdir(parents=True, exist_ok=True)

    async def main() -> list[tuple[str, str]]:
        db = await SqliteDatabase.open(data_dir / "yggdrasil.sqlite3")
        await migrate(db)
        try:
            return await register_devices(db, count, per_network, data_dir=data_dir)
        finally:
            await db.aclose()

    return mint_tokens(data_dir, trio.run(main))


def start_yggdrasil(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    relaxed = {
        "YGG_GATEWAY_MESSAGES_PER_S": "1000000",
        "YGG_GATEWAY_TENANT_MESSAGES_PER_S": "100000000",
        "YGG_GATEWAY_TENANT_BYTES_PER_S": "100000000000",
        "YGG_GATEWAY_MAX_SESSIONS_PER_USER": "100000",
        "YGG_GATEWAY_QUEUE_SIZE": "1024",
        "YGG_GATEWAY_PING_INTERVAL_S": "600",
    }
    process, urls = start_server(data_dir, data_dir.parent / "yggdrasil.log", env=relaxed)
    return process, urls["gateway"]


# ----------------------------------------------------------------------------- load generator


class Target:
    """How the generator speaks to one kind of server."""

    def __init__(
        self, kind: str, url: str, tokens: list[str] | None = None, acks: AckMode = "batch"
    ) -> None:
        self.kind = kind
        self.url = url
        self.tokens = tokens or []
        self.acks: AckMode = acks

    async def connect(self, index: int) -> WebSocketConnection:
        return await self.connect_from(index, None)

    async def connect_from(self, index: int, source: str | None) -> WebSocketConnection:
        """Connect device ``index`` from the local address ``source`` (any if ``None``)."""
        if self.kind == "baseline":
            return await _open(f"{self.url}/{index}", [], source)
        headers = [(b"authorization", f"Bearer {self.tokens[index]}".encode())]
        ws = await _open(self.url, headers, source)
        await hello(ws, "bench", acks=self.acks)
        return ws

    def frame(self, dest: int, payload: bytes, seq: int) -> bytes:
        if self.kind == "baseline":
            return _DEST.pack(dest) + payload
        from relay.protocol import Send, encode

        return encode(Send(id=seq, to=f"d{dest}", data=payload))

    def payload_of(self, message: bytes | str) -> bytes | None:
        assert isinstance(message, bytes)
        if self.kind == "baseline":
            return message[_DEST.size :]
        from relay.protocol import Deliver, decode_server_frame

        frame = decode_server_frame(message)
        return frame.data if isinstance(frame, Deliver) else None


async def _open(
    url: str, headers: list[tuple[bytes, bytes]], source: str | None = None
) -> WebSocketConnection:
    from urllib.parse import urlsplit

    from trio_websocket import connect_websocket_url, wrap_client_stream

    if source is None:
        return await connect_websocket_url(
            _nursery, url, extra_headers=headers, max_message_size=2**21, receive_buffer_size=65536
        )
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port, local_address=source)
    return await wrap_client_stream(
        _nursery,
        stream,
        parts.hostname,
        parts.path or "/",
        extra_headers=headers,
        max_message_size=2**21,
        receive_buffer_size=65536,
    )


_SOURCES_EVERY = 20_000
"""Idle clients per loopback source address (~28,000 ephemeral ports each toward one port)."""


def _source_address(index: int) -> str:
    return f"127.0.0.{10 + index // _SOURCES_EVERY}"


_nursery: Any = None


async def run_cell(
    target: Target, pairs: int, size: int, seconds: float, window: int, rate: float = 0.0
) -> dict[str, float]:
    """Windowed senders as fast as the server allows, or (``rate`` > 0) paced: each pair sends
    ``rate / pairs`` messages a second on a fixed schedule (a late message does not push the
    next one back), with a window large enough never to hold them back."""
    global _nursery
    latencies: list[float] = []
    delivered = 0
    async with trio.open_nursery() as nursery:
        _nursery = nursery
        senders = [await target.connect(2 * i) for i in range(pairs)]
        receivers = [await target.connect(2 * i + 1) for i in range(pairs)]
        measuring = trio.Event()
        deadline = trio.current_time() + 0.5 + seconds

        async def pair(i: int) -> None:
            nonlocal delivered
            credit = trio.Semaphore(window)
            pad = b"\x00" * max(0, size - _STAMP.size)
            period = pairs / rate if rate > 0 else 0.0

            async def send() -> None:
                seq = 0
                start = trio.current_time() + period * i / pairs
                while trio.current_time() < deadline:
                    if period:
                        await trio.sleep_until(start + seq * period)
                    await credit.acquire()
                    seq += 1
                    payload = _STAMP.pack(time.monotonic_ns()) + pad
                    await senders[i].send_message(target.frame(2 * i + 1, payload, seq))

            async def drain_acks() -> None:
                if target.kind == "baseline":
                    return
                while True:
                    await senders[i].get_message()

            async def receive() -> None:
                nonlocal delivered
                while True:
                    payload = target.payload_of(await receivers[i].get_message())
                    if payload is None:
                        continue
                    credit.release()
                    if measuring.is_set():
                        (stamp,) = _STAMP.unpack_from(payload)
                        latencies.append((time.monotonic_ns() - stamp) / 1e6)
                        delivered += 1

            async with trio.open_nursery() as inner:
                inner.start_soon(drain_acks)
                inner.start_soon(receive)
                await send()
                await trio.sleep(0.2)
                inner.cancel_scope.cancel()

        async with trio.open_nursery() as group:
            for i in range(pairs):
                group.start_soon(pair, i)
            await trio.sleep(0.5)
            measuring.set()
        for ws in senders + receivers:
            await ws.aclose()
        nursery.cancel_scope.cancel()
    latencies.sort()
    count = len(latencies) or 1
    return {
        "rate": delivered / seconds,
        "p50": latencies[count // 2] if latencies else float("nan"),
        "p99": latencies[min(count - 1, int(count * 0.99))] if latencies else float("nan"),
    }


async def open_idle(target: Target, first: int, count: int, hold: trio.Event) -> None:
    global _nursery
    async with trio.open_nursery() as nursery:
        _nursery = nursery
        sockets = []
        limiter = trio.CapacityLimiter(64)

        async def one(i: int) -> None:
            async with limiter:
                sockets.append(await target.connect_from(i, _source_address(i)))

        async with trio.open_nursery() as group:
            for i in range(first, first + count):
                group.start_soon(one, i)
        hold.set()
        await trio.sleep_forever()


def generator(job: dict[str, Any], out: Any) -> None:
    raise_fd_limit()
    target = Target(job["kind"], job["url"], job.get("tokens"), job.get("acks", "batch"))
    if job["mode"] == "cell":
        out.put(
            trio.run(
                run_cell,
                target,
                job["pairs"],
                job["size"],
                job["seconds"],
                job["window"],
                job.get("rate", 0.0),
            )
        )
        return

    async def idle() -> None:
        hold = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_idle, target, job["first"], job["count"], hold)
            await hold.wait()
            out.put("open")
            await trio.to_thread.run_sync(job["release"].wait)
            nursery.cancel_scope.cancel()

    trio.run(idle)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure_cell(
    kind: str,
    url: str,
    tokens: list[str] | None,
    pairs: int,
    size: int,
    seconds: float,
    window: int,
    rate: float = 0.0,
    acks: AckMode = "batch",
) -> dict[str, float]:
    out: Any = multiprocessing.Queue()
    job = {
        "acks": acks,
        "rate": rate,
        "mode": "cell",
        "kind": kind,
        "url": url,
        "tokens": tokens,
        "pairs": pairs,
        "size": size,
        "seconds": seconds,
        "window": window,
    }
    process = multiprocessing.Process(target=generator, args=(job, out))
    process.start()
    result: dict[str, float] = out.get(timeout=seconds + 120)
    process.join()
    return result


_PER_GENERATOR = 15_000
"""Idle clients per generator process (each holds one descriptor per client)."""


def measure_idle(
    kind: str, url: str, tokens: list[str] | None, count: int, server_pid: int
) -> float:
    out: Any = multiprocessing.Queue()
    release = multiprocessing.Event()
    before = rss_kib(server_pid)
    processes = []
    for first in range(0, count, _PER_GENERATOR):
        job = {
            "mode": "idle",
            "kind": kind,
            "url": url,
            "tokens": tokens,
            "first": first,
            "count": min(_PER_GENERATOR, count - first),
            "release": release,
        }
        process = multiprocessing.Process(target=generator, args=(job, out))
        process.start()
        processes.append(process)
    for _ in processes:
        out.get(timeout=900)
    time.sleep(1.0)
    after = rss_kib(server_pid)
    release.set()
    for process in processes:
        process.join(timeout=60)
    time.sleep(1.0)
    return (after - before) / count


def open_file_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--pairs", default="1,10,100")
    parser.add_argument("--sizes", default="64,1024,16384")
    parser.add_argument("--sessions", default="1000,10000,50000")
    parser.add_argument(
        "--half-load", default="10:64", help="pairs:size cells measured at half the baseline's rate"
    )
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--keep-log", help="copy the server's log here (debugging)")
    parser.add_argument(
        "--acks",
        choices=["batch", "each", "both"],
        default="both",
        help="how Yggdrasil's senders are acknowledged in the throughput cells (hello's acks); "
        "both: a row for each (batch first); half load and memory use batch",
    )
    args = parser.parse_args(argv)
    pairs = [int(p) for p in args.pairs.split(",") if p]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    sessions = [int(s) for s in args.sessions.split(",") if s]
    half_load = [
        (int(cell.split(":")[0]), int(cell.split(":")[1]))
        for cell in args.half_load.split(",")
        if cell
    ]
    raise_fd_limit()
    limit = open_file_limit()
    # One descriptor per session in the server (and a margin for its own files).
    feasible = {count: min(count, (limit - 1000) // 1000 * 1000) for count in sessions}
    needed = max([2 * max([*pairs, *(p for p, _ in half_load)], default=1), *feasible.values()])

    ports: Any = multiprocessing.Queue()
    base = multiprocessing.Process(target=baseline_server, args=(ports,), daemon=True)
    base.start()
    baseline_url = f"ws://127.0.0.1:{ports.get(timeout=30)}"
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        # Pairs must share a network: networks of 10 devices hold 5 pairs each, as a
        # household's devices would.
        tokens = prepare_yggdrasil(data_dir, needed, per_network=10)
        ygg, ygg_url = start_yggdrasil(data_dir)
        try:
            window, seconds = args.window, args.seconds
            modes: list[AckMode] = ["batch", "each"] if args.acks == "both" else [args.acks]
            print(f"relay throughput, windowed senders (window {window}), {seconds:g} s per cell")
            print(
                f"{'pairs':>5} {'size':>6} | {'baseline msg/s':>14} {'p50 ms':>7} {'p99 ms':>7} | "
                f"{'acks':>5} {'yggdrasil msg/s':>15} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}"
            )
            bare_rate: dict[tuple[int, int], float] = {}
            for p in pairs:
                for size in sizes:
                    b = measure_cell(
                        "baseline", baseline_url, None, p, size, args.seconds, args.window
                    )
                    bare_rate[p, size] = b["rate"]
                    base_part = f"{b['rate']:>14.0f} {b['p50']:>7.2f} {b['p99']:>7.2f}"
                    for mode in modes:
                        y = measure_cell(
                            "yggdrasil", ygg_url, tokens, p, size, seconds, window, acks=mode
                        )
                        ratio = y["rate"] / b["rate"]
                        ygg_part = (
                            f"{mode:>5} {y['rate']:>15.0f} {ratio:>6.2f} "
                            f"{y['p50']:>7.2f} {y['p99']:>7.2f}"
                        )
                        print(f"{p:>5} {size:>6} | {base_part} | {ygg_part}", flush=True)
            if half_load:
                print("one-way latency at half the baseline's rate (paced senders, both servers)")
                print(
                    f"{'pairs':>5} {'size':>6} | {'offered msg/s':>13} | {'baseline p50':>12} "
                    f"{'p99 ms':>7} | {'yggdrasil p50':>13} {'p99 ms':>7} {'ratio':>6} {'<5ms':>5}"
                )
            for p, size in half_load:
                if (p, size) not in bare_rate:
                    full = measure_cell(
                        "baseline", baseline_url, None, p, size, args.seconds, args.window
                    )
                    bare_rate[p, size] = full["rate"]
                offered = bare_rate[p, size] / 2
                paced = (args.seconds, 4096, offered)
                b = measure_cell("baseline", baseline_url, None, p, size, *paced)
                y = measure_cell("yggdrasil", ygg_url, tokens, p, size, *paced)
                verdict = "yes" if y["p99"] < 5 else "no"
                print(
                    f"{p:>5} {size:>6} | {offered:>13.0f} | {b['p50']:>12.2f} {b['p99']:>7.2f} | "
                    f"{y['p50']:>13.2f} {y['p99']:>7.2f} {y['p99'] / b['p99']:>6.2f} {verdict:>5}",
                    flush=True,
                )
            print("memory per idle session (server RSS growth)")
            for count in sessions:
                measured = feasible[count]
                if measured < count:
                    print(
                        f"{count:>6} sessions | not possible here: the open-file hard limit is "
                        f"{limit} per process (one per session); measured at {measured} instead",
                        flush=True,
                    )
                    if measured <= 0 or measured in sessions:
                        continue
                b_kib = measure_idle("baseline", baseline_url, None, measured, base.pid or 0)
                y_kib = measure_idle("yggdrasil", ygg_url, tokens, measured, ygg.pid)
                print(
                    f"{measured:>6} sessions | baseline {b_kib:7.1f} KiB | yggdrasil "
                    f"{y_kib:7.1f} KiB | ratio {y_kib / b_kib if b_kib > 0 else float('nan'):.2f}",
                    flush=True,
                )
        finally:
            ygg.terminate()
            try:  # tens of thousands of sessions may still be ending
                ygg.wait(timeout=120)
            except subprocess.TimeoutExpired:
                ygg.kill()
                ygg.wait()
            base.kill()
            if args.keep_log:
                Path(args.keep_log).write_bytes((Path(tmp) / "yggdrasil.log").read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
