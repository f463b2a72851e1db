"""Bodies of the envelopes that travel between sessions and network actors through the router.

They are msgspec Structs so that the bus can carry them between instances unchanged.
"""

from __future__ import annotations

import msgspec

from .protocol import PeerState, ThorAction


class DataFrom(msgspec.Struct, frozen=True):
    device_id: str
    data: bytes


class SignalFromDevice(msgspec.Struct, frozen=True):
    device_id: str
    kind: str
    payload: bytes


class ActionFrom(msgspec.Struct, frozen=True):
    """A request (the envelope carries its correlation id and deadline)."""

    device_id: str
    action: ThorAction
    timeout_ms: int
    size: int = 0
    """The request frame's size, for the receiving session's byte-bounded queue."""


class Encoded(msgspec.Struct, frozen=True):
    """A frame already encoded for the device: fan-out sends the same bytes to every session."""

    frame: bytes


class Join(msgspec.Struct, frozen=True):
    device_id: str
    session_id: str


class Joined(msgspec.Struct, frozen=True):
    serial: int
    devices: list[PeerState]


class Refused(msgspec.Struct, frozen=True):
    """The network does not know this device (it was deleted)."""

    reason: str


class Leave(msgspec.Struct, frozen=True):
    device_id: str
    session_id: str
