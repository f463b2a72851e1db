"""The peer deny list, with every way to write a forbidden address.

The blocks below are this test's own transcription of the IANA special-purpose registries (not
imported from the module under test), and nothing here asks ``ipaddress`` whether an address is
global: the point is that the verdict must not depend on the Python version's tables.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from stun_turn._policy import PeerPolicy, canonical

IPV4_REGISTRY = ("IANA IPv4 Special-Purpose Address Registry", "2025-10-09")
IPV6_REGISTRY = ("IANA IPv6 Special-Purpose Address Registry", "2025-10-09")

# Every entry whose "Globally Reachable" is False, or blank (terminated entries fail closed).
IPV4_NOT_GLOBAL = [
    ("0.0.0.0/8", '"This network"', "RFC 791"),
    ("0.0.0.0/32", '"This host on this network"', "RFC 1122"),
    ("10.0.0.0/8", "Private-Use", "RFC 1918"),
    ("100.64.0.0/10", "Shared Address Space", "RFC 6598"),
    ("127.0.0.0/8", "Loopback", "RFC 1122"),
    ("169.254.0.0/16", "Link Local", "RFC 3927"),
    ("172.16.0.0/12", "Private-Use", "RFC 1918"),
    ("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890"),
    ("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335"),
    ("192.0.0.8/32", "IPv4 dummy address", "RFC 7600"),
    ("192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880"),
    ("192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880"),
    ("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737"),
    ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526"),  # blank: terminated
    ("192.88.99.2/32", "6a44-relay anycast address", "RFC 6751"),
    ("192.168.0.0/16", "Private-Use", "RFC 1918"),
    ("198.18.0.0/15", "Benchmarking", "RFC 2544"),
    ("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737"),
    ("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737"),
    ("240.0.0.0/4", "Reserved", "RFC 1112"),
    ("255.255.255.255/32", "Limited Broadcast", "RFC 8190"),
]
IPV6_NOT_GLOBAL = [
    ("::1/128", "Loopback Address", "RFC 4291"),
    ("::/128", "Unspecified Address", "RFC 4291"),
    ("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291"),
    ("64:ff9b:1::/48", "IPv4-IPv6 Translat.", "RFC 8215"),
    ("100::/64", "Discard-Only Address Block", "RFC 6666"),
    ("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780"),
    ("2001::/23", "IETF Protocol Assignments", "RFC 2928"),
    ("2001:2::/48", "Benchmarking", "RFC 5180"),
    ("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843"),  # blank: terminated
    ("2001:db8::/32", "Documentation", "RFC 3849"),
    ("3fff::/20", "Documentation", "RFC 9637"),
    ("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602"),
    ("fc00::/7", "Unique-Local", "RFC 4193"),
    ("fe80::/10", "Link-Local Unicast", "RFC 4291"),
]
# "N/A": judged as the IPv4 address they embed (test_embedded_ipv4_is_judged_as_ipv4).
IPV6_NOT_APPLICABLE = [("2001::/32", "TEREDO", "RFC 4380"), ("2002::/16", "6to4", "RFC 3056")]
# What SECURITY.md adds: multicast, IPv6 outside global unicast 2000::/3, metadata not inside a
# registry block.
EXTRA_V4 = [("224.0.0.0/4", "Multicast", "RFC 5771"), ("168.63.129.16/32", "Azure platform", "")]
EXTRA_V6 = [
    ("ff00::/8", "Multicast", "RFC 4291"),
    ("::/3", "Reserved by IETF", "RFC 4291"),
    ("4000::/2", "Reserved by IETF", "RFC 4291"),
    ("8000::/1", "Reserved by IETF", "RFC 4291"),
]
# Judged as the IPv4 address they embed: only its ends (0.0.0.0, 255.255.255.255) are sampled
# here; the embedded forms are tested one by one below.
EMBEDS_IPV4 = {"::ffff:0:0/96"}

PUBLIC_V4 = ["8.8.8.8", "1.1.1.1", "9.9.9.9", "23.1.2.3"]
PUBLIC_V6 = ["2606:4700:4700::1111", "2a00:1450:4001::1", "2620:fe::fe", "2c0f:fb50::1"]


def samples(prefix: str) -> list[str]:
    """The first, a middle and the last address of ``prefix``."""
    network = ipaddress.ip_network(prefix)
    picks = [0, -1] if prefix in EMBEDS_IPV4 else [0, network.num_addresses // 2, -1]
    return list(dict.fromkeys(str(network[i]) for i in picks))


def blocks(*tables: list[tuple[str, str, str]]) -> list[object]:
    return [
        pytest.param(prefix, id=f"{prefix} {name}") for table in tables for prefix, name, _ in table
    ]


@pytest.mark.parametrize("prefix", blocks(IPV4_NOT_GLOBAL, IPV6_NOT_GLOBAL, EXTRA_V4, EXTRA_V6))
def test_every_not_globally_reachable_block_is_refused(prefix: str) -> None:
    policy = PeerPolicy()
    for address in samples(prefix):
        assert not policy.allowed(address), f"{address} in {prefix}"


def test_the_reported_address_is_refused() -> None:
    assert not PeerPolicy().allowed("192.0.0.100")  # relayed on Python 3.11.7: 192.0.0.0/24


@pytest.mark.parametrize(
    "address",
    [
        # Globally reachable entries inside a non-global block go with the block (_special).
        "192.0.0.9",  # PCP anycast
        "192.0.0.10",  # TURN anycast
        "2001:1::1",
        "2001:1::2",
        "2001:1::3",
        "2001:3::1",  # AMT
        "2001:4:112::1",  # AS112-v6
        "2001:20::1",  # ORCHIDv2
        "2001:30::1",  # DETs
        # Cloud metadata services, wherever they live.
        "169.254.169.254",
        "169.254.170.2",
        "100.100.100.200",
        "168.63.129.16",
        "fd00:ec2::254",
        "fd20:ce::254",
        # Beyond the registry: deprecated site-local, IPv4-translatable, reserved space.
        "fec0::1",
        "::ffff:0:102:304",
        "4000::1",
        "64:ff9b:2::1",
    ],
)
def test_refused_on_purpose(address: str) -> None:
    assert not PeerPolicy().allowed(address)


@pytest.mark.parametrize(
    "address",
    # Registry entries that are globally reachable and outside any refused block.
    ["192.31.196.1", "192.52.193.1", "192.175.48.1", "2620:4f:8000::1", *PUBLIC_V4, *PUBLIC_V6],
)
def test_public_addresses_are_relayed(address: str) -> None:
    assert PeerPolicy().allowed(address)


def mapped(v4: ipaddress.IPv4Address) -> str:
    return f"::ffff:{v4}"


def compatible(v4: ipaddress.IPv4Address) -> str:
    return str(ipaddress.IPv6Address(int(v4)))


def nat64(v4: ipaddress.IPv4Address) -> str:
    return str(ipaddress.IPv6Address(0x0064_FF9B << 96 | int(v4)))


def six_to_four(v4: ipaddress.IPv4Address) -> str:
    return str(ipaddress.IPv6Address(0x2002 << 112 | int(v4) << 80 | 1))


def teredo(v4: ipaddress.IPv4Address) -> str:
    # Server 65.54.227.120, cone flag, obfuscated port 40000, obfuscated client address.
    server, flags, port = 0x4136_E378, 0x8000, 40000 ^ 0xFFFF
    return str(
        ipaddress.IPv6Address(
            0x2001_0000 << 96 | server << 64 | flags << 48 | port << 32 | int(v4) ^ 0xFFFF_FFFF
        )
    )


FORMS: list[Callable[[ipaddress.IPv4Address], str]] = [
    mapped,
    compatible,
    nat64,
    six_to_four,
    teredo,
]


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("prefix", blocks(IPV4_NOT_GLOBAL, EXTRA_V4))
def test_embedded_ipv4_is_judged_as_ipv4(
    form: Callable[[ipaddress.IPv4Address], str], prefix: str
) -> None:
    policy = PeerPolicy()
    for v4 in samples(prefix):
        address = form(ipaddress.IPv4Address(v4))
        assert not policy.allowed(address), f"{address} wraps {v4} in {prefix}"


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("v4", PUBLIC_V4)
def test_embedded_public_ipv4_is_relayed(
    form: Callable[[ipaddress.IPv4Address], str], v4: str
) -> None:
    address = form(ipaddress.IPv4Address(v4))
    assert str(canonical(address)) == v4
    assert PeerPolicy().allowed(address)


def test_local_use_nat64_is_refused_whole_not_decoded() -> None:
    # RFC 8215: the operator picks the layout, so 64:ff9b:1::/48 is not guessed at.
    assert str(canonical("64:ff9b:1::808:808")) == "64:ff9b:1::808:808"
    assert not PeerPolicy().allowed("64:ff9b:1::808:808")
    assert not PeerPolicy().allowed("64:ff9b:1:808:800:8::")


def test_the_verdict_does_not_consult_ipaddress_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: object) -> bool:
        raise AssertionError("the deny list must not use ipaddress's tables")

    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        for name in ("is_global", "is_private", "is_reserved", "is_multicast", "is_loopback"):
            monkeypatch.setattr(cls, name, property(boom))
        monkeypatch.setattr(cls, "is_link_local", property(boom))
        monkeypatch.setattr(cls, "is_unspecified", property(boom))
    monkeypatch.setattr(ipaddress.IPv6Address, "is_site_local", property(boom))
    policy = PeerPolicy()
    assert policy.allowed("8.8.8.8")
    assert policy.allowed("2606:4700:4700::1111")
    assert not policy.allowed("192.0.0.100")
    assert not policy.allowed("3fff::1")
    assert not policy.allowed("2002:c000:64::")


def test_the_modules_table_matches_the_registries() -> None:
    from stun_turn import _special

    assert (_special.IPV4_REGISTRY_NAME, _special.IPV4_REGISTRY_UPDATED) == IPV4_REGISTRY
    assert (_special.IPV6_REGISTRY_NAME, _special.IPV6_REGISTRY_UPDATED) == IPV6_REGISTRY
    for theirs, ours in (
        (_special.IPV4_REGISTRY, IPV4_NOT_GLOBAL),
        (_special.IPV6_REGISTRY, IPV6_NOT_GLOBAL + IPV6_NOT_APPLICABLE),
    ):
        refused = {b.prefix for b in theirs if b.globally_reachable is not True}
        assert refused == {prefix for prefix, _, _ in ours}


# Hand-written examples of the same, kept from before the registries were transcribed.
FORBIDDEN = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "224.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
    "240.0.0.1",
    "::1",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "ff02::1",
    "::",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:0001::",  # 6to4 of 127.0.0.1
    "2002:c0a8:0101::1",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo of 127.0.0.1 (obfuscated)
    "not an address",
    "",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_forbidden_peers(address: str) -> None:
    assert not PeerPolicy().allowed(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_peers(address: str) -> None:
    assert PeerPolicy().allowed(address)


def test_the_servers_own_addresses_are_forbidden() -> None:
    assert not PeerPolicy(own=["8.8.4.4"]).allowed("::ffff:8.8.4.4")
    assert not PeerPolicy(own=["2606:4700:4700::1001"]).allowed("2606:4700:4700::1001")


def test_explicit_allow_list_for_tests_and_special_deployments() -> None:
    policy = PeerPolicy(allow=["127.0.0.0/8"])
    assert policy.allowed("127.0.0.1")
    assert policy.allowed("::ffff:127.0.0.1")
    assert not policy.allowed("10.0.0.1")
    assert PeerPolicy(allow=["::1/128"]).allowed("::1")


def test_services_are_reachable_port_by_port() -> None:
    policy = PeerPolicy(own=["203.0.113.9"])
    policy.add_service("::ffff:203.0.113.9", 5000)
    assert policy.service("203.0.113.9", 5000)
    assert policy.service("203.0.113.9", None)
    assert not policy.service("203.0.113.9", 5001)
    assert not policy.service("not an address", 5000)
    policy.discard_service("203.0.113.9", 5000)
    assert not policy.service("203.0.113.9", None)


def test_canonical_forms() -> None:
    assert str(canonical("::ffff:10.0.0.1")) == "10.0.0.1"
    assert str(canonical("2002:0a00:0001::")) == "10.0.0.1"
    assert str(canonical("::10.0.0.1")) == "10.0.0.1"
    assert str(canonical("64:ff9b::a00:1")) == "10.0.0.1"
    assert str(canonical("2001:0:4136:e378:8000:63bf:f5ff:fffe")) == "10.0.0.1"
    assert str(canonical("::1")) == "::1"
    assert str(canonical("::")) == "::"
    assert str(canonical("fe80::1%eth0")) == "fe80::1"
