"""TURN for the devices: the address policy (where relays bind, how they are advertised, which
addresses are the server's own), the ephemeral credentials a device gets with its ICE servers,
the peer policy the relays and the gateway's WebRTC agent share, and the ``turn`` child that runs
the generic ``stun_turn`` server with all of them.
"""

from ._addresses import TurnAddresses, check_addresses, own_addresses, turn_addresses
from ._service import TurnService, turn_child

__all__ = [
    "TurnAddresses",
    "TurnService",
    "check_addresses",
    "own_addresses",
    "turn_addresses",
    "turn_child",
]
