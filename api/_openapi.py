"""The OpenAPI document, with every nested schema it refers to and every route's callers.

quart-schema (0.25) keeps only a model's top-level schema for msgspec Structs and drops the
components its ``$ref``s point at (``ErrorBody`` -> ``ErrorDetail``, ``DevicePage`` ->
``DeviceOut``...). This provider adds them, so that every reference resolves. It also documents
each route's security from the scope table (:mod:`api._scopes`): the bearer scheme, the 401,
403 and 429 answers, and ``x-principals``, the kinds of token the route admits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from quart_schema import OpenAPIProvider

from . import (
    _app_models,
    _audit_models,
    _billing_models,
    _ddns_models,
    _errors,
    _locks_models,
    _marketplace_models,
    _models,
    _payments_models,
    _payouts_models,
    _subscriptions_models,
)
from ._scopes import Access, access_for

_REF_TEMPLATE = "#/components/schemas/{name}"
_PATH_PARAMETER = re.compile(r"<(?:[^:]*:)?([^>]+)>")
F = TypeVar("F", bound=Callable[..., Any])
_ERROR = {
    "content": {"application/json": {"schema": {"$ref": _REF_TEMPLATE.format(name="ErrorBody")}}}
}
_GUARD_ANSWERS = {
    401: "the access token is missing, invalid or expired",
    403: "this kind of token may not call this route (insufficient_scope)",
    429: "too many requests (see Retry-After)",
}


def no_content(handler: F) -> F:
    """Document a 204 answer (quart-schema documents only answers with a body model)."""
    handler._yggdrasil_no_content = True  # type: ignore[attr-defined]
    return handler


def _structs(*modules: Any) -> list[type[msgspec.Struct]]:
    found: list[type[msgspec.Struct]] = []
    for module in modules:
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, msgspec.Struct)
                # its own models, and the domain's that it answers with as they are
                and (
                    value.__module__ == module.__name__ or value.__module__.startswith("yggdrasil.")
                )
                and not value.__name__.startswith("_")
            ):
                found.append(value)
    return found


class CompleteOpenAPIProvider(OpenAPIProvider):
    def schema(self) -> dict[str, Any]:
        schema = super().schema()
        models = _structs(
            _models,
            _errors,
            _app_models,
            _audit_models,
            _billing_models,
            _payments_models,
            _payouts_models,
            _subscriptions_models,
            _locks_models,
            _marketplace_models,
            _ddns_models,
        )
        _, components = msgspec.json.schema_components(models, ref_template=_REF_TEMPLATE)
        known = schema["components"]["schemas"]
        for name, component in components.items():
            known.setdefault(name, component)
        for rule in self._app.url_map.iter_rules():
            view = self._app.view_functions.get(rule.endpoint)
            no_content = getattr(view, "_yggdrasil_no_content", False)
            operations = schema["paths"].get(_PATH_PARAMETER.sub(r"{\1}", rule.rule), {})
            for method in rule.methods or ():
                operation = operations.get(method.lower())
                if operation is None:
                    continue
                responses = operation.setdefault("responses", {})
                if no_content:
                    responses[204] = {"description": "No Content"}
                access = access_for(method, rule.rule)
                if access is None or access.public:
                    continue
                operation["security"] = [{"bearer": []}]
                operation["x-principals"] = principals(access)
                for status, description in _GUARD_ANSWERS.items():
                    responses.setdefault(status, {**_ERROR, "description": description})
        return schema


def principals(access: Access) -> list[str]:
    """The kinds of token a route admits, as the OpenAPI document and docs/security.md name them:
    ``user``, ``operator``, ``device`` (its own network) and ``device:self`` (only itself)."""
    found = [kind for kind in ("user", "operator") if access.allows(kind)]
    if access.device == "network":
        found.append("device")
    elif access.device == "self":
        found.append("device:self")
    return found
