"""The OpenAPI document, with every nested schema it refers to.

quart-schema (0.25) keeps only a model's top-level schema for msgspec Structs and drops the
components its ``$ref``s point at (``ErrorBody`` -> ``ErrorDetail``, ``DevicePage`` ->
``DeviceOut``...). This provider adds them, so that every reference resolves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from quart_schema import OpenAPIProvider

from . import _app_models, _errors, _models

_REF_TEMPLATE = "#/components/schemas/{name}"
_PATH_PARAMETER = re.compile(r"<(?:[^:]*:)?([^>]+)>")
F = TypeVar("F", bound=Callable[..., Any])


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
                and value.__module__ == module.__name__
                and not value.__name__.startswith("_")
            ):
                found.append(value)
    return found


class CompleteOpenAPIProvider(OpenAPIProvider):
    def schema(self) -> dict[str, Any]:
        schema = super().schema()
        models = _structs(_models, _errors, _app_models)
        _, components = msgspec.json.schema_components(models, ref_template=_REF_TEMPLATE)
        known = schema["components"]["schemas"]
        for name, component in components.items():
            known.setdefault(name, component)
        for rule in self._app.url_map.iter_rules():
            view = self._app.view_functions.get(rule.endpoint)
            if not getattr(view, "_yggdrasil_no_content", False):
                continue
            operations = schema["paths"].get(_PATH_PARAMETER.sub(r"{\1}", rule.rule), {})
            for method in rule.methods or ():
                operation = operations.get(method.lower())
                if operation is not None:
                    operation.setdefault("responses", {})[204] = {"description": "No Content"}
        return schema
