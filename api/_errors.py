"""One JSON error shape for every error: ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
from quart import Quart, Response, request
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from yggdrasil import Forbidden, InvalidToken, YggdrasilError

log = logging.getLogger(__name__)


class InsufficientScope(Forbidden):
    """The token is valid, but this kind of principal may not call this route (RFC 6750 3.1)."""

    code = "insufficient_scope"
    default_message = "this token may not call this route"


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_encoder = msgspec.json.Encoder()

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = _encoder.encode(ErrorBody(ErrorDetail(code, message)))
    response = Response(body, status=status, content_type="application/json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def install(app: Quart, observe: Callable[[YggdrasilError], None] | None = None) -> None:
    """The error handlers; ``observe`` sees every domain error before it is answered (the
    probing watch and the auth-failure count), and must not raise."""

    @app.errorhandler(YggdrasilError)
    async def domain_error(error: YggdrasilError) -> Response:
        if observe is not None:
            observe(error)
        headers: dict[str, str] = {}
        retry_after_s = getattr(error, "retry_after_s", None)
        if isinstance(retry_after_s, int):  # rate limits (429), a full hashing pool (503)
            headers["Retry-After"] = str(retry_after_s)
        if isinstance(error, InvalidToken):
            # RFC 6750, section 3
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        elif isinstance(error, InsufficientScope):
            headers["WWW-Authenticate"] = 'Bearer error="insufficient_scope"'
        return error_response(error.status, error.code, error.message, headers)

    @app.errorhandler(UnicodeDecodeError)
    async def not_utf8(error: UnicodeDecodeError) -> Response:
        return error_response(400, "bad_request", "the request body is not valid UTF-8 JSON")

    @app.errorhandler(RequestSchemaValidationError)
    async def validation_error(error: RequestSchemaValidationError) -> Response:
        return error_response(422, "validation_error", str(error.validation_error))

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = error.description or code.replace("_", " ")
        if status == 404:
            message = "not found"
        headers: dict[str, str] = {}
        if status == 413:
            # The unread body is still on the wire: this connection cannot carry another request.
            headers["Connection"] = "close"
        if status == 405 and error.valid_methods is not None:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return error_response(status, code, message, headers)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.error(
            "unhandled error on %s %s: %r", request.method, request.path, error, exc_info=error
        )
        return error_response(500, "internal", "internal error")
