"""The device gateway: the websocket listener, device sessions and network actors.

Two subpackages sit beside it: ``relay.protocol``, the device protocol both ends share (frames,
close codes, transports), and ``relay.client``, the device-side client library. The gateway
imports the protocol and never the client; the client imports the protocol and never the gateway.
"""

from ._gateway import Gateway, gateway_child
from ._messages import MESSAGE_TYPES
from ._network import NetworkActor, TenantQuota, network_actors, network_factory
from ._session import DeviceSession

__all__ = [
    "MESSAGE_TYPES",
    "DeviceSession",
    "Gateway",
    "NetworkActor",
    "TenantQuota",
    "gateway_child",
    "network_actors",
    "network_factory",
]
