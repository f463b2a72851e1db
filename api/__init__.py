"""The HTTP API: quart-trio on hypercorn, validated by quart-schema, with its OpenAPI document."""

from ._app import ApiContext, create_app
from ._errors import ErrorBody, ErrorDetail, error_response
from ._serve import serve_api

__all__ = ["ApiContext", "ErrorBody", "ErrorDetail", "create_app", "error_response", "serve_api"]
