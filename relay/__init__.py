"""The device gateway: wire protocol, device sessions, network actors and the device client.

The WebRTC parts (``DataChannelTransport``, ``open_webrtc``) load aiortc, and with it some 25 MiB,
on first use only.
"""

from typing import TYPE_CHECKING, Any

from . import _device_cli as device_cli
from ._client import (
    BUILTIN_ACTIONS,
    ClientError,
    Connected,
    Credentials,
    DeliveryFailed,
    DeviceClient,
    Disconnected,
    Message,
    NotConnected,
    PresenceChanged,
    Replaced,
    RequestAnswered,
    SignalReceived,
    SignedOut,
)
from ._direct import DirectChannel, accept_direct, connect_direct
from ._gateway import Gateway
from ._messages import MESSAGE_TYPES
from ._network import NetworkActor, TenantQuota, network_factory
from ._protocol import (
    VERSION,
    Ack,
    Bye,
    ClientFrame,
    Deliver,
    Error,
    Hello,
    Incoming,
    Nack,
    PeerState,
    Ping,
    Pong,
    Presence,
    ProtocolError,
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
from ._session import DeviceSession
from ._transport import SessionRefused, Transport, TransportClosed

__all__ = [
    "BUILTIN_ACTIONS",
    "MESSAGE_TYPES",
    "VERSION",
    "Ack",
    "Bye",
    "ClientError",
    "ClientFrame",
    "Connected",
    "Credentials",
    "DataChannelTransport",
    "Deliver",
    "DeliveryFailed",
    "DeviceClient",
    "DeviceSession",
    "DirectChannel",
    "Disconnected",
    "Error",
    "Gateway",
    "Hello",
    "Incoming",
    "Message",
    "Nack",
    "NetworkActor",
    "NotConnected",
    "PeerState",
    "Ping",
    "Pong",
    "Presence",
    "PresenceChanged",
    "ProtocolError",
    "Replaced",
    "Reply",
    "Request",
    "RequestAnswered",
    "Response",
    "Send",
    "ServerFrame",
    "SessionRefused",
    "Signal",
    "SignalFrom",
    "SignalReceived",
    "SignedOut",
    "TenantQuota",
    "ThorAction",
    "ThorResult",
    "Transport",
    "TransportClosed",
    "Welcome",
    "accept_direct",
    "connect_direct",
    "decode_client_frame",
    "decode_server_frame",
    "device_cli",
    "encode",
    "network_factory",
    "open_webrtc",
]

if TYPE_CHECKING:
    from ._webrtc import DataChannelTransport, open_webrtc


def __getattr__(name: str) -> Any:
    if name in ("DataChannelTransport", "open_webrtc"):
        from . import _webrtc

        return getattr(_webrtc, name)
    raise AttributeError(f"module 'relay' has no attribute {name!r}")
