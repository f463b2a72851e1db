"""The HTTP API: quart-trio on hypercorn, validated by quart-schema, with its OpenAPI document;
and the operator listener (``/metrics``)."""

from ._app import ApiContext, create_app
from ._errors import ErrorBody, ErrorDetail, error_response
from ._operator import create_operator_app
from ._serve import ApiServer, OperatorServer, api_server, operator_server, serve_api

__all__ = [
    "ApiContext",
    "ApiServer",
    "ErrorBody",
    "ErrorDetail",
    "OperatorServer",
    "api_server",
    "create_app",
    "create_operator_app",
    "error_response",
    "operator_server",
    "serve_api",
]
