"""What every tenant-scoped read shares: who is asking (:class:`Scope`), and pages with cursors."""

from __future__ import annotations

import base64
from typing import Generic, Literal, TypeVar

import msgspec

from .._errors import NotFound

T = TypeVar("T")
MAX_PAGE = 100


class Scope(msgspec.Struct, frozen=True):
    """Who is asking. Built from the authenticated principal only, never from request data.

    ``network_id`` is set for a device's token: such a principal sees only that network.
    """

    user_id: str
    role: Literal["user", "operator"] = "user"
    network_id: str | None = None

    def check_network(self, network_id: str) -> None:
        """A device-bound scope reaches only its own network: anything else is not found."""
        if self.network_id is not None and self.network_id != network_id:
            raise NotFound()


class Page(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str | None:
    """The value inside a cursor, or ``None`` for anything that is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError):
        return None
