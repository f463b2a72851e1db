"""The address blocks a relay never reaches, as data (SECURITY.md), not the Python version's
``ipaddress`` tables: those lag the registries (3.11.7 calls 192.0.0.100, 3fff::1 and fec0::1
global).

``IPV4_REGISTRY`` and ``IPV6_REGISTRY`` transcribe every entry of the *IANA IPv4 Special-Purpose
Address Registry* and the *IANA IPv6 Special-Purpose Address Registry* (RFC 6890, RFC 8190), both
"Last Updated 2025-10-09", with the registry's "Globally Reachable" column: True, False, or None
where the registry says "N/A" (Teredo, 6to4) or leaves it blank (the terminated 192.88.99.0/24
and 2001:10::/28). An address is refused when it lies in an entry that is not True (N/A and blank
fail closed) or in ``_EXTRA``.

Decided on purpose: an entry marked globally reachable *inside* a non-global one is refused with
its enclosing block - 192.0.0.9/32 (PCP anycast) and 192.0.0.10/32 (TURN anycast) in
192.0.0.0/24; 2001:1::1-3 (anycasts), 2001:3::/32 (AMT), 2001:4:112::/48 (AS112-v6),
2001:20::/28 (ORCHIDv2) and 2001:30::/28 (DETs) in 2001::/23. An anycast service address reaches
whichever instance is nearest the *relay*, possibly one inside the operator's own network; ORCHIDs
and DETs are identifiers, not locators; none of them is ever a WebRTC peer. Globally reachable
entries outside any refused block (192.31.196.0/24, 192.52.193.0/24, 192.175.48.0/24,
2620:4f:8000::/48) are ordinary destinations.

The IPv6 blocks that embed an IPv4 address (::ffff:0:0/96, 64:ff9b::/96, 2002::/16 and Teredo
2001::/32, plus the deprecated IPv4-compatible ::/96) are decoded by ``canonical()`` before they
get here, so their rows decide nothing: the embedded IPv4 address is judged instead.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable
from typing import NamedTuple

IPV4_REGISTRY_NAME = "IANA IPv4 Special-Purpose Address Registry"
IPV4_REGISTRY_UPDATED = "2025-10-09"
IPV6_REGISTRY_NAME = "IANA IPv6 Special-Purpose Address Registry"
IPV6_REGISTRY_UPDATED = "2025-10-09"


class Block(NamedTuple):
    prefix: str
    name: str
    rfc: str
    globally_reachable: bool | None  # None: the registry's "N/A", or blank (terminated)


IPV4_REGISTRY: tuple[Block, ...] = (
    Block("0.0.0.0/8", '"This network"', "RFC 791", False),
    Block("0.0.0.0/32", '"This host on this network"', "RFC 1122", False),
    Block("10.0.0.0/8", "Private-Use", "RFC 1918", False),
    Block("100.64.0.0/10", "Shared Address Space", "RFC 6598", False),
    Block("127.0.0.0/8", "Loopback", "RFC 1122", False),
    Block("169.254.0.0/16", "Link Local", "RFC 3927", False),
    Block("172.16.0.0/12", "Private-Use", "RFC 1918", False),
    Block("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890", False),
    Block("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", False),
    Block("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", False),
    Block("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", True),
    Block("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", True),
    Block("192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050", False),
    Block("192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050", False),
    Block("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737", False),
    Block("192.31.196.0/24", "AS112-v4", "RFC 7535", True),
    Block("192.52.193.0/24", "AMT", "RFC 7450", True),
    Block("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", None),
    Block("192.88.99.2/32", "6a44-relay anycast address", "RFC 6751", False),
    Block("192.168.0.0/16", "Private-Use", "RFC 1918", False),
    Block("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", True),
    Block("198.18.0.0/15", "Benchmarking", "RFC 2544", False),
    Block("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", False),
    Block("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", False),
    Block("240.0.0.0/4", "Reserved", "RFC 1112", False),
    Block("255.255.255.255/32", "Limited Broadcast", "RFC 8190, RFC 919", False),
)

IPV6_REGISTRY: tuple[Block, ...] = (
    Block("::1/128", "Loopback Address", "RFC 4291", False),
    Block("::/128", "Unspecified Address", "RFC 4291", False),
    Block("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", False),
    Block("64:ff9b::/96", "IPv4-IPv6 Translat.", "RFC 6052", True),
    Block("64:ff9b:1::/48", "IPv4-IPv6 Translat.", "RFC 8215", False),
    Block("100::/64", "Discard-Only Address Block", "RFC 6666", False),
    Block("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", False),
    Block("2001::/23", "IETF Protocol Assignments", "RFC 2928", False),
    Block("2001::/32", "TEREDO", "RFC 4380, RFC 8190", None),
    Block("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", True),
    Block("2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", True),
    Block("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665", True),
    Block("2001:2::/48", "Benchmarking", "RFC 5180", False),
    Block("2001:3::/32", "AMT", "RFC 7450", True),
    Block("2001:4:112::/48", "AS112-v6", "RFC 7535", True),
    Block("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", None),
    Block("2001:20::/28", "ORCHIDv2", "RFC 7343", True),
    Block("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", True),
    Block("2001:db8::/32", "Documentation", "RFC 3849", False),
    Block("2002::/16", "6to4", "RFC 3056", None),
    Block("2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", True),
    Block("3fff::/20", "Documentation", "RFC 9637", False),
    Block("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", False),
    Block("fc00::/7", "Unique-Local", "RFC 4193, RFC 8190", False),
    Block("fe80::/10", "Link-Local Unicast", "RFC 4291", False),
)

# What SECURITY.md adds to the registries. Cloud metadata services mostly live inside registry
# blocks already: 169.254.169.254 (AWS, GCP, Azure, OCI, OpenStack...) and 169.254.170.2 (AWS
# ECS) in 169.254.0.0/16, Alibaba's 100.100.100.200 in 100.64.0.0/10, AWS's fd00:ec2::254 and
# GCP's fd20:ce::254 in fc00::/7. Listed here is only what is not.
_EXTRA: tuple[Block, ...] = (
    Block("224.0.0.0/4", "Multicast", "RFC 5771", False),
    Block("ff00::/8", "Multicast", "RFC 4291", False),
    Block("168.63.129.16/32", "Azure platform address (WireServer, DNS, DHCP)", "-", False),
    # IPv6 outside 2000::/3, the only space IANA hands out (RFC 4291 section 2.4; IANA "IPv6
    # Address Space": the rest is reserved by the IETF or special). Covers the deprecated
    # site-local fec0::/10 (RFC 3879) and IPv4-translatable ::ffff:0:0:0/96 (RFC 2765) too.
    Block("::/3", "Reserved by IETF (outside global unicast)", "RFC 4291", False),
    Block("4000::/2", "Reserved by IETF (outside global unicast)", "RFC 4291", False),
    Block("8000::/1", "Reserved by IETF (outside global unicast)", "RFC 4291", False),
)


def _spans(blocks: Iterable[Block], version: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The refused blocks of one family as sorted, merged, disjoint ``(starts, ends)``."""
    spans = sorted(
        (int(net.network_address), int(net.broadcast_address))
        for net in (ipaddress.ip_network(block.prefix) for block in blocks)
        if net.version == version
    )
    starts: list[int] = []
    ends: list[int] = []
    for start, end in spans:
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return tuple(starts), tuple(ends)


_REFUSED = [
    b for b in (*IPV4_REGISTRY, *IPV6_REGISTRY, *_EXTRA) if b.globally_reachable is not True
]
_V4 = _spans(_REFUSED, 4)
_V6 = _spans(_REFUSED, 6)


def refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` lies in a refused block. Give it ``canonical()``'s answer, not the raw
    address: an IPv6 form that embeds IPv4 is only judged right once decoded."""
    starts, ends = _V4 if ip.version == 4 else _V6
    value = int(ip)
    i = bisect_right(starts, value) - 1
    return i >= 0 and value <= ends[i]
