"""Random, opaque identifiers and the clock the store uses."""

from __future__ import annotations

import base64
import secrets
import time


def new_id(prefix: str) -> str:
    """``prefix`` and 128 random bits, URL-safe: ``n_3q2...``. Never derived from a name."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def now_ms() -> int:
    return int(time.time() * 1000)


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str | None:
    """The value inside a cursor, or ``None`` for anything that is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError):
        return None
