"""The peer deny list, with every way to write a forbidden address."""

from __future__ import annotations

import pytest

from stun_turn._policy import PeerPolicy, canonical

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


def test_explicit_allow_list_for_tests_and_special_deployments() -> None:
    policy = PeerPolicy(allow=["127.0.0.0/8"])
    assert policy.allowed("127.0.0.1")
    assert policy.allowed("::ffff:127.0.0.1")
    assert not policy.allowed("10.0.0.1")


def test_canonical_forms() -> None:
    assert str(canonical("::ffff:10.0.0.1")) == "10.0.0.1"
    assert str(canonical("2002:0a00:0001::")) == "10.0.0.1"
