"""The operator listener's application: ``/metrics`` (Prometheus text), for operators only.

It runs on a listener of its own (``[operator]``, loopback by default), never on the public API:
the metrics describe the whole instance, every tenant's traffic together.
"""

from __future__ import annotations

import hmac

from quart import Response, request
from quart_trio import QuartTrio

from yggdrasil import Metrics

from . import _errors

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def create_operator_app(metrics: Metrics, *, token: str = "") -> QuartTrio:
    """``GET /metrics`` over ``metrics``; with ``token``, only for ``Authorization: Bearer
    <token>`` (401 otherwise). Everything else is 404, in the API's one error shape."""
    app = QuartTrio("yggdrasil-operator", static_folder=None)
    app.config.update(PROPAGATE_EXCEPTIONS=False, MAX_CONTENT_LENGTH=1024)
    _errors.install(app)
    expected = f"Bearer {token}".encode()

    @app.after_request
    async def _headers(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/metrics")
    async def scrape() -> Response:
        """Prometheus text exposition: process, HTTP, actors, supervisors, gateway, TURN."""
        if token:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _errors.error_response(
                    401,
                    "unauthorized",
                    "the metrics need the operator token",
                    {"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        await metrics.refresh()
        return Response(metrics.render(), content_type=METRICS_CONTENT_TYPE)

    return app
