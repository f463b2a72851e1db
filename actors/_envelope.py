"""The envelope every message travels in."""

from __future__ import annotations

from typing import Any

import msgspec

from ._address import Address


class Envelope(msgspec.Struct, frozen=True):
    """One message from ``src`` to ``dst``.

    ``corr`` is set on requests and their replies (``is_reply``); its prefix names the router
    instance that waits for the reply. ``deadline`` is the requester's deadline in seconds on the
    wall clock (``time.time()``), so it means the same on every instance.
    """

    src: Address
    dst: Address
    body: Any
    corr: str | None = None
    is_reply: bool = False
    deadline: float | None = None
