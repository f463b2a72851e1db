"""JSON in TEXT columns: one deterministic encoding, so equal values store (and hash) equally."""

from __future__ import annotations

from typing import Any

import msgspec

encoder = msgspec.json.Encoder(order="deterministic")


def to_json(value: Any) -> str:
    """``value`` as the text a JSON column stores."""
    return encoder.encode(value).decode()


def from_json(text: str) -> Any:
    return msgspec.json.decode(text)
