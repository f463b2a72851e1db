"""The configuration as TOML text: the effective one with its secrets masked
(``yggdrasil config show``), and a commented example of every setting with its default and its
documentation (``yggdrasil config example``), generated from the structs in ``_config``.

A setting's documentation is the string literal under its field (read from the source, as
Sphinx does); its type and bounds come from the struct itself.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import json
import re
import textwrap
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from ._config import Config, OidcProviderConfig

MASK = "********"
_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential", re.I)


# --------------------------------------------------------------------- values


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string (the same escapes).
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def mask_url(url: str) -> str:
    """``scheme://user:password@host`` with the password masked; anything else unchanged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostinfo}"))


def _masked(key: str, value: Any) -> Any:
    if isinstance(value, list):
        if key == "static_users":  # user:password
            return [f"{item.partition(':')[0]}:{MASK}" for item in value]
        return [_masked("", item) for item in value]
    if not isinstance(value, str) or not value:
        return value
    if _SECRET_KEY.search(key):
        return MASK
    return mask_url(value) if "://" in value else value


# --------------------------------------------------------------------- show


def render_config(config: Config, *, mask: bool = True) -> str:
    """``config`` as TOML, one table per section; secrets masked unless ``mask`` is false."""
    lines: list[str] = []
    data = msgspec.to_builtins(config)
    for section, values in data.items():
        tables: list[tuple[str, dict[str, Any]]] = []
        lines.append(f"[{section}]")
        for key, value in values.items():
            if section == "oidc" and key == "providers":
                tables += [(f"oidc.providers.{_toml_key(n)}", p) for n, p in value.items()]
                continue
            lines.append(f"{key} = {_toml_value(_masked(key, value) if mask else value)}")
        for name, table in tables:
            lines += ["", f"[{name}]"]
            for key, value in table.items():
                lines.append(f"{key} = {_toml_value(_masked(key, value) if mask else value)}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------- example


@functools.cache
def field_docs(struct: type[msgspec.Struct]) -> dict[str, str]:
    """The string literal under each field of ``struct``'s class body, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(struct)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _bounds(info: Any) -> str:
    parts = []
    for attribute, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        bound = getattr(info, attribute, None)
        if bound is not None:
            parts.append(f"{sign} {bound}")
    return ", ".join(parts)


def describe_type(info: msgspec.inspect.Type) -> str:
    """What a setting takes, in words: ``integer, >= 0, <= 65535``."""
    if isinstance(info, msgspec.inspect.BoolType):
        return "true or false"
    if isinstance(info, msgspec.inspect.IntType):
        return ", ".join(filter(None, ["integer", _bounds(info)]))
    if isinstance(info, msgspec.inspect.FloatType):
        return ", ".join(filter(None, ["number", _bounds(info)]))
    if isinstance(info, msgspec.inspect.StrType):
        return "text"
    if isinstance(info, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(json.dumps(v) for v in info.values)
    if isinstance(info, msgspec.inspect.ListType):
        return f"list of {describe_type(info.item_type)}"
    if isinstance(info, msgspec.inspect.DictType | msgspec.inspect.StructType):
        return "table"
    return type(info).__name__


def _comment(text: str, width: int = 96) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n\n"):
        lines += [f"# {line}" for line in textwrap.wrap(" ".join(paragraph.split()), width)]
    return lines


def _default(field: msgspec.inspect.Field) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return msgspec.to_builtins(field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return msgspec.to_builtins(field.default_factory())
    return msgspec.NODEFAULT


def _field_lines(
    struct: type[msgspec.Struct], field: msgspec.inspect.Field, env: str | None
) -> list[str]:
    lines = _comment(field_docs(struct).get(field.name, ""))
    default = _default(field)
    facts = [describe_type(field.type)]
    if default is msgspec.NODEFAULT:
        facts.append("required")
    if env is not None:
        facts.append(f"environment {env}")
    lines.append(f"# ({'; '.join(facts)})")
    if default is msgspec.NODEFAULT:
        shown = '["..."]' if isinstance(field.type, msgspec.inspect.ListType) else '"..."'
    else:
        shown = _toml_value(default)
    lines.append(f"# {field.name} = {shown}")
    return lines


def example_config() -> str:
    """Every setting, commented out at its default, under its documentation: the file loads as
    the defaults, and uncommenting a line changes nothing until its value is edited."""
    lines = [
        "# Yggdrasil configuration: yggdrasil serve --config FILE.",
        "# Every setting is shown at its default, commented out. Settings are read from this",
        "# file, then from YGG_<SECTION>_<KEY> environment variables, then from command-line",
        "# flags; `yggdrasil config show` prints the result.",
        "",
    ]
    root = msgspec.inspect.type_info(Config)
    assert isinstance(root, msgspec.inspect.StructType)
    for section in root.fields:
        info = section.type
        assert isinstance(info, msgspec.inspect.StructType)
        struct = info.cls
        lines.append(f"[{section.name}]")
        if struct.__doc__:
            lines += _comment(inspect.cleandoc(struct.__doc__))
        tables: list[str] = []
        for field in info.fields:
            if isinstance(field.type, msgspec.inspect.DictType):
                # Subtables come last: the settings after them would belong to them.
                tables += _providers_example(struct, field)
                continue
            env = f"YGG_{section.name}_{field.name}".upper()
            lines += [*_field_lines(struct, field, env), ""]
        lines += tables
    return "\n".join(lines).rstrip() + "\n"


def _providers_example(struct: type[msgspec.Struct], field: msgspec.inspect.Field) -> list[str]:
    lines = _comment(field_docs(struct).get(field.name, ""))
    lines += [
        "# OpenID Connect providers, one table each, named by the path of their routes",
        "# (/api/v1/auth/oidc/<name>/...). For example:",
        "#",
        f"# [oidc.{field.name}.google]",
    ]
    provider = msgspec.inspect.type_info(OidcProviderConfig)
    assert isinstance(provider, msgspec.inspect.StructType)
    for setting in provider.fields:
        lines += _field_lines(OidcProviderConfig, setting, None)
    return [*lines, ""]
