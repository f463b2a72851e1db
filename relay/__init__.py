"""The device gateway: the websocket listener, device sessions and network actors.

Two subpackages sit beside it: ``relay.protocol``, the device protocol both ends share (frames,
close codes, transports), and ``relay.client``, the device-side client library. The gateway
imports the protocol and never the client; the client imports the protocol and never the gateway.
"""

from ._compute import COMPUTE_MESSAGES, Geri, geri_child
from ._gateway import Gateway, gateway_child
from ._messages import MESSAGE_TYPES as _SESSION_MESSAGES
from ._network import NetworkActor, TenantQuota, network_actors, network_factory
from ._session import DeviceSession

MESSAGE_TYPES = (*_SESSION_MESSAGES, *COMPUTE_MESSAGES)
"""Every message the relay's actors exchange (the bus's codec carries them between instances)."""

__all__ = [
    "MESSAGE_TYPES",
    "DeviceSession",
    "Gateway",
    "Geri",
    "NetworkActor",
    "TenantQuota",
    "gateway_child",
    "geri_child",
    "network_actors",
    "network_factory",
]
