"""Request and response bodies of the DDNS routes (``api/_ddns.py``)."""

from __future__ import annotations

from typing import Annotated

import msgspec


class DdnsIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
    """The device's name under the operator's zone: letters, digits and inner hyphens (the
    name is ``<label>.<zone>``, in lower case)."""


class DdnsOut(msgspec.Struct, frozen=True):
    name: str
    """The full DNS name, ``<label>.<zone>``."""
    label: str
    device_id: str
    network_id: str
    created_at: int
    addresses: list[str]
    """The device's current public addresses (empty before its first session); its A and
    AAAA records follow them (global ones only, unless the operator publishes private ones)."""
