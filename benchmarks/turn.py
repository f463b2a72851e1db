"""TURN relaying: Yggdrasil against coturn under the same turnutils_uclient load, in one run.

Run:  .venv/bin/python -m benchmarks.turn [--allocs 10,50,200] [--sizes 120,1000]
                                          [--transports udp,tcp] [--msgs 1000] [--reps 1]
                                          [--interval-ms 20] [--probe-allocations 2000]

Needs Debian's ``coturn`` package (turnserver, turnutils_uclient, turnutils_peer) and the
workplace's driver scripts in ``../shared/tools/turn-bench/`` (or ``TURN_BENCH_DIR``): this script
starts coturn (``coturn_ctl.sh``, loopback only, one static user) and ``yggdrasil serve`` with the
same user, realm and loopback peer allowance, runs ``bench_turn.sh`` against each with the server's
pid (so it samples the server's CPU and memory), restarting both servers between transports, and
prints every cell of Yggdrasil as a ratio to coturn: relayed packets per second, loss, round trip
(uclient's 1 ms clock), server CPU per relayed packet and resident memory. It then measures
allocations per second and memory per allocation with ``turn_probe.py alloc`` (three runs on
each server, medians), and ends with the goals of issue 17: CPU per relayed packet as a ratio
to coturn's, loss and round trip per transport, and allocations per second as a ratio.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._harness import free_port, yggdrasil_command

USER, PASSWORD, REALM = "bench", "benchpass", "bench.local"


def tools() -> Path:
    found = Path(
        os.environ.get(
            "TURN_BENCH_DIR", Path(__file__).resolve().parents[2] / "shared/tools/turn-bench"
        )
    )
    if not (found / "bench_turn.sh").exists():
        raise SystemExit(f"no bench_turn.sh in {found}; set TURN_BENCH_DIR")
    return found


class Coturn:
    def __init__(self, port: int, state: Path) -> None:
        self.port, self.state = port, state

    def __enter__(self) -> int:
        env = {**os.environ, "STATE_DIR": str(self.state), "MIN_PORT": "40000", "MAX_PORT": "44999"}
        subprocess.run(
            [
                "bash",
                str(tools() / "coturn_ctl.sh"),
                "start",
                str(self.port),
                USER,
                PASSWORD,
                REALM,
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        return int((self.state / "coturn.pid").read_text())

    def __exit__(self, *exc: object) -> None:
        env = {**os.environ, "STATE_DIR": str(self.state)}
        subprocess.run(
            ["bash", str(tools() / "coturn_ctl.sh"), "stop"],
            env=env,
            stdout=subprocess.DEVNULL,
            check=False,
        )


class Yggdrasil:
    def __init__(self, port: int, data_dir: Path) -> None:
        self.port, self.data_dir = port, data_dir
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> int:
        command = yggdrasil_command()
        log_path = self.data_dir.with_suffix(".log")
        log_file = open(log_path, "wb")
        self.process = subprocess.Popen(
            [
                *command,
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--api-port",
                "0",
                "--gateway-port",
                "0",
                "--turn-port",
                str(self.port),
                "--log-format",
                "json",
                "--turn-static-user",
                f"{USER}:{PASSWORD}",
                "--turn-allow-peer",
                "127.0.0.0/8",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "YGG_TURN_REALM": REALM,
                "YGG_TURN_RELAY_PORT_MIN": "45000",
                "YGG_TURN_RELAY_PORT_MAX": "49999",
                "YGG_TURN_MAX_ALLOCATIONS_PER_USER": "100000",
                "YGG_TURN_MAX_ALLOCATIONS_PER_DEVICE": "100000",
                "YGG_TURN_MAX_ALLOCATIONS_PER_STATIC_USER": "100000",
                "YGG_TURN_UNAUTHENTICATED_ANSWERS_PER_S": "100000",
            },
        )
        for _ in range(400):
            if '"listener":"turn"' in log_path.read_text():
                return self.process.pid
            time.sleep(0.05)
        raise RuntimeError(log_path.read_text())

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=30)


def bench(port: int, pid: int, transport: str, args: argparse.Namespace) -> list[dict[str, str]]:
    env = {
        **os.environ,
        "TRANSPORTS": transport,
        "ALLOCS": " ".join(args.allocs.split(",")),
        "SIZES": " ".join(args.sizes.split(",")),
        "MSGS": str(args.msgs),
        "INTERVAL_MS": str(args.interval_ms),
        "REPS": str(args.reps),
        "SERVER_PID": str(pid),
        "PEER_PORT": str(free_port()),
    }
    result = subprocess.run(
        ["bash", str(tools() / "bench_turn.sh"), "127.0.0.1", str(port), USER, PASSWORD, REALM],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
    table = lines[
        : next(
            (i for i, line in enumerate(lines) if line.startswith("transport") and i), len(lines)
        )
    ]
    rows = [
        row
        for row in csv.DictReader(io.StringIO("\n".join(table)), delimiter="\t")
        if row.get("allocs")
    ]
    return [row for row in rows if row["transport"] == transport]


def probe(port: int, pid: int, count: int, reps: int = 3) -> dict[str, str]:
    """``turn_probe.py alloc`` ``reps`` times on one server (each deletes what it made); the
    median of each figure (allocations per second is the most sensitive to a shared machine)."""
    runs = [probe_once(port, pid, count) for _ in range(reps)]
    values = {}
    for key in runs[0]:
        try:
            numbers = sorted(float(run[key]) for run in runs if key in run)
        except ValueError:
            values[key] = runs[0][key]
            continue
        values[key] = f"{numbers[len(numbers) // 2]:g}"
    values["alloc.runs"] = "/".join(run.get("alloc.allocs_per_s", "?") for run in runs)
    return values


def probe_once(port: int, pid: int, count: int) -> dict[str, str]:
    result = subprocess.run(
        [
            sys.executable,
            str(tools() / "turn_probe.py"),
            "alloc",
            "127.0.0.1",
            str(port),
            USER,
            PASSWORD,
            REALM,
            "-n",
            str(count),
            "--server-pid",
            str(pid),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    values = {}
    for line in result.stdout.splitlines():
        name, *pairs = line.split()
        for pair in pairs:
            key, _, value = pair.partition("=")
            values[f"{name}.{key}"] = value
    return values


def ratio(ours: str, theirs: str) -> str:
    try:
        return f"{float(ours) / float(theirs):.2f}"
    except (ValueError, ZeroDivisionError):
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--allocs", default="10,50,200")
    parser.add_argument("--sizes", default="120,1000")
    parser.add_argument("--transports", default="udp,tcp")
    parser.add_argument("--msgs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--interval-ms", type=int, default=20, help="per allocation (20: 50 pkt/s)")
    parser.add_argument("--probe-allocations", type=int, default=2000)
    parser.add_argument("--json", help="also write every row here")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, str]]] = {"coturn": [], "yggdrasil": []}
    probes: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for transport in args.transports.split(","):
            # Fresh servers for each transport: uclient leaves orphan UDP allocations behind.
            # Each port is picked just before its server starts: the load generator's own TCP
            # connections take ephemeral ports, one of which a port picked earlier may become.
            port_c = free_port()
            with Coturn(port_c, Path(tmp) / f"coturn-{transport}") as pid_c:
                results["coturn"] += bench(port_c, pid_c, transport, args)
            port_y = free_port()
            with Yggdrasil(port_y, Path(tmp) / f"ygg-{transport}") as pid_y:
                results["yggdrasil"] += bench(port_y, pid_y, transport, args)
        port_c = free_port()
        with Coturn(port_c, Path(tmp) / "coturn-probe") as pid_c:
            probes["coturn"] = probe(port_c, pid_c, args.probe_allocations)
        port_y = free_port()
        with Yggdrasil(port_y, Path(tmp) / "ygg-probe") as pid_y:
            probes["yggdrasil"] = probe(port_y, pid_y, args.probe_allocations)
    print("TURN relaying, turnutils_uclient load; Yggdrasil as a ratio to coturn in the same run")
    header = (
        "transport",
        "allocs",
        "size",
        "coturn pkt/s",
        "ygg pkt/s",
        "ratio",
        "loss c/y %",
        "rtt c/y ms",
        "cpu us/pkt c/y",
        "ratio",
        "rss KiB c/y",
    )
    print("\t".join(header))
    for c, y in zip(results["coturn"], results["yggdrasil"], strict=False):
        print(
            "\t".join(
                [
                    c["transport"],
                    c["allocs"],
                    c["size"],
                    c["relayed_pps"],
                    y["relayed_pps"],
                    ratio(y["relayed_pps"], c["relayed_pps"]),
                    f"{c['loss_pct']}/{y['loss_pct']}",
                    f"{c['rtt_ms']}/{y['rtt_ms']}",
                    f"{c['srv_us_per_pkt']}/{y['srv_us_per_pkt']}",
                    ratio(y["srv_us_per_pkt"], c["srv_us_per_pkt"]),
                    f"{c['srv_rss_kb']}/{y['srv_rss_kb']}",
                ]
            )
        )
    print("allocations (turn_probe.py alloc, median of 3 runs of each server):")
    keys = (
        "alloc.allocs_per_s",
        "alloc.setup_p50_ms",
        "alloc.srv_cpu_ms_per_alloc",
        "alloc.kb_per_alloc",
        "alloc.fail",
        "alloc.runs",
    )
    for key in keys:
        theirs, ours = probes["coturn"].get(key, "n/a"), probes["yggdrasil"].get(key, "n/a")
        print(f"  {key}: coturn {theirs}, yggdrasil {ours}, ratio {ratio(ours, theirs)}")
    print("goals of issue 17 (rtt: uclient's mean over the run, its 1 ms clock):")
    for c, y in zip(results["coturn"], results["yggdrasil"], strict=False):
        cpu = ratio(y["srv_us_per_pkt"], c["srv_us_per_pkt"])
        goal = "2" if c["transport"] == "udp" else "2.5"
        print(
            f"  {c['transport']} {c['allocs']} x {1000 // args.interval_ms} pkt/s {c['size']} B:"
            f" CPU/packet {c['srv_us_per_pkt']}/{y['srv_us_per_pkt']} us = {cpu}x"
            f" (goal <= {goal}x),"
            f" loss {c['loss_pct']}/{y['loss_pct']} % (goal 0), rtt {c['rtt_ms']}/{y['rtt_ms']} ms"
            + (" (goal < 5 ms)" if c["transport"] == "tcp" else "")
        )
    rate = ratio(
        probes["yggdrasil"].get("alloc.allocs_per_s", ""),
        probes["coturn"].get("alloc.allocs_per_s", ""),
    )
    print(f"  allocations/s: {rate}x (goal >= 0.8x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"relay": results, "probe": probes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
