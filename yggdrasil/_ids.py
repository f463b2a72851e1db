"""Random, opaque identifiers and the clock the store uses."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    """``prefix`` and 128 random bits, URL-safe: ``n_3q2...``. Never derived from a name."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def now_ms() -> int:
    return int(time.time() * 1000)
