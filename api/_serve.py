"""Running the application on hypercorn's trio worker, and the API of one server instance."""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart_trio import QuartTrio

from yggdrasil import VERSION, Config, DomainHandle, Metrics, Principal, ProbeWatch, TokenService
from yggdrasil.ddns import Ddns
from yggdrasil.locks import Locks
from yggdrasil.marketplace import Marketplace

from ._app import ApiContext, create_app
from ._auth import Networks, client_address
from ._operator import create_operator_app

if TYPE_CHECKING:
    from hypercorn.typing import (
        ASGIFramework,
        ASGIReceiveCallable,
        ASGISendCallable,
        ASGISendEvent,
        HTTPScope,
        Scope,
    )

log = logging.getLogger(__name__)
access_log = logging.getLogger("api.access")
"""One record per HTTP request: ``method``, ``path``, ``status``, ``duration_ms``, ``client``
(and ``proxy`` behind a trusted proxy). Never the query string, headers or bodies: tokens,
codes and keys travel there."""

_MAX_LOGGED_PATH = 512


def _logged_path(scope: HTTPScope) -> str:
    """The path as the client sent it (still percent-encoded, so a ``%0A`` cannot forge a log
    line), without the query string, cut to a bounded length."""
    raw = scope.get("raw_path") or scope["path"].encode()
    path = raw.partition(b"?")[0].decode("ascii", "backslashreplace")
    path = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in path)
    return path if len(path) <= _MAX_LOGGED_PATH else path[:_MAX_LOGGED_PATH] + "..."


def _log_access(scope: HTTPScope, status: int | None, seconds: float, proxies: Networks) -> None:
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    forwarded = ", ".join(
        value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"
    )
    address = client_address(peer, forwarded, proxies)
    method = scope["method"]
    path = _logged_path(scope)
    duration_ms = round(seconds * 1000, 1)
    extra: dict[str, Any] = {
        "method": method,
        "path": path,
        "duration_ms": duration_ms,
        "client": address,
    }
    if address != peer:
        extra["proxy"] = peer
    if status is None:  # the client went away first, or the app failed (hypercorn sends 500)
        access_log.info(
            '%s "%s %s" no answer %.1f ms', address, method, path, duration_ms, extra=extra
        )
        return
    extra["status"] = status
    access_log.info(
        '%s "%s %s" %d %.1f ms', address, method, path, status, duration_ms, extra=extra
    )


def with_access_log(app: ASGIFramework, proxies: Networks) -> ASGIFramework:
    """``app`` with one :data:`access_log` record per HTTP request, written when the app has
    answered (or given up: cancelled, failed, the client gone); ``proxies``: the trusted
    proxies whose ``X-Forwarded-For`` names the client."""

    async def logged(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def send_and_see(message: ASGISendEvent) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_and_see)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, status, time.perf_counter() - started, proxies)

    return logged


async def serve_api(
    app: QuartTrio | ASGIFramework,
    *,
    host: str,
    port: int,
    grace_s: float,
    stopping: trio.Event,
    listener: str = "api",
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``stopping`` is set, then finish in-flight requests within ``grace_s``.

    Reports the real base URL (port 0 picks a free port) through ``task_status``, and logs it
    as ``<listener> listening on <url>``.
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
        log.info("%s listening on %s", listener, url, extra={"listener": listener, "url": url})
        task_status.started(url)


class ApiServer:
    """The HTTP API of one instance, run as the ``api`` child of its tree: each run of
    :meth:`serve` builds a fresh app over ``context`` and serves it."""

    def __init__(
        self,
        context: ApiContext,
        *,
        host: str,
        port: int,
        grace_s: float,
        access_log: bool = False,
    ) -> None:
        """``access_log``: log every request (:data:`access_log`)."""
        self.context = context
        self.host = host
        self.port = port
        self.grace_s = grace_s
        self.access_log = access_log
        self.url = ""
        """Where the latest run listens (empty before the first)."""

    async def serve(
        self, *, stopping: trio.Event, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """As :func:`serve_api`: until ``stopping`` is set, then in-flight requests finish."""
        app: QuartTrio | ASGIFramework = create_app(self.context)
        if self.access_log:
            proxies: Networks = [
                ipaddress.ip_network(p, strict=False) for p in self.context.trusted_proxies
            ]
            app = with_access_log(app, proxies)
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


class OperatorServer:
    """The operator listener of one instance (``/metrics``), the ``operator`` child of its
    tree; apart from the public API so that only operators reach it."""

    def __init__(
        self, metrics: Metrics, *, host: str, port: int, token: str, grace_s: float
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.token = token
        self.grace_s = grace_s
        self.url = ""
        """Where the latest run listens (empty before the first)."""

    async def serve(
        self, *, stopping: trio.Event, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """As :func:`serve_api`, logged as the ``operator`` listener; scrapes are not logged."""
        app = create_operator_app(self.metrics, token=self.token)
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(
                functools.partial(
                    serve_api,
                    app,
                    host=self.host,
                    port=self.port,
                    grace_s=self.grace_s,
                    stopping=stopping,
                    listener="operator",
                )
            )
            self.url = url
            task_status.started(url)


def operator_server(config: Config, metrics: Metrics) -> OperatorServer | None:
    """The operator listener of a server configured by ``config``; ``None`` when disabled."""
    if not config.operator.enabled:
        return None
    return OperatorServer(
        metrics,
        host=config.operator.host,
        port=config.operator.port,
        token=config.operator.token,
        grace_s=config.server.grace_s,
    )


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
    locks: Locks | None = None,
    marketplace: Marketplace | None = None,
    probes: ProbeWatch | None = None,
    ddns: Ddns | None = None,
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
        locks=locks,
        marketplace=marketplace,
        probes=probes,
        ddns=ddns,
        limits=config.limits,
        trusted_proxies=config.api.trusted_proxies,
        max_body_bytes=config.api.max_body_bytes,
        body_timeout_s=config.api.body_timeout_s,
        response_timeout_s=config.api.response_timeout_s,
    )
    return ApiServer(
        context,
        host=config.server.host,
        port=config.api.port,
        grace_s=config.server.grace_s,
        access_log=config.log.access,
    )
