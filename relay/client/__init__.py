"""The device side: a client library that keeps a device's session with Yggdrasil.

:class:`DeviceClient` holds the session (over a websocket or a WebRTC data channel), reconnects,
refreshes its tokens and reports what happens as events; :func:`connect_direct` and
:func:`accept_direct` open byte channels between two devices of a network over ICE, with the
relay as the fallback; ``device_cli`` is ``yggdrasil device ...``. The frames it speaks are
``relay.protocol``'s; it imports nothing of the server's gateway.

``open_webrtc`` loads aiortc, and with it some 25 MiB, on first use only.
"""

from typing import TYPE_CHECKING, Any

from . import _device_cli as device_cli
from . import _provider_cli as provider_cli
from ._client import (
    BUILTIN_ACTIONS,
    ClientError,
    ComputeRefused,
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
    SessionRefused,
    SignalReceived,
    SignedOut,
)
from ._direct import DirectChannel, accept_direct, connect_direct

__all__ = [
    "BUILTIN_ACTIONS",
    "ClientError",
    "ComputeRefused",
    "Connected",
    "Credentials",
    "DeliveryFailed",
    "DeviceClient",
    "DirectChannel",
    "Disconnected",
    "Message",
    "NotConnected",
    "PresenceChanged",
    "Replaced",
    "RequestAnswered",
    "SessionRefused",
    "SignalReceived",
    "SignedOut",
    "accept_direct",
    "connect_direct",
    "device_cli",
    "open_webrtc",
    "provider_cli",
]

if TYPE_CHECKING:
    from ._webrtc import open_webrtc


def __getattr__(name: str) -> Any:
    if name == "open_webrtc":
        from . import _webrtc

        return _webrtc.open_webrtc
    raise AttributeError(f"module 'relay.client' has no attribute {name!r}")
