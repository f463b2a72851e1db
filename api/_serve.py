"""Running the application on hypercorn's trio worker, and the API of one server instance."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart_trio import QuartTrio

from yggdrasil import VERSION, Config, DomainHandle, Metrics, Principal, TokenService

from ._app import ApiContext, create_app

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


class ApiServer:
    """The HTTP API of one instance, run as the ``api`` child of its tree: each run of
    :meth:`serve` builds a fresh app over ``context`` and serves it."""

    def __init__(self, context: ApiContext, *, host: str, port: int, grace_s: float) -> None:
        self.context = context
        self.host = host
        self.port = port
        self.grace_s = grace_s
        self.url = ""
        """Where the latest run listens (empty before the first)."""

    async def serve(
        self, *, stopping: trio.Event, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """As :func:`serve_api`: until ``stopping`` is set, then in-flight requests finish."""
        app = create_app(self.context)
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(
                functools.partial(
                    serve_api,
                    app,
                    host=self.host,
                    port=self.port,
                    grace_s=self.grace_s,
                    stopping=stopping,
                )
            )
            self.url = url
            task_status.started(url)


def api_server(
    config: Config,
    *,
    metrics: Metrics,
    domain: DomainHandle,
    tokens: TokenService,
    revoke: Callable[[str, int], None],
    bus_ready: Callable[[], bool],
    ice: Callable[[str, str, str], dict[str, Any]],
    webrtc: Callable[[Principal, str], Awaitable[str]],
) -> ApiServer:
    """The API of a server configured by ``config``; the other arguments as in
    :class:`ApiContext`."""
    context = ApiContext(
        metrics=metrics,
        domain=domain,
        version=VERSION,
        tokens=tokens,
        revoke=revoke,
        bus_ready=bus_ready,
        ice=ice,
        webrtc=webrtc,
        limits=config.limits,
        trusted_proxies=config.api.trusted_proxies,
        max_body_bytes=config.api.max_body_bytes,
        body_timeout_s=config.api.body_timeout_s,
        response_timeout_s=config.api.response_timeout_s,
    )
    return ApiServer(
        context, host=config.server.host, port=config.api.port, grace_s=config.server.grace_s
    )
