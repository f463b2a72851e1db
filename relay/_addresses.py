"""Where a device's session comes from, as the server sees it (the seed's Dynamic IP Handling):
the network learns it at the join, and again whenever the device reports new addresses."""

from __future__ import annotations

import ipaddress


def peer_address(transport: object) -> str:
    """The IP address the transport's peer connects from, canonical (an IPv4-mapped IPv6
    address as IPv4); empty when the transport does not say (a WebRTC data channel).

    trio-websocket names a wrapped stream's endpoint only by its ``repr``, so the socket is
    found under the frame guard (``relay._wsguard.GuardedStream.inner``)."""
    stream = getattr(transport, "_stream", None)
    inner = getattr(stream, "inner", stream)
    sock = getattr(inner, "socket", None)
    if sock is None:
        return ""
    try:
        host = sock.getpeername()[0]
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except (OSError, ValueError, TypeError, IndexError):
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
