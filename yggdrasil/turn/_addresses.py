"""The TURN address policy: where relays bind, the address they are advertised with, the host
devices are told to use, and the server's own addresses, which relays must never reach."""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple

import aioice.ice

from .._config import TurnConfig
from .._errors import ConfigError
from ._tls import check_tls

_WILDCARDS = {"", "0.0.0.0", "::"}


class TurnAddresses(NamedTuple):
    relay: str
    """The IPv4 address relay sockets bind to."""
    advertised: str
    """The address relays are advertised with (the public one of a 1:1 NAT)."""
    public: str
    """The STUN/TURN host devices are told to use (a host name or an address)."""


def _default_route_ip() -> str:
    """The local IPv4 address of the default route (a UDP "connect" sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address: str = probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address


def turn_addresses(config: TurnConfig, host: str) -> TurnAddresses:
    """The addresses of TURN on a server whose listeners bind to ``host``; a wildcard is never
    advertised."""
    relay = config.relay_ip or host
    if relay in _WILDCARDS or ":" in relay:
        relay = _default_route_ip()
    advertised = config.external_ip or relay
    public = config.public_host or host
    if public in _WILDCARDS:
        public = advertised
    return TurnAddresses(relay, advertised, public)


def own_addresses(config: TurnConfig, host: str, *configured: str) -> set[str]:
    """The server's own addresses, which relays must never reach: ``host``, the ``configured``
    ones, the IPv6 relay address and those of every interface (host names are left out)."""
    found = {address for address in (host, *configured) if address}
    found.add(config.relay_ip_v6)
    found.update(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True))
    own = set()
    for address in found:
        try:
            ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            continue  # a host name (public_host) or a wildcard's empty string
        own.add(address)
    return own


def _check_ip(key: str, value: str, version: int) -> None:
    if not value:
        return
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{key} must be an IPv{version} address, not {value!r}") from None
    if address.version != version or address.is_unspecified:
        raise ConfigError(f"{key} must be a specific IPv{version} address, not {value!r}")


def check_addresses(config: TurnConfig) -> None:
    """:class:`ConfigError` unless each configured relay address is a specific address of its
    family, and the TLS certificate and key, if set, load (before anything starts)."""
    _check_ip("turn.relay_ip", config.relay_ip, 4)
    _check_ip("turn.external_ip", config.external_ip, 4)
    _check_ip("turn.relay_ip_v6", config.relay_ip_v6, 6)
    check_tls(config.tls_cert_file, config.tls_key_file)
