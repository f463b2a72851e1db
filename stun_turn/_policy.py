"""Which peers a relay may talk to (SECURITY.md): never an address the IANA IPv4 or IPv6
Special-Purpose Address Registry marks as not globally reachable, multicast, IPv6 outside global
unicast, cloud metadata, nor the server's own. The blocks are data in ``_special``, not the Python
version's ``ipaddress`` tables.

One narrow exception: *services* of this server that devices must reach through the relay - the
UDP sockets of the server's own WebRTC peer connections - are registered endpoint by endpoint
(address and port). A relay may reach exactly those, and nothing else on the server's addresses.

Every IPv6 form that embeds an IPv4 address is judged as that IPv4 address first: IPv4-mapped
(``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), NAT64 (``64:ff9b::/96``), 6to4
(``2002::/16``) and Teredo (``2001::/32``). That closes CVE-2020-26262 and its successors.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ._special import refused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056: bits 16-47
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380: the client, obfuscated, in bits 96-127


def canonical(address: str) -> IPAddress:
    """The address a packet to ``address`` really reaches, as far as the server can tell: an
    IPv6 form that embeds an IPv4 address becomes that IPv4 address. A zone (``%eth0``) is
    dropped. The local-use NAT64 prefix ``64:ff9b:1::/48`` (RFC 8215) stays IPv6: its layout is
    the operator's choice (RFC 6052 allows /48 to /96), so it is refused whole, not guessed at.
    Raises ValueError for anything that is not an IP address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        packed = ip.packed
        if packed[:12] == bytes(12) and int(ip) > 1:
            # IPv4-compatible (RFC 4291 2.5.5.1: deprecated, but stacks still route it); ::
            # and ::1 are themselves.
            return ipaddress.IPv4Address(packed[12:])
        if ip in _NAT64:
            return ipaddress.IPv4Address(packed[12:])
        if ip in _SIX_TO_FOUR:
            return ipaddress.IPv4Address(packed[2:6])
        if ip in _TEREDO:
            # The client's public IPv4 address, obfuscated by XOR in the last 32 bits.
            return ipaddress.IPv4Address(bytes(b ^ 0xFF for b in packed[12:]))
    return ip


class PeerPolicy:
    """Decides whether a relay may send to a peer address."""

    def __init__(self, *, own: Iterable[str] = (), allow: Iterable[str] = ()) -> None:
        self._own = {canonical(a) for a in own}
        self._allow: list[Network] = [ipaddress.ip_network(n, strict=False) for n in allow]
        self._services: dict[IPAddress, set[int]] = {}

    def add_service(self, address: str, port: int) -> None:
        """Let relays reach ``address:port``, a UDP socket of this server's own."""
        self._services.setdefault(canonical(address), set()).add(port)

    def discard_service(self, address: str, port: int) -> None:
        ip = canonical(address)
        ports = self._services.get(ip)
        if ports is not None:
            ports.discard(port)
            if not ports:
                del self._services[ip]

    def service(self, address: str, port: int | None) -> bool:
        """Whether ``address:port`` is a registered service (``port`` None: any on ``address``)."""
        try:
            ports = self._services.get(canonical(address))
        except ValueError:
            return False
        return ports is not None and (port is None or port in ports)

    def allowed(self, address: str) -> bool:
        try:
            ip = canonical(address)
        except ValueError:
            return False
        if any(ip in network for network in self._allow):
            return True
        if ip in self._own:
            return False
        return not refused(ip)
