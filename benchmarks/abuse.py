"""Memory and fairness under abuse: the server's resident set, and a healthy pair's delivery rate,
while an attacker does its worst.

Run:  .venv/bin/python -m benchmarks.abuse [--seconds 3] [--cases enrol,login,slow,halfopen]
                                           [--concurrency 100] [--rounds 3] [--every 1]
                                           [--half-open 1000] [--env YGG_SECTION_KEY=VALUE]

Every case starts ``yggdrasil serve`` as a subprocess on a fresh data directory (all traffic on
127.0.0.1; devices registered directly in the data directory and their tokens minted with its key,
as in ``benchmarks.relay``) and then:

1. measures the healthy pair alone (the baseline): device ``d0`` sends 64-byte ``send`` frames to
   ``d1`` of the same network, at most ``--window`` (16) unacknowledged, ``d1`` reads its
   deliveries; the rate is deliveries per second over ``--seconds`` after a 0.5 s warm-up;
2. reads the server's resident set (``VmRSS`` in ``/proc/<pid>/status``), then starts the attack;
3. once the attack has reached its steady state, measures the pair again (fresh sessions, so the
   pair also has to connect under attack) while the attack goes on;
4. stops the attack and reads the resident set again after ``--settle`` seconds.

The resident set is sampled every 50 ms from the attack's start to its end: ``after`` is read when
the pair has been measured under attack (the attack still running), ``peak`` is the highest sample,
``growth`` is peak minus before (goal: under 64 MiB). The ratio is the pair's rate under attack
over its rate alone on the same server (goal: at least 0.8). Nothing is asserted. The pair sends
as fast as its window allows, so alone it keeps the server's event loop busy: the ratio is the share
of that loop it keeps under attack. The server's CPU use (the whole process, and its event-loop
thread) is printed for both measurements. The whole run takes about a minute.

The cases:

- ``enrol``: rounds of ``--concurrency`` (100) concurrent ``POST /api/v1/enroll`` with made-up keys
  of the right shape (``ek_<id>.<secret>``) and a valid device body, back to back, at least
  ``--rounds`` (3) of them and until the pair has been measured;
- ``login``: the same with ``POST /api/v1/users/login`` for fresh random e-mail addresses, each of
  which hashes a new code in the bounded pool (``auth.hash_workers`` 2 running,
  ``auth.hash_queue`` 64 waiting; 503 ``busy`` beyond). In both HTTP cases a round starts every
  ``--every`` seconds (1: a burst of 100 concurrent requests each second; 0: each round as soon as
  the last is answered, a flood at whatever rate the server answers), and the per-client limits
  (``[limits]`` ``per_client_*`` and ``auth_per_client_*``) are raised to 10^6: what an attacker
  with as many addresses as requests could do;
- ``slow``: in an attacker's network, four devices connect, send ``hello`` and never read their
  socket again, and a fifth floods each of them with 1 MiB ``send`` frames, one in flight per
  target, as fast as acks and nacks come back. The gateway's queue limits are the defaults
  (``queue_bytes`` 4 MiB per device, ``queue_bytes_total`` 256 MiB). The slow readers' kernel
  socket buffers (and the server's send buffers towards them) absorb several MiB first: that is
  kernel memory, not the server's resident set;
- ``halfopen``: ``--half-open`` (1,000) TCP connections to the gateway that each send
  ``GET / HTTP/1.1\\r\\nHost: x\\r\\n`` and nothing more, held open while the pair is measured; the
  server runs with ``gateway.handshake_timeout_s`` raised from 10 to 60 s so that none is dropped
  before the measurement ends.

In every case the per-session and per-network message counts (``gateway.messages_per_s``,
``gateway.tenant_messages_per_s``) are raised so that they do not throttle the healthy pair (nor
the flooder); the per-network byte rate stays at its default (``gateway.tenant_bytes_per_s``,
64 MiB/s), far above the pair's, and it is what holds the flooder back: past it the server stops
reading from the flooder until its budget refills. The attack runs in one load-generator process
and the healthy pair in another, each with its own trio loop, so the generator's work never delays
the pair's frames inside a loop; this orchestrating process only waits and samples. They all share
the machine's cores with the server, so the attacker's CPU (printed) is CPU the server does not
get.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import queue
import resource
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import WebSocketConnection, connect_websocket_url

from benchmarks._harness import hello, raise_fd_limit
from benchmarks._harness import start_server as start_yggdrasil
from benchmarks.relay import prepare_yggdrasil, rss_kib

MIB = 1024 * 1024
GOAL_GROWTH_MIB = 64.0
GOAL_RATIO = 0.8
CASES = ("enrol", "login", "slow", "halfopen")

# prepare_yggdrasil puts five devices in each network: d0-d4 belong to one user (the healthy pair
# is d0 -> d1), d5-d9 to another (the attacker: d5 floods d6-d9).
PAIR = (0, 1)
FLOODER = 5
SLOW = (6, 7, 8, 9)
_STAMP = struct.Struct("!Q")

RAISED_GATEWAY = {
    "YGG_GATEWAY_MESSAGES_PER_S": "1000000",
    "YGG_GATEWAY_TENANT_MESSAGES_PER_S": "100000000",
}
RELAXED_HTTP = {
    "YGG_LIMITS_PER_CLIENT_RATE": "1000000",
    "YGG_LIMITS_PER_CLIENT_BURST": "1000000",
    "YGG_LIMITS_AUTH_PER_CLIENT_RATE": "1000000",
    "YGG_LIMITS_AUTH_PER_CLIENT_BURST": "1000000",
}
HANDSHAKE_TIMEOUT = {"YGG_GATEWAY_HANDSHAKE_TIMEOUT_S": "60"}
CASE_ENV = {
    "enrol": {**RAISED_GATEWAY, **RELAXED_HTTP},
    "login": {**RAISED_GATEWAY, **RELAXED_HTTP},
    "slow": RAISED_GATEWAY,
    "halfopen": {**RAISED_GATEWAY, **HANDSHAKE_TIMEOUT},
}
TITLES = {
    "enrol": "100 concurrent bogus enrolments",
    "login": "100 concurrent code requests",
    "slow": "4 slow readers, 1 MiB flood",
    "halfopen": "1,000 half-open handshakes",
}


# ----------------------------------------------------------------------------- the server


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    api_port: int
    gateway_url: str


def start_server(data_dir: Path, log_path: Path, env: dict[str, str]) -> Server:
    process, urls = start_yggdrasil(
        data_dir, log_path, "--host", "127.0.0.1", "--log-level", "info", env=env
    )
    port = urlsplit(urls["api"]).port
    assert port is not None
    return Server(process, port, urls["gateway"])


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User and system CPU time so far of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Monitor:
    """Samples the server's resident set and CPU time (the whole process's, and its main thread's:
    the trio loop) every 50 ms while the orchestrator waits."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, float, float]] = []  # (monotonic, KiB, CPU s, loop)

    def sample(self) -> None:
        pid = self.pid
        at = time.monotonic()
        self.samples.append((at, rss_kib(pid), cpu_seconds(pid), cpu_seconds(pid, pid)))

    def wait(self, channel: Any, timeout: float) -> Any:
        """The next item of a multiprocessing queue, sampling while it does not come."""
        deadline = time.monotonic() + timeout
        while True:
            self.sample()
            try:
                return channel.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError("no answer from a load generator") from None

    def peak_kib(self, start: float, end: float) -> int:
        return max((rss for at, rss, _, _ in self.samples if start <= at <= end), default=0)

    def cpu_share(self, start: float, end: float) -> tuple[float, float]:
        """Cores the server used on average between two instants (1.0 = one core busy): the
        whole process, and its event-loop thread."""
        inside = [sample for sample in self.samples if start <= sample[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return float("nan"), float("nan")
        (t0, _, cpu0, loop0), (t1, _, cpu1, loop1) = inside[0], inside[-1]
        return (cpu1 - cpu0) / (t1 - t0), (loop1 - loop0) / (t1 - t0)


# ----------------------------------------------------------------------------- device sessions


async def _session(nursery: trio.Nursery, url: str, token: str, client: str) -> WebSocketConnection:
    """A device session over trio-websocket: handshake with the token, ``hello``, ``welcome``."""
    ws = await connect_websocket_url(
        nursery,
        url,
        extra_headers=[(b"authorization", f"Bearer {token}".encode())],
        max_message_size=2**21,
        receive_buffer_size=65536,
    )
    await hello(ws, client)
    return ws


def _client_frame(payload: bytes) -> bytes:
    """One small masked binary websocket frame, as a client must send it."""
    if len(payload) > 125:
        raise ValueError("only small frames are built here")
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x82, 0x80 | len(payload)]) + mask + masked


