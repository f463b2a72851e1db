"""Bodies of the operational endpoints."""

from __future__ import annotations

import msgspec


class Health(msgspec.Struct):
    status: str


class Ready(msgspec.Struct):
    status: str
    store: str
