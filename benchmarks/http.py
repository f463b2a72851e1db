"""HTTP API throughput and latency, as a ratio to a hello-world on the same hypercorn.

Run:  .venv/bin/python -m benchmarks.http [--seconds 10] [--connections 32]

Starts, each in its own process: a bare quart-trio "hello world" on hypercorn (the baseline), and
``yggdrasil serve`` on a fresh data directory. A load generator in a third process (keep-alive
HTTP/1.1 over raw sockets, so the client is not the bottleneck) drives each target in turn and
reports requests per second and latency percentiles; every Yggdrasil figure is also printed as a
ratio to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from benchmarks._harness import yggdrasil_command


def hello_world(port_queue: multiprocessing.Queue[int]) -> None:
    """The baseline: the smallest quart-trio app on the same hypercorn worker."""
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart_trio import QuartTrio

    app = QuartTrio("hello")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def main() -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                lambda task_status: serve(app, config, task_status=task_status)
            )
            port_queue.put(int(binds[0].rsplit(":", 1)[1]))

    trio.run(main)


async def _connection(port: int, path: str, stop_at: float, latencies: list[float]) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = b""
    async with stream:
        while trio.current_time() < stop_at:
            started = time.perf_counter()
            await stream.send_all(request)
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buffer[:head_end].lower()
                    length_at = head.find(b"content-length:")
                    length = (
                        int(head[length_at + 15 :].split(b"\r\n", 1)[0]) if length_at >= 0 else 0
                    )
                    if len(buffer) >= head_end + 4 + length:
                        buffer = buffer[head_end + 4 + length :]
                        break
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                buffer += chunk
            latencies.append(time.perf_counter() - started)


def load(
    port: int, path: str, seconds: float, connections: int, out: multiprocessing.Queue[list[float]]
) -> None:
    async def main() -> None:
        latencies: list[float] = []
        stop_at = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(_connection, port, path, stop_at, latencies)
        out.put(latencies)

    trio.run(main)


def measure(port: int, path: str, seconds: float, connections: int) -> dict[str, float]:
    queue: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
    warm = multiprocessing.Process(target=load, args=(port, path, 1.0, connections, queue))
    warm.start()
    queue.get()
    warm.join()
    worker = multiprocessing.Process(target=load, args=(port, path, seconds, connections, queue))
    worker.start()
    latencies = sorted(queue.get())
    worker.join()
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "mean_ms": 1000 * statistics.fmean(latencies),
    }


def start_yggdrasil(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    command = yggdrasil_command()
    log_path = data_dir.with_suffix(".log")
    log_file = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(
        [
            *command,
            "serve",
            "--data-dir",
            str(data_dir),
            "--api-port",
            "0",
            "--log-format",
            "json",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    for _ in range(300):
        for line in log_path.read_text().splitlines():
            if '"listener":"api"' in line:
                return process, int(json.loads(line)["url"].rsplit(":", 1)[1])
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(log_path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)

    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    baseline_server = multiprocessing.Process(target=hello_world, args=(ports,), daemon=True)
    baseline_server.start()
    baseline_port = ports.get(timeout=30)
    with tempfile.TemporaryDirectory() as tmp:
        ygg, ygg_port = start_yggdrasil(Path(tmp) / "data")
        try:
            baseline = measure(baseline_port, "/healthz", args.seconds, args.connections)
            results = {
                "/healthz": measure(ygg_port, "/healthz", args.seconds, args.connections),
                "/readyz": measure(ygg_port, "/readyz", args.seconds, args.connections),
            }
        finally:
            ygg.terminate()
            ygg.wait(timeout=20)
            baseline_server.kill()
    print(f"HTTP API, {args.connections} keep-alive connections, {args.seconds:g} s per target")
    row = "{:<28}{:>10.0f}{:>8.2f}{:>9.2f}{:>9.2f}"
    print("{:<28}{:>10}{:>8}{:>9}{:>9}".format("target", "req/s", "ratio", "p50 ms", "p99 ms"))
    print(
        row.format(
            "baseline hello-world", baseline["rps"], 1.0, baseline["p50_ms"], baseline["p99_ms"]
        )
    )
    for path, result in results.items():
        ratio = result["rps"] / baseline["rps"]
        print(
            row.format(
                f"yggdrasil {path}", result["rps"], ratio, result["p50_ms"], result["p99_ms"]
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