async def _raw_session(host: str, port: int, token: str) -> trio.SocketStream:
    """A device that upgrades, sends ``hello`` and never reads its socket again (not even the
    ``welcome``): the bytes the server sends pile up in the kernel's buffers, then in its queue."""
    from relay.protocol import Hello, encode

    stream = await trio.open_tcp_stream(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    await stream.send_all(head.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise RuntimeError("the gateway closed a slow reader's handshake")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"slow reader refused: {answer[:200]!r}")
    await stream.send_all(_client_frame(encode(Hello(client="abuse-slow-reader"))))
    return stream


# ----------------------------------------------------------------------------- the healthy pair


async def run_pair(url: str, tokens: list[str], seconds: float, window: int) -> dict[str, Any]:
    from relay.protocol import Ack, Deliver, Nack, Send, decode_server_frame, encode

    latencies: list[float] = []
    nacks: Counter[str] = Counter()
    delivered = 0
    measuring = False
    window_times = [0.0, 0.0]
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            sender = await _session(nursery, url, tokens[PAIR[0]], "abuse-pair-a")
            receiver = await _session(nursery, url, tokens[PAIR[1]], "abuse-pair-b")
        credit = trio.Semaphore(window)
        pad = b"\x00" * (64 - _STAMP.size)

        async def answers() -> None:
            while True:
                frame = decode_server_frame(await sender.get_message())
                if isinstance(frame, Ack):
                    credit.release()
                elif isinstance(frame, Nack):
                    nacks[frame.reason] += 1
                    credit.release()

        async def deliveries() -> None:
            nonlocal delivered
            while True:
                frame = decode_server_frame(await receiver.get_message())
                if isinstance(frame, Deliver) and measuring:
                    delivered += 1
                    (stamp,) = _STAMP.unpack_from(frame.data)
                    latencies.append((time.monotonic_ns() - stamp) / 1e6)

        async def send() -> None:
            seq = 0
            while True:
                await credit.acquire()
                seq += 1
                payload = _STAMP.pack(time.monotonic_ns()) + pad
                await sender.send_message(encode(Send(id=seq, to=f"d{PAIR[1]}", data=payload)))

        async with trio.open_nursery() as work:
            work.start_soon(answers)
            work.start_soon(deliveries)
            work.start_soon(send)
            await trio.sleep(0.5)
            measuring = True
            window_times[0] = time.monotonic()
            await trio.sleep(seconds)
            measuring = False
            window_times[1] = time.monotonic()
            work.cancel_scope.cancel()
        with trio.move_on_after(2):
            await sender.aclose()
            await receiver.aclose()
        nursery.cancel_scope.cancel()
    latencies.sort()
    start, end = window_times
    return {
        "rate": delivered / (end - start),
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "nacks": dict(nacks),
        "start": start,
        "end": end,
    }


def pair_process(url: str, tokens: list[str], seconds: float, window: int, out: Any) -> None:
    raise_fd_limit()
    try:
        out.put(trio.run(run_pair, url, tokens, seconds, window))
    except BaseException as exc:
        out.put({"error": repr(exc)})


def measure_pair(
    monitor: Monitor, url: str, tokens: list[str], seconds: float, window: int
) -> dict[str, Any]:
    out: Any = multiprocessing.Queue()
    process = multiprocessing.Process(target=pair_process, args=(url, tokens, seconds, window, out))
    process.start()
    result: dict[str, Any] = monitor.wait(out, seconds + 60)
    process.join(timeout=10)
    if "error" in result:
        result.update(rate=float("nan"), p99=float("nan"), nacks={}, start=0.0, end=0.0)
    return result


# ----------------------------------------------------------------------------- the attacks


async def _post(port: int, path: str, body: bytes) -> int:
    """One request on its own connection (``Connection: close``); the answer's status."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        await stream.send_all(head.encode() + body)
        # Read the head and the body it announces (hypercorn leaves closing to the client).
        answer = b""
        while True:
            end = answer.find(b"\r\n\r\n")
            if end >= 0:
                head_bytes = answer[:end].lower()
                at = head_bytes.find(b"content-length:")
                length = int(head_bytes[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
                if len(answer) >= end + 4 + length:
                    break
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def http_rounds(job: dict[str, Any], out: Any, stop: Any) -> dict[str, Any]:
    """Rounds of concurrent bogus sign-in requests, one every ``every`` seconds (0: back to
    back), until told to stop."""
    statuses: Counter[str] = Counter()
    rss_after_round: list[int] = []
    round_s: list[float] = []
    enrol = job["kind"] == "enrol"
    steady_at = (0.0, 0.0)

    async def one(i: int) -> None:
        if enrol:
            key = f"ek_{secrets.token_urlsafe(12)}.{secrets.token_urlsafe(32)}"
            device = {"device_id": f"bogus-{i}", "name": "bogus", "world_type": "midgard"}
            path, body = "/api/v1/enroll", {"key": key, "device": device}
        else:
            path, body = "/api/v1/users/login", {"email": f"v{secrets.token_hex(8)}@example.org"}
        try:
            with trio.fail_after(60):
                status = await _post(job["api_port"], path, json.dumps(body).encode())
            statuses[str(status)] += 1
        except (OSError, ValueError, IndexError, trio.TooSlowError) as exc:
            statuses[type(exc).__name__] += 1

    while True:
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i in range(job["concurrency"]):
                nursery.start_soon(one, i)
        round_s.append(time.monotonic() - started)
        rss_after_round.append(rss_kib(job["server_pid"]))
        if len(round_s) == 1:
            steady_at = (time.monotonic(), _cpu_self())
            out.put(("steady", {}))
        if len(round_s) >= job["rounds"] and stop.is_set():
            break
        await trio.sleep(max(0.0, job["every"] - (time.monotonic() - started)))
    return {
        "rounds": len(round_s),
        "concurrency": job["concurrency"],
        "round_s": round_s,
        "statuses": dict(statuses),
        "rss_after_round": rss_after_round,
        "cpu": (_cpu_self() - steady_at[1]) / (time.monotonic() - steady_at[0]),
    }


async def slow_readers(job: dict[str, Any], out: Any, stop: Any) -> dict[str, Any]:
    """Four devices that never read, flooded with 1 MiB frames by a fifth of their network."""
    from relay.protocol import Ack, Nack, Send, decode_server_frame, encode

    url, tokens = job["url"], job["tokens"]
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    readers = [await _raw_session(parts.hostname, parts.port, tokens[i]) for i in SLOW]
    answers: list[Counter[str]] = [Counter() for _ in SLOW]
    waiting: dict[int, tuple[int, trio.Event]] = {}
    # Steady: every slow reader's queue is full (its sender is told `overloaded`), or the server
    # has dropped it (`unreachable`).
    all_full = trio.Event()
    payload = os.urandom(job["frame_bytes"])
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        flooder = await _session(nursery, url, tokens[FLOODER], "abuse-flooder")
        await trio.sleep(0.3)  # the slow readers' sessions are registered by now

        async def read_answers() -> None:
            while True:
                frame = decode_server_frame(await flooder.get_message())
                if isinstance(frame, Ack | Nack):
                    target, event = waiting.pop(frame.id, (-1, trio.Event()))
                    if target >= 0:
                        answers[target]["ack" if isinstance(frame, Ack) else frame.reason] += 1
                        event.set()
                        if all(c["overloaded"] + c["unreachable"] for c in answers):
                            all_full.set()

        async def flood(target: int) -> None:
            seq = target
            while True:
                seq += len(SLOW)
                event = trio.Event()
                waiting[seq] = (target, event)
                frame = encode(Send(id=seq, to=f"d{SLOW[target]}", data=payload))
                await flooder.send_message(frame)
                await event.wait()

        nursery.start_soon(read_answers)
        for target in range(len(SLOW)):
            nursery.start_soon(flood, target)
        with trio.move_on_after(30):
            await all_full.wait()
        steady_s = time.monotonic() - started
        before = [Counter(c) for c in answers]
        steady_at = (time.monotonic(), _cpu_self())
        out.put(("steady", {}))
        await trio.to_thread.run_sync(stop.wait)
        elapsed = time.monotonic() - steady_at[0]
        cpu = (_cpu_self() - steady_at[1]) / elapsed
        nursery.cancel_scope.cancel()
    for stream in readers:
        with trio.move_on_after(1):
            await stream.aclose()
    total: Counter[str] = sum(answers, Counter())
    during: Counter[str] = total - sum(before, Counter())
    return {
        "steady_s": steady_s,
        "answers": dict(total),
        "frames_per_s": sum(during.values()) / elapsed,
        "acked_mib": total["ack"] * len(payload) / MIB,
        "cpu": cpu,
    }


def half_open(job: dict[str, Any], out: Any, stop: Any) -> dict[str, Any]:
    """Connections that send the start of an upgrade request and nothing more (plain sockets: the
    generator only has to hold them)."""
    held: list[socket.socket] = []
    failed = 0
    started = time.monotonic()
    for _ in range(job["count"]):
        try:
            sock = socket.create_connection((job["host"], job["port"]), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            sock.setblocking(False)
            held.append(sock)
        except OSError:
            failed += 1
    opened_s = time.monotonic() - started
    time.sleep(0.5)  # let the gateway accept the backlog
    steady_at = (time.monotonic(), _cpu_self())
    out.put(("steady", {}))
    stop.wait()
    cpu = (_cpu_self() - steady_at[1]) / (time.monotonic() - steady_at[0])
    states: Counter[str] = Counter()
    for sock in held:
        try:
            states["closed" if sock.recv(1, socket.MSG_PEEK) == b"" else "answered"] += 1
        except BlockingIOError:
            states["open"] += 1
        except OSError:
            states["reset"] += 1
        sock.close()
    return {
        "opened": len(held),
        "failed": failed,
        "opened_s": opened_s,
        "at_end": dict(states),
        "cpu": cpu,
    }


def attack_process(job: dict[str, Any], out: Any, stop: Any) -> None:
    raise_fd_limit()
    try:
        if job["kind"] == "halfopen":
            result = half_open(job, out, stop)
        elif job["kind"] == "slow":
            result = trio.run(slow_readers, job, out, stop)
        else:
            result = trio.run(http_rounds, job, out, stop)
        out.put(("done", result))
    except BaseException as exc:
        out.put(("error", repr(exc)))


# ----------------------------------------------------------------------------- one case


@dataclass
class Outcome:
    case: str
    before_kib: int = 0
    after_kib: int = 0
    peak_kib: int = 0
    settled_kib: int = 0
    alone: dict[str, Any] = field(default_factory=dict)
    attacked: dict[str, Any] = field(default_factory=dict)
    attack: dict[str, Any] = field(default_factory=dict)
    cpu_alone: tuple[float, float] = (float("nan"), float("nan"))
    cpu_attacked: tuple[float, float] = (float("nan"), float("nan"))
    error: str = ""

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.before_kib) / 1024

    @property
    def ratio(self) -> float:
        alone = float(self.alone.get("rate", float("nan")))
        return float(self.attacked.get("rate", float("nan"))) / alone if alone else float("nan")


def run_case(case: str, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(case)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        log_path = Path(tmp) / "yggdrasil.log"
        tokens = prepare_yggdrasil(data_dir, 10, per_network=5)
        extra = dict(item.split("=", 1) for item in args.env)
        server = start_server(data_dir, log_path, {**CASE_ENV[case], **extra})
        pid = server.process.pid
        monitor = Monitor(pid)
        stop = multiprocessing.Event()
        out: Any = multiprocessing.Queue()
        attacker: multiprocessing.Process | None = None
        try:
            url = server.gateway_url
            outcome.alone = measure_pair(monitor, url, tokens, args.seconds, args.window)
            outcome.cpu_alone = monitor.cpu_share(outcome.alone["start"], outcome.alone["end"])
            time.sleep(0.5)
            outcome.before_kib = rss_kib(pid)
            parts = urlsplit(url)
            job = {
                "kind": case,
                "server_pid": pid,
                "api_port": server.api_port,
                "url": url,
                "host": parts.hostname,
                "port": parts.port,
                "tokens": tokens,
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "every": args.every,
                "count": args.half_open,
                "frame_bytes": MIB,
            }
            attack_started = time.monotonic()
            attacker = multiprocessing.Process(target=attack_process, args=(job, out, stop))
            attacker.start()
            kind, detail = monitor.wait(out, 120)
            if kind != "steady":
                raise RuntimeError(f"the attack failed to start: {detail}")
            outcome.attacked = measure_pair(monitor, url, tokens, args.seconds, args.window)
            outcome.cpu_attacked = monitor.cpu_share(
                outcome.attacked["start"], outcome.attacked["end"]
            )
            outcome.after_kib = rss_kib(pid)
            stop.set()
            kind, detail = monitor.wait(out, 120)
            if kind != "done":
                raise RuntimeError(f"the attack failed: {detail}")
            outcome.attack = detail
            attacker.join(timeout=10)
            monitor.sample()
            outcome.peak_kib = monitor.peak_kib(attack_started, time.monotonic())
            time.sleep(args.settle)
            outcome.settled_kib = rss_kib(pid)
        except (RuntimeError, TimeoutError) as exc:
            outcome.error = str(exc)
        finally:
            stop.set()
            if attacker is not None and attacker.is_alive():
                attacker.join(timeout=10)
                if attacker.is_alive():
                    attacker.kill()
            stop_server(server)
            if args.keep_logs:
                target = Path(args.keep_logs)
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(log_path, target / f"yggdrasil-{case}.log")
    return outcome


# ----------------------------------------------------------------------------- report


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(outcomes: list[Outcome]) -> None:
    print()
    print(
        f"{'case':<32} | {'RSS before':>10} {'after':>6} {'peak':>6} {'settled':>7} {'growth':>6}"
        f" {'<64 MiB':>7} | {'pair alone':>10} {'attacked':>8} {'ratio':>5} {'>=0.8':>5}"
    )
    print(
        f"{'':<32} | {'MiB':>10} {'MiB':>6} {'MiB':>6} {'MiB':>7} {'MiB':>6} {'':>7} |"
        f" {'msg/s':>10} {'msg/s':>8}"
    )
    for o in outcomes:
        if o.error:
            print(f"{TITLES[o.case]:<32} | failed: {o.error}")
            continue
        print(
            f"{TITLES[o.case]:<32} | {_mib(o.before_kib):>10} {_mib(o.after_kib):>6}"
            f" {_mib(o.peak_kib):>6} "
            f"{_mib(o.settled_kib):>7} {o.growth_mib:>6.1f} "
            f"{_verdict(o.growth_mib < GOAL_GROWTH_MIB):>7} | {o.alone['rate']:>10.0f} "
            f"{o.attacked['rate']:>8.0f} {o.ratio:>5.2f} {_verdict(o.ratio >= GOAL_RATIO):>5}"
        )
    print()
    for o in outcomes:
        if o.error:
            continue
        a = o.attack
        print(f"{o.case}:")
        if o.case in ("enrol", "login"):
            answers = ", ".join(f"{k} x{v}" for k, v in sorted(a["statuses"].items()))
            times = sorted(a["round_s"])
            print(
                f"  {a['rounds']} rounds of {a['concurrency']}, each {times[len(times) // 2]:.2f} s"
                f" (median; {times[0]:.2f}-{times[-1]:.2f}); answers {answers}"
            )
            shown = [_mib(kib) for kib in a["rss_after_round"]]
            if len(shown) > 8:
                shown = [*shown[:4], "...", *shown[-3:]]
            print("  server RSS after each round (MiB): " + ", ".join(shown))
        elif o.case == "slow":
            answers = ", ".join(f"{k} x{v}" for k, v in sorted(a["answers"].items()))
            print(
                f"  steady after {a['steady_s']:.1f} s (every queue full); flooder answers"
                f" {answers}; {a['frames_per_s']:.0f} frames/s (1 MiB) while the pair ran"
            )
        else:
            states = ", ".join(f"{k} {v}" for k, v in sorted(a["at_end"].items()))
            print(
                f"  {a['opened']} opened in {a['opened_s']:.2f} s ({a['failed']} failed);"
                f" at the end: {states}"
            )
        print(
            f"  server CPU (cores; its event loop's thread): {o.cpu_alone[0]:.2f}"
            f" ({o.cpu_alone[1]:.2f}) alone, {o.cpu_attacked[0]:.2f} ({o.cpu_attacked[1]:.2f})"
            f" attacked; attacker CPU {a['cpu']:.2f}; pair p99 one-way ms:"
            f" {o.alone['p99']:.1f} alone, {o.attacked['p99']:.1f} attacked"
            + (f"; pair nacks {o.attacked['nacks']}" if o.attacked.get("nacks") else "")
            + (f"; pair error {o.attacked['error']}" if o.attacked.get("error") else "")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="pair measurement, each")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--concurrency", type=int, default=100, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds at least")
    parser.add_argument(
        "--every",
        type=float,
        default=1.0,
        help="seconds from one HTTP round's start to the next (0: back to back)",
    )
    parser.add_argument("--half-open", type=int, default=1000, help="half-open connections")
    parser.add_argument("--window", type=int, default=16, help="pair messages in flight")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before 'settled'")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="YGG_SECTION_KEY=VALUE",
        help="a further server setting for every case (repeatable), e.g. YGG_AUTH_HASH_WORKERS=1",
    )
    parser.add_argument("--keep-logs", help="copy the servers' logs into this directory")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")

    raise_fd_limit()
    print(
        f"abuse: a fresh `yggdrasil serve` per case on 127.0.0.1; healthy pair d0 -> d1, 64 B,"
        f" window {args.window}, {args.seconds:g} s per measurement; {os.cpu_count()} cores"
    )
    print(
        "  HTTP cases: per-client rate limits raised to 10^6/s (an attacker with as many"
        " addresses as requests); halfopen: gateway.handshake_timeout_s 60 (default 10)"
    )
    outcomes = []
    for case in cases:
        outcome = run_case(case, args)
        outcomes.append(outcome)
        status = outcome.error or (
            f"growth {outcome.growth_mib:.1f} MiB, ratio {outcome.ratio:.2f}"
        )
        print(f"  {case}: {status}", flush=True)
    print_table(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
