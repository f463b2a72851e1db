"""The protocols between the relay's actors, each a set of tagged msgspec Structs, so that the bus
carries them between instances unchanged (:data:`MESSAGE_TYPES` builds its codec).

- To a device session (``device/<network>/<device>``): data, signals and requests from other
  devices, frames already encoded for the device (presence), and the urgent ones - step down for
  a newer session, tokens revoked, the network restarted.
- To a network actor (``network/<network>``): join (a request, answered ``Joined`` or
  ``Refused``) and leave.
"""

from __future__ import annotations

import msgspec

from actors import Urgent

from .protocol import NackReason, PeerState, ThorAction, ThorResult

# ----------------------------------------------------------------------------- to a session


class DataFrom(msgspec.Struct, frozen=True, tag="session.data"):
    device_id: str
    data: bytes
    frame_id: int = 0
    """The sender's ``send`` id, for the confirmation it waits for (``confirm``)."""
    confirm: bool = False
    """The sender acknowledges only once the recipient confirms: answer with
    :class:`Delivered` (or :class:`Undelivered`)."""


class Delivered(msgspec.Struct, frozen=True, tag="session.delivered"):
    """To a sender's session: the recipient confirmed these ``send`` ids."""

    ids: list[int]


class Undelivered(msgspec.Struct, frozen=True, tag="session.undelivered"):
    """To a sender's session: these did not reach the recipient device (its session ended
    before confirming them, or its transport cannot carry them: ``too_large``)."""

    ids: list[int]
    reason: NackReason = "unreachable"


class SignalFromDevice(msgspec.Struct, frozen=True, tag="session.signal"):
    device_id: str
    kind: str
    payload: bytes


class ActionFrom(msgspec.Struct, frozen=True, tag="session.action"):
    """A request (the envelope carries its correlation id and deadline); answered with
    :class:`ActionResult`."""

    device_id: str
    action: ThorAction
    timeout_ms: int
    size: int = 0
    """The request frame's size, for the receiving session's byte-bounded queue."""


class ActionResult(msgspec.Struct, frozen=True, tag="session.result"):
    """The answer to an :class:`ActionFrom`: what the executing device replied."""

    result: ThorResult


class Encoded(msgspec.Struct, frozen=True, tag="session.frame"):
    """A frame already encoded for the device: fan-out sends the same bytes to every session."""

    frame: bytes


class Replace(Urgent, frozen=True, tag="session.replace"):
    """A newer session of the same device wants the address: step down (4000)."""

    session_id: str


class Revoke(Urgent, frozen=True, tag="session.revoke"):
    """The device's tokens were revoked (signed out, deleted, suspended): end at once (4001)."""


class Rejoin(Urgent, frozen=True, tag="session.rejoin"):
    """The network's actor is a new incarnation (it restarted, or moved after an instance died):
    a session joined to an older one ends (1001) so that its device reconnects and resyncs.
    ``incarnation`` empty: whatever the session joined is gone."""

    incarnation: str = ""


# ----------------------------------------------------------------------------- to a network


class Join(msgspec.Struct, frozen=True, tag="network.join"):
    device_id: str
    session_id: str
    instance: str
    """The instance the session runs on: when it dies, its members leave with it."""
    address: str = ""
    """The IP address the session comes from, as the server sees it (empty: unknown)."""


class Joined(msgspec.Struct, frozen=True, tag="network.joined"):
    serial: int
    devices: list[PeerState]
    incarnation: str


class Refused(msgspec.Struct, frozen=True, tag="network.refused"):
    """The network does not know this device (it was deleted)."""

    reason: str


class Leave(msgspec.Struct, frozen=True, tag="network.leave"):
    device_id: str
    session_id: str


class AddressReport(msgspec.Struct, frozen=True, tag="network.address"):
    """A member's device reported its public addresses (checked): the network records them
    and tells its other members (a presence change)."""

    device_id: str
    session_id: str
    addresses: list[str]


class PingDue(msgspec.Struct, frozen=True, tag="session.ping_due"):
    """From the gateway's ping timer to a session on this instance (never over the bus): its
    writer sends a ping with its next write."""


class AcksDue(msgspec.Struct, frozen=True, tag="session.acks_due"):
    """From a session's reader to its own writer (never over the bus): acknowledgements wait
    to be written (a device with ``acks: batch``); the writer sends them with its next write."""


MESSAGE_TYPES: tuple[type[msgspec.Struct], ...] = (
    DataFrom,
    Delivered,
    Undelivered,
    SignalFromDevice,
    ActionFrom,
    ActionResult,
    Encoded,
    Replace,
    Revoke,
    Rejoin,
    Join,
    Joined,
    Refused,
    Leave,
    AddressReport,
)
