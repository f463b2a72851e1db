"""The documentation keeps up with the code: every setting is documented, with its default."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from yggdrasil import Config
from yggdrasil._config import OidcProviderConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"


def sections() -> dict[str, str]:
    text = (DOCS / "configuration.md").read_text()
    found = {}
    for match in re.finditer(r"^## `\[(\w+)\]`\n(.*?)(?=^## |\Z)", text, re.S | re.M):
        found[match.group(1)] = match.group(2)
    return found


def rows(section_text: str, key: str) -> list[str]:
    return [
        line
        for line in section_text.splitlines()
        if line.startswith("|") and re.search(rf"`{re.escape(key)}`", line.split("|")[1])
    ]


def test_every_setting_is_documented_with_its_default() -> None:
    documented = sections()
    problems = []
    defaults = msgspec.to_builtins(Config())
    for section, values in defaults.items():
        if section not in documented:
            problems.append(f"[{section}] has no section")
            continue
        for key, value in values.items():
            if key == "providers":
                continue
            found = rows(documented[section], key)
            if not found:
                problems.append(f"{section}.{key} is not documented")
                continue
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and not any(f"`{value}`" in r or f"`{value:g}`" in r for r in found):
                problems.append(f"{section}.{key}: default {value} is not what the docs say")
    for key in OidcProviderConfig.__struct_fields__:
        if f"`providers.<name>.{key}`" not in documented.get("oidc", ""):
            problems.append(f"oidc.providers.<name>.{key} is not documented")
    assert problems == []
