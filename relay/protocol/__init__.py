"""The device protocol, what both ends of a device session share: the frames and their codec
(sans-IO), the websocket close codes, and the transports the frames travel on.

The server (``relay``) and the device client (``relay.client``) both import it; it imports
neither. The WebRTC data channel's parts (``DataChannelTransport``, ``max_message_bytes``,
``InvalidOffer``, ``CHANNEL_LABEL``) load aiortc, and with it some 25 MiB, on first use only.
"""

from typing import TYPE_CHECKING, Any

from ._frames import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_PING_TIMEOUT,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REPLACED,
    CLOSE_REVOKED,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    MAX_FRAME_BYTES,
    VERSION,
    Ack,
    Bye,
    ChatMessage,
    ClientFrame,
    Deliver,
    Error,
    Hello,
    Incoming,
    Job,
    JobCancel,
    JobChunk,
    JobDone,
    JobFail,
    LockAcquire,
    LockErrorCode,
    LockExpired,
    LockGranted,
    LockRelease,
    LockRenew,
    LockResult,
    Nack,
    NackReason,
    PeerState,
    Ping,
    Pong,
    Presence,
    ProtocolError,
    Received,
    Reply,
    Request,
    Response,
    Send,
    ServerFrame,
    Signal,
    SignalFrom,
    ThorAction,
    ThorResult,
    Welcome,
    decode_client_frame,
    decode_server_frame,
    encode,
)
from ._transport import Transport, TransportClosed

__all__ = [
    "CHANNEL_LABEL",
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_PING_TIMEOUT",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_REPLACED",
    "CLOSE_REVOKED",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "MAX_FRAME_BYTES",
    "VERSION",
    "Ack",
    "Bye",
    "ChatMessage",
    "ClientFrame",
    "DataChannelTransport",
    "Deliver",
    "Error",
    "Hello",
    "Incoming",
    "InvalidOffer",
    "Job",
    "JobCancel",
    "JobChunk",
    "JobDone",
    "JobFail",
    "LockAcquire",
    "LockErrorCode",
    "LockExpired",
    "LockGranted",
    "LockRelease",
    "LockRenew",
    "LockResult",
    "Nack",
    "NackReason",
    "PeerState",
    "Ping",
    "Pong",
    "Presence",
    "ProtocolError",
    "Received",
    "Reply",
    "Request",
    "Response",
    "Send",
    "ServerFrame",
    "Signal",
    "SignalFrom",
    "ThorAction",
    "ThorResult",
    "Transport",
    "TransportClosed",
    "Welcome",
    "decode_client_frame",
    "decode_server_frame",
    "encode",
    "max_message_bytes",
]

_DATA_CHANNEL = ("CHANNEL_LABEL", "DataChannelTransport", "InvalidOffer", "max_message_bytes")

if TYPE_CHECKING:
    from ._datachannel import (
        CHANNEL_LABEL,
        DataChannelTransport,
        InvalidOffer,
        max_message_bytes,
    )


def __getattr__(name: str) -> Any:
    if name in _DATA_CHANNEL:
        from . import _datachannel

        return getattr(_datachannel, name)
    raise AttributeError(f"module 'relay.protocol' has no attribute {name!r}")
