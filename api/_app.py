"""The quart-trio application: routes, validation, OpenAPI and metrics hooks."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from quart import Response, g, request
from quart_schema import Info, QuartSchema, document_response, tag, validate_response
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

from yggdrasil import (
    DomainHandle,
    LimitsConfig,
    Metrics,
    NotFound,
    Principal,
    ProbeWatch,
    RateLimiter,
    StoreUnavailable,
    TokenService,
    Unavailable,
    YggdrasilError,
)
from yggdrasil.ddns import Ddns
from yggdrasil.locks import Locks
from yggdrasil.marketplace import Marketplace

from . import (
    _admin,
    _billing,
    _ddns,
    _errors,
    _locks,
    _marketplace,
    _pages,
    _payments,
    _payouts,
    _resources,
    _subscriptions,
    _users,
)
from ._app_models import Health, Ready
from ._auth import SECURITY_SCHEMES, Guard
from ._errors import ErrorBody
from ._json import BoundedJSONProvider
from ._openapi import CompleteOpenAPIProvider
from ._scopes import check_routes


@dataclass
class ApiContext:
    """What the API reads from the running server. ``domain`` hands out the current domain
    services, and raises ``StoreUnavailable`` while the store is (re)starting."""

    metrics: Metrics
    domain: DomainHandle
    version: str
    tokens: TokenService | None = None
    """Verifies and revokes tokens; without it every token is refused (tests of the app)."""
    revoke: Callable[[str, int], None] | None = None
    """``revoke(subject, not_before_ms)``: a revocation the API just committed, applied here at
    once and carried to every instance; by default only to this process's token check."""
    bus_ready: Callable[[], bool] = lambda: True
    """Whether the bus to the other instances is up (readiness)."""
    ice: Callable[[str, str, str], dict[str, Any]] | None = None
    """``ice(user_id, network_id, device_id)``: STUN/TURN URLs with fresh credentials for that
    device of that account."""
    webrtc: Callable[[Principal, str], Awaitable[str]] | None = None
    """``webrtc(device, offer_sdp)``: the answer SDP; the device's session then runs on it."""
    locks: Locks | None = None
    """The networks' lock managers; without them the lock routes answer 503."""
    marketplace: Marketplace | None = None
    """The compute marketplace; without it its routes answer 503."""
    ddns: Ddns | None = None
    """Devices' DNS names; without it the DDNS routes answer 503."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    trusted_proxies: list[str] = field(default_factory=list)
    max_body_bytes: int = 1_048_576
    body_timeout_s: float = 30.0
    response_timeout_s: float = 30.0
    ready_timeout_s: float = 2.0
    probes: ProbeWatch | None = None
    """The watch for cross-network probing: counts the 404s a principal gets and refuses a
    blocked one (429 ``blocked``); without it nothing is counted."""


def create_app(ctx: ApiContext) -> QuartTrio:
    app = QuartTrio("yggdrasil", static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=ctx.max_body_bytes,
        BODY_TIMEOUT=ctx.body_timeout_s,
        RESPONSE_TIMEOUT=ctx.response_timeout_s,
        PROPAGATE_EXCEPTIONS=False,
        JSON_SORT_KEYS=False,
    )
    QuartSchema(
        app,
        info=Info(title="Yggdrasil", version=ctx.version),
        openapi_path="/openapi.json",
        swagger_ui_path=None,  # api/_pages.py serves /docs, with no file from elsewhere
        redoc_ui_path=None,
        scalar_ui_path=None,
        conversion_preference="msgspec",
        security_schemes=SECURITY_SCHEMES,
        openapi_provider_class=CompleteOpenAPIProvider,
    )
    app.json = BoundedJSONProvider(app, app.json)  # after QuartSchema, which sets its own
    probes = ctx.probes

    def observe(error: YggdrasilError) -> None:
        if error.status == 401:
            ctx.metrics.auth_failure(error.code)
        elif probes is not None and isinstance(error, NotFound):
            caller: Principal | None = g.get("caller")
            if caller is not None:
                probes.refused_by(caller)

    _errors.install(app, observe)
    limits = ctx.limits
    guard = Guard(
        ctx.tokens,
        ctx.domain,
        per_client=RateLimiter(
            limits.per_client_rate, limits.per_client_burst, max_keys=limits.tracked_keys
        ),
        per_principal=RateLimiter(
            limits.per_principal_rate, limits.per_principal_burst, max_keys=limits.tracked_keys
        ),
        auth_per_client=RateLimiter(
            limits.auth_per_client_rate, limits.auth_per_client_burst, max_keys=limits.tracked_keys
        ),
        trusted_proxies=ctx.trusted_proxies,
        revoke=ctx.revoke,
    )
    _users.install(app, guard)
    _resources.install(app, guard, ctx.ice, ctx.webrtc)
    _admin.install(app, guard)
    _billing.install(app, guard)
    _payments.install(app, guard)
    _subscriptions.install(app, guard)
    _payouts.install(app, guard)
    _locks.install(app, guard, ctx.locks, response_timeout_s=ctx.response_timeout_s)
    _marketplace.install(app, guard, ctx.marketplace)
    _ddns.install(app, guard, ctx.ddns)
    _pages.install(app, "Yggdrasil", ctx.version)

    @app.before_request
    async def _start_timer() -> None:
        g.started = time.perf_counter()
        # Refuse a declared oversize body before any handler runs; a chunked body is cut off by
        # MAX_CONTENT_LENGTH when it is read.
        length = request.content_length
        if length is not None and length > ctx.max_body_bytes:
            raise RequestEntityTooLarge(
                f"the request body is limited to {ctx.max_body_bytes} bytes"
            )
        # Read the (bounded) body before anything can answer early: an error sent while the body
        # is still unread would leave it on a keep-alive connection, and the client's next
        # request there would wait behind it.
        if length or "Transfer-Encoding" in request.headers:
            await request.get_data(cache=True)
        if request.path.startswith("/api/"):
            guard.per_client.check(guard.client())
        rule = request.url_rule
        if rule is not None:  # unmatched paths and methods answer 404 and 405 next
            g.principal = guard.authorize(
                request.method, rule.rule, request.view_args or {}, request.args.get("network_id")
            )
            if probes is not None and g.principal is not None:
                probes.check_principal(g.principal)

    @app.after_request
    async def _count(response: Response) -> Response:
        started = getattr(g, "started", None)
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = None if started is None else time.perf_counter() - started
        ctx.metrics.observe_http(rule, request.method, response.status_code, elapsed)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/healthz")
    @tag(["operations"])
    @validate_response(Health)
    async def healthz() -> Health:
        """Liveness: the process runs and answers."""
        return Health("ok")

    @app.get("/readyz")
    @tag(["operations"])
    @validate_response(Ready)
    @document_response(ErrorBody, 503)
    async def readyz() -> Ready:
        """Readiness: the data store answers and the bus is up. 503 while not."""
        domain = ctx.domain.get()
        if not ctx.bus_ready():
            raise Unavailable("the bus to the other instances is down")
        with trio.move_on_after(ctx.ready_timeout_s):
            await domain.store.db.ping()
            return Ready("ready", domain.store.db.dialect)
        raise StoreUnavailable("the data store did not answer in time")

    check_routes((rule.rule, rule.methods or ()) for rule in app.url_map.iter_rules())
    return app
