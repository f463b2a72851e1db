"""Starting whole servers for tests: in-process (trio) and as a ``yggdrasil serve`` subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks._harness import serve_command
from yggdrasil import load_config
from yggdrasil.server import Running, serve


@asynccontextmanager
async def running_server(data_dir: Path, **sections: Mapping[str, Any]) -> AsyncIterator[Running]:
    """One instance on port 0 in this trio run; stopped gracefully on exit."""
    overrides: dict[str, dict[str, Any]] = {"server": {"data_dir": str(data_dir)}}
    overrides.setdefault("api", {})["port"] = 0
    overrides.setdefault("gateway", {})["port"] = 0
    overrides.setdefault("turn", {})["port"] = 0
    overrides.setdefault("operator", {})["port"] = 0
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    config = load_config(overrides=overrides)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            lambda task_status: serve(config, stop=stop, task_status=task_status)
        )
        try:
            yield running
        finally:
            stop.set()


async def scrape(running: Running) -> str:
    """The instance's ``/metrics``, from its operator listener."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{running.operator_url}/metrics")
    response.raise_for_status()
    return response.text


class ServerProcess:
    def __init__(
        self, process: subprocess.Popen[str], log_path: Path, urls: dict[str, str]
    ) -> None:
        self.process = process
        self.log_path = log_path
        self.urls = urls
        """Each listener's URL, from the server's "listening" log lines (``api``, ``gateway``)."""
        self.api_url = urls["api"]

    @property
    def gateway_url(self) -> str:
        return self.urls["gateway"]

    @property
    def operator_url(self) -> str:
        """The operator listener (``/metrics``)."""
        return self.urls["operator"]

    def metrics(self) -> str:
        """``/metrics``, from the operator listener."""
        response = httpx.get(f"{self.operator_url}/metrics", timeout=10)
        response.raise_for_status()
        return response.text

    def log(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"msg": line})
        return entries

    def terminate(self, timeout_s: float = 15.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


@contextmanager
def server_process(
    data_dir: Path, *extra: str, env: Mapping[str, str] | None = None, start_timeout_s: float = 30
) -> Iterator[ServerProcess]:
    """``yggdrasil serve --api-port 0`` as a subprocess (its operator listener on port 0 too,
    unless ``env`` says otherwise); waits for its API and gateway to listen."""
    log_path = data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.log"
    command = serve_command(data_dir, *extra)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("YGG_")}
    environment["YGG_OPERATOR_PORT"] = "0"
    environment.update(env or {})
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=environment
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        urls: dict[str, str] = {}
        while not {"api", "gateway"} <= urls.keys():
            if process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {process.returncode}: {log_path.read_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log_path.read_text()}")
            for line in log_path.read_text().splitlines():
                if '"listener":' in line:
                    entry = json.loads(line)
                    urls[entry["listener"]] = entry["url"]
            time.sleep(0.05)
        yield ServerProcess(process, log_path, urls)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
