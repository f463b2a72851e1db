"""Running the application on hypercorn's trio worker."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart_trio import QuartTrio

log = logging.getLogger(__name__)


async def serve_api(
    app: QuartTrio,
    *,
    host: str,
    port: int,
    grace_s: float,
    stopping: trio.Event,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``stopping`` is set, then finish in-flight requests within ``grace_s``.

    Reports the real base URL (port 0 picks a free port) through ``task_status``.
    """
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # hypercorn's trio worker waits out the whole graceful period while any client holds an idle
    # keep-alive connection (reproduced with a bare quart-trio app). In-flight API requests are
    # short, so hypercorn's own default of 3 s bounds the stop.
    config.graceful_timeout = min(grace_s, 3.0)
    config.include_server_header = False

    async def _run(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, config, shutdown_trigger=stopping.wait, task_status=task_status)

    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(_run)
        url = urls[0]
        log.info("api listening on %s", url, extra={"listener": "api", "url": url})
        task_status.started(url)
