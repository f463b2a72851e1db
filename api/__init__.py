"""The HTTP API: quart-trio on hypercorn, validated by quart-schema, with its OpenAPI document."""

from ._app import ApiContext, create_app
from ._errors import ErrorBody, ErrorDetail, error_response
from ._serve import ApiServer, api_server, serve_api

__all__ = [
    "ApiContext",
    "ApiServer",
    "ErrorBody",
    "ErrorDetail",
    "api_server",
    "create_app",
    "error_response",
    "serve_api",
]
