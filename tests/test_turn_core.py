"""The TURN core, sans-IO: time is a number, sockets are a dict, every answer is inspected."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest

from stun_turn import (
    Attr,
    Class,
    Client,
    CloseRelay,
    Message,
    Method,
    Owner,
    PeerPolicy,
    ToClient,
    ToPeer,
    TurnCore,
    TurnSettings,
    decode,
    encode,
    encode_channel_data,
    long_term_key,
    pack_xor_address,
    unpack_error_code,
    unpack_xor_address,
)

CLIENT = Client("udp", ("198.51.100.7", 40000))
PEER = ("93.184.216.34", 5000)
REALM = "yggdrasil"
KEY = long_term_key("alice", REALM, "secret")


class Relays:
    def __init__(self) -> None:
        self.opened: list[tuple[int, bool]] = []
        self.next = 0

    def open(self, family: int, even: bool) -> tuple[int, tuple[str, int]] | None:
        self.opened.append((family, even))
        self.next += 1
        return self.next, ("192.0.2.1", 50000 + 2 * self.next)


def make(**settings: object) -> tuple[TurnCore, Relays]:
    relays = Relays()
    core = TurnCore(
        TurnSettings(realm=REALM, **settings),  # type: ignore[arg-type]
        secret=b"s" * 32,
        key_for=lambda user, now: KEY if user == "alice" else None,
        open_relay=relays.open,
        peer_allowed=PeerPolicy().allowed,
    )
    return core, relays


def tid(n: int) -> bytes:
    return n.to_bytes(12, "big")


def answer(outputs: Sequence[object]) -> Message:
    assert len(outputs) >= 1
    first = outputs[0]
    assert isinstance(first, ToClient)
    return decode(first.data)


def error_of(message: Message) -> int:
    value = message.get(Attr.ERROR_CODE)
    assert value is not None
    return unpack_error_code(value)[0]


def request(
    method: int,
    n: int,
    attributes: Sequence[tuple[int, bytes]],
    *,
    nonce: bytes | None,
    key: bytes | None = KEY,
) -> bytes:
    attrs = list(attributes)
    if nonce is not None:
        attrs += [(Attr.USERNAME, b"alice"), (Attr.REALM, REALM.encode()), (Attr.NONCE, nonce)]
    return encode(
        Message(method, Class.REQUEST, tid(n), attrs), integrity_key=key if nonce else None
    )


UDP = [(Attr.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))]


def challenge(core: TurnCore, now: float = 100.0) -> bytes:
    # Large enough a request for the 401 to be answered (no amplification).
    reply = answer(
        core.handle_client(
            now, CLIENT, request(Method.ALLOCATE, 1, [*UDP, (Attr.SOFTWARE, b"x" * 64)], nonce=None)
        )
    )
    assert error_of(reply) == 401
    assert reply.get(Attr.REALM) == REALM.encode()
    nonce = reply.get(Attr.NONCE)
    assert nonce is not None
    return nonce


def allocate(core: TurnCore, now: float = 100.0) -> tuple[str, int]:
    nonce = challenge(core, now)
    reply = answer(core.handle_client(now, CLIENT, request(Method.ALLOCATE, 2, UDP, nonce=nonce)))
    assert reply.cls == Class.SUCCESS, error_of(reply)
    relayed = reply.get(Attr.XOR_RELAYED_ADDRESS)
    assert relayed is not None
    return unpack_xor_address(relayed, tid(2))


def test_binding_answers_with_the_mapped_address() -> None:
    core, _ = make()
    data = encode(Message(Method.BINDING, Class.REQUEST, tid(9), [(Attr.SOFTWARE, b"probe" * 4)]))
    reply = answer(core.handle_client(1.0, CLIENT, data))
    assert reply.cls == Class.SUCCESS
    mapped = reply.get(Attr.XOR_MAPPED_ADDRESS)
    assert mapped is not None
    assert unpack_xor_address(mapped, tid(9)) == CLIENT.address


def test_a_tiny_unauthenticated_request_gets_no_larger_answer_than_allowed() -> None:
    core, _ = make(unauthenticated_answer_bytes=20)
    bare = encode(Message(Method.BINDING, Class.REQUEST, tid(1)), fingerprint=False)
    assert core.handle_client(1.0, CLIENT, bare) == []
    assert core.stats.dropped_amplification == 1


def test_unauthenticated_answers_are_rate_limited_per_address() -> None:
    core, _ = make(unauthenticated_answers_per_s=5.0)
    data = encode(Message(Method.BINDING, Class.REQUEST, tid(1), [(Attr.SOFTWARE, b"x" * 40)]))
    answered = sum(bool(core.handle_client(1.0, CLIENT, data)) for _ in range(20))
    assert answered == 5
    assert core.handle_client(
        1.0, Client("udp", ("198.51.100.8", 1)), data
    )  # another address is unaffected


def test_allocation_with_long_term_credentials() -> None:
    core, relays = make()
    relayed = allocate(core)
    assert relayed[0] == "192.0.2.1"
    assert relays.opened == [(1, False)]
    assert core.stats.allocations_created == 1


def test_wrong_credentials_stale_nonces_and_bad_realms_are_challenged() -> None:
    core, _ = make()
    nonce = challenge(core)
    wrong = request(
        Method.ALLOCATE, 3, UDP, nonce=nonce, key=long_term_key("alice", REALM, "guess")
    )
    assert error_of(answer(core.handle_client(100.0, CLIENT, wrong))) == 401
    assert core.stats.auth_failures == 1
    later = request(Method.ALLOCATE, 4, UDP, nonce=nonce)
    assert error_of(answer(core.handle_client(100.0 + 601, CLIENT, later))) == 438
    other_address = request(Method.ALLOCATE, 5, UDP, nonce=nonce)
    assert (
        error_of(
            answer(core.handle_client(100.0, Client("udp", ("198.51.100.99", 1)), other_address))
        )
        == 438
    )
    forged = request(Method.ALLOCATE, 6, UDP, nonce=b"AAAAAAAAAAAAAAAA")
    assert error_of(answer(core.handle_client(100.0, CLIENT, forged))) == 438


def test_allocate_twice_is_a_mismatch_but_a_retransmission_is_answered_again() -> None:
    core, _ = make()
    nonce = challenge(core)
    first = core.handle_client(100.0, CLIENT, request(Method.ALLOCATE, 2, UDP, nonce=nonce))
    again = core.handle_client(100.5, CLIENT, request(Method.ALLOCATE, 2, UDP, nonce=nonce))
    assert first == again
    other = core.handle_client(101.0, CLIENT, request(Method.ALLOCATE, 3, UDP, nonce=nonce))
    assert error_of(answer(other)) == 437


def test_tcp_relays_and_reservations_are_refused() -> None:
    core, _ = make()
    nonce = challenge(core)
    tcp = [(Attr.REQUESTED_TRANSPORT, bytes([6, 0, 0, 0]))]
    assert (
        error_of(
            answer(core.handle_client(100.0, CLIENT, request(Method.ALLOCATE, 2, tcp, nonce=nonce)))
        )
        == 442
    )
    reserve = [*UDP, (Attr.EVEN_PORT, b"\x80")]
    assert (
        error_of(
            answer(
                core.handle_client(100.0, CLIENT, request(Method.ALLOCATE, 3, reserve, nonce=nonce))
            )
        )
        == 508
    )


def test_permissions_channels_and_data_in_both_directions() -> None:
    core, _ = make()
    allocate(core)
    nonce = challenge(core)
    # Without a permission nothing passes.
    send = encode(
        Message(
            Method.SEND,
            Class.INDICATION,
            tid(7),
            [
                (Attr.XOR_PEER_ADDRESS, pack_xor_address(PEER, tid(7))),
                (Attr.DATA, b"hi"),
            ],
        )
    )
    assert core.handle_client(101.0, CLIENT, send) == []
    assert core.handle_peer(101.0, 1, PEER, b"in") == []
    permit = [(Attr.XOR_PEER_ADDRESS, pack_xor_address(PEER, tid(8)))]
    assert (
        answer(
            core.handle_client(
                101.0, CLIENT, request(Method.CREATE_PERMISSION, 8, permit, nonce=nonce)
            )
        ).cls
        == Class.SUCCESS
    )
    assert core.handle_client(101.0, CLIENT, send) == [ToPeer(1, PEER, b"hi")]
    data = answer(core.handle_peer(101.0, 1, PEER, b"back"))
    assert (data.method, data.cls, data.get(Attr.DATA)) == (Method.DATA, Class.INDICATION, b"back")
    # Channels: bound, then ChannelData both ways.
    bind = [
        (Attr.CHANNEL_NUMBER, struct.pack("!HH", 0x4001, 0)),
        (Attr.XOR_PEER_ADDRESS, pack_xor_address(PEER, tid(10))),
    ]
    assert (
        answer(
            core.handle_client(102.0, CLIENT, request(Method.CHANNEL_BIND, 10, bind, nonce=nonce))
        ).cls
        == Class.SUCCESS
    )
    assert core.handle_client(102.0, CLIENT, encode_channel_data(0x4001, b"fast")) == [
        ToPeer(1, PEER, b"fast")
    ]
    out = core.handle_peer(102.0, 1, PEER, b"fast back")
    assert isinstance(out[0], ToClient)
    assert out[0].data == encode_channel_data(0x4001, b"fast back")
    # The permission expires after 300 s unless refreshed.
    core.expire(102.0 + 301)
    assert core.handle_peer(102.0 + 301, 1, PEER, b"late") == []


def test_forbidden_peers_are_refused() -> None:
    core, _ = make()
    allocate(core)
    nonce = challenge(core)
    for peer in (("127.0.0.1", 80), ("169.254.169.254", 80), ("::ffff:10.0.0.1", 80)):
        permit = [(Attr.XOR_PEER_ADDRESS, pack_xor_address(peer, tid(11)))]
        reply = answer(
            core.handle_client(
                101.0, CLIENT, request(Method.CREATE_PERMISSION, 11, permit, nonce=nonce)
            )
        )
        assert error_of(reply) == 403
    assert core.stats.refused_peers == 3


def test_refresh_to_zero_deletes_and_expiry_closes_relays() -> None:
    core, _ = make()
    allocate(core)
    nonce = challenge(core)
    zero = [(Attr.LIFETIME, struct.pack("!I", 0))]
    out = core.handle_client(101.0, CLIENT, request(Method.REFRESH, 12, zero, nonce=nonce))
    assert answer(out).cls == Class.SUCCESS
    assert CloseRelay(1) in out
    assert core.allocations == {}
    allocate(core, now=200.0)
    assert core.expire(200.0 + 599) == []
    assert core.expire(200.0 + 601) == [CloseRelay(2)]


def test_quotas() -> None:
    core, _ = make(max_allocations_per_user=1)
    allocate(core)
    nonce = challenge(core)
    reply = answer(
        core.handle_client(
            100.0,
            Client("udp", ("198.51.100.7", 40001)),
            request(Method.ALLOCATE, 20, UDP, nonce=nonce),
        )
    )
    # The nonce is bound to the client's IP address, which is the same here.
    assert error_of(reply) == 486


def test_unknown_comprehension_required_attributes_get_420() -> None:
    core, _ = make()
    data = encode(Message(Method.ALLOCATE, Class.REQUEST, tid(30), [(0x7ABC, b"?" * 40)]))
    reply = answer(core.handle_client(1.0, CLIENT, data))
    assert error_of(reply) == 420
    assert reply.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x7a\xbc"


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 19, b"\xff" * 40, b"\x40\x01\x00\x10abc"])
def test_garbage_is_dropped(garbage: bytes) -> None:
    core, _ = make()
    assert core.handle_client(1.0, CLIENT, garbage) == []


def test_a_tcp_allocation_is_not_reachable_over_udp_and_ends_with_its_connection() -> None:
    core, _ = make()
    tcp = Client("tcp", CLIENT.address)
    reply = answer(
        core.handle_client(
            100.0, tcp, request(Method.ALLOCATE, 1, [*UDP, (Attr.SOFTWARE, b"x" * 64)], nonce=None)
        )
    )
    nonce = reply.get(Attr.NONCE)
    assert nonce is not None
    assert (
        answer(core.handle_client(100.0, tcp, request(Method.ALLOCATE, 2, UDP, nonce=nonce))).cls
        == Class.SUCCESS
    )
    permit = [(Attr.XOR_PEER_ADDRESS, pack_xor_address(PEER, tid(3)))]
    core.handle_client(100.0, tcp, request(Method.CREATE_PERMISSION, 3, permit, nonce=nonce))
    send = encode(
        Message(
            Method.SEND,
            Class.INDICATION,
            tid(4),
            [
                (Attr.XOR_PEER_ADDRESS, pack_xor_address(PEER, tid(4))),
                (Attr.DATA, b"spoofed"),
            ],
        )
    )
    # The same address over UDP (a spoofed datagram, say) is another client: nothing is relayed.
    assert core.handle_client(100.0, CLIENT, send) == []
    assert core.handle_client(100.0, tcp, send) == [ToPeer(1, PEER, b"spoofed")]
    assert core.drop_client(tcp) == [CloseRelay(1)]
    assert core.allocations == {}


def test_bandwidth_per_allocation_is_limited() -> None:
    core, _ = make(allocation_bytes_per_s=1000.0)
    allocate(core)
    nonce = challenge(core)
    permit = [(Attr.XOR_PEER_ADDRESS, pack_xor_address(PEER, tid(8)))]
    core.handle_client(101.0, CLIENT, request(Method.CREATE_PERMISSION, 8, permit, nonce=nonce))
    relayed = [core.handle_peer(101.0, 1, PEER, b"x" * 300) for _ in range(5)]
    assert sum(bool(out) for out in relayed) == 3  # 900 of the 1000 bytes of one second
    assert core.stats.dropped_bandwidth == 2
    assert core.handle_peer(102.0, 1, PEER, b"x" * 300)  # a second later there is room again


def owned_core(quotas: dict[str, int] | None = None, **settings: object) -> TurnCore:
    """Any username ``user.device`` is valid (password "secret"); quotas count by its parts, and
    the accounts in ``quotas`` have a quota of their own."""
    own = quotas or {}

    def owner_of(username: str) -> Owner:
        account = username.split(".")[0]
        return Owner(account, username, own.get(account, 0))

    return TurnCore(
        TurnSettings(realm=REALM, **settings),  # type: ignore[arg-type]
        secret=b"s" * 32,
        key_for=lambda user, now: long_term_key(user, REALM, "secret"),
        open_relay=Relays().open,
        peer_allowed=PeerPolicy().allowed,
        owner_of=owner_of,
    )


def allocate_as(core: TurnCore, username: str, port: int, now: float = 100.0) -> int:
    """Allocate from client port ``port`` as ``username``: 0 on success, else the error code."""
    client = Client("udp", ("198.51.100.7", port))
    first = answer(
        core.handle_client(
            now, client, request(Method.ALLOCATE, 1, [*UDP, (Attr.SOFTWARE, b"x" * 64)], nonce=None)
        )
    )
    nonce = first.get(Attr.NONCE)
    key = long_term_key(username, REALM, "secret")
    attrs: list[tuple[int, bytes]] = [
        *UDP,
        (Attr.USERNAME, username.encode()),
        (Attr.REALM, REALM.encode()),
        (Attr.NONCE, nonce or b""),
    ]
    data = encode(Message(Method.ALLOCATE, Class.REQUEST, tid(2), attrs), integrity_key=key)
    reply = answer(core.handle_client(now, client, data))
    return 0 if reply.cls == Class.SUCCESS else error_of(reply)


def test_quotas_count_per_device_and_per_account_whatever_the_credential() -> None:
    core = owned_core(max_allocations_per_device=1, max_allocations_per_user=2)
    assert allocate_as(core, "ann.laptop", 1) == 0
    assert allocate_as(core, "ann.laptop", 2) == 486  # the device's one allocation is in use
    assert allocate_as(core, "ann.phone", 3) == 0
    assert allocate_as(core, "ann.tablet", 4) == 486  # the account's two are in use
    assert allocate_as(core, "bob.laptop", 5) == 0  # another account is not affected
    # Releasing one of Ann's allocations makes room for her again.
    for client, allocation in list(core.allocations.items()):
        if allocation.username == "ann.phone":
            core.handle_client(
                101.0,
                client,
                encode(
                    Message(
                        Method.REFRESH,
                        Class.REQUEST,
                        tid(7),
                        [
                            (Attr.LIFETIME, struct.pack("!I", 0)),
                            (Attr.USERNAME, b"ann.phone"),
                            (Attr.REALM, REALM.encode()),
                            (Attr.NONCE, core_nonce(core, client)),
                        ],
                    ),
                    integrity_key=long_term_key("ann.phone", REALM, "secret"),
                ),
            )
    assert allocate_as(core, "ann.tablet", 4, now=102.0) == 0


def test_a_credential_with_a_quota_of_its_own_is_capped_by_it_and_by_the_total() -> None:
    core = owned_core(
        {"op": 5}, max_allocations_per_device=1, max_allocations_per_user=2, max_allocations=7
    )
    # One operator credential holds five allocations, past the device's one and the account's two.
    assert [allocate_as(core, "op.bench", port) for port in range(1, 7)] == [0] * 5 + [486]
    assert allocate_as(core, "ann.laptop", 10) == 0  # the others keep their own quotas
    assert allocate_as(core, "ann.laptop", 11) == 486
    assert allocate_as(core, "bob.laptop", 12) == 0
    assert allocate_as(core, "eve.laptop", 13) == 486  # seven in all: the total caps everyone
    assert len(core.allocations) == 7
    # Releasing them all gives the operator its five again.
    for client in list(core.allocations):
        core.drop_client(client)
    assert [allocate_as(core, "op.bench", port) for port in range(20, 26)] == [0] * 5 + [486]


def core_nonce(core: TurnCore, client: Client) -> bytes:
    first = answer(
        core.handle_client(
            101.0,
            client,
            request(Method.ALLOCATE, 9, [*UDP, (Attr.SOFTWARE, b"x" * 64)], nonce=None),
        )
    )
    nonce = first.get(Attr.NONCE)
    assert nonce is not None
    return nonce


IPV6 = [(Attr.REQUESTED_ADDRESS_FAMILY, bytes([2, 0, 0, 0]))]


def test_ipv6_relays_only_where_configured_and_only_to_ipv6_peers() -> None:
    core, relays = make()
    nonce = challenge(core)
    reply = answer(
        core.handle_client(100.0, CLIENT, request(Method.ALLOCATE, 2, [*UDP, *IPV6], nonce=nonce))
    )
    assert error_of(reply) == 440  # IPv4 relays only
    assert relays.opened == []

    class Dual(Relays):
        def open(self, family: int, even: bool) -> tuple[int, tuple[str, int]] | None:
            self.opened.append((family, even))
            self.next += 1
            return self.next, ("2001:db8::7" if family == 2 else "192.0.2.1", 50000 + self.next)

    dual = Dual()
    core = TurnCore(
        TurnSettings(realm=REALM),
        secret=b"s" * 32,
        key_for=lambda user, now: KEY if user == "alice" else None,
        open_relay=dual.open,
        peer_allowed=PeerPolicy().allowed,
        relay_families=frozenset({1, 2}),
    )
    nonce = challenge(core)
    reply = answer(
        core.handle_client(100.0, CLIENT, request(Method.ALLOCATE, 2, [*UDP, *IPV6], nonce=nonce))
    )
    assert reply.cls == Class.SUCCESS
    relayed = reply.get(Attr.XOR_RELAYED_ADDRESS)
    assert relayed is not None
    assert unpack_xor_address(relayed, tid(2)) == ("2001:db8::7", 50001)
    assert dual.opened == [(2, False)]

    v6_peer = ("2606:4700::1111", 443)
    for peer, expected in ((PEER, 443), (v6_peer, 0)):
        permit = [(Attr.XOR_PEER_ADDRESS, pack_xor_address(peer, tid(3)))]
        reply = answer(
            core.handle_client(
                101.0, CLIENT, request(Method.CREATE_PERMISSION, 3, permit, nonce=nonce)
            )
        )
        assert (0 if reply.cls == Class.SUCCESS else error_of(reply)) == expected
    assert core.handle_client(
        102.0,
        CLIENT,
        encode(
            Message(
                Method.SEND,
                Class.INDICATION,
                tid(4),
                [
                    (Attr.XOR_PEER_ADDRESS, pack_xor_address(v6_peer, tid(4))),
                    (Attr.DATA, b"hi"),
                ],
            )
        ),
    ) == [ToPeer(1, v6_peer, b"hi")]


def test_the_servers_own_services_are_reachable_port_by_port_and_nothing_else() -> None:
    own = "203.0.113.9"  # the server's own (public) address
    policy = PeerPolicy(own=[own])
    core = TurnCore(
        TurnSettings(realm=REALM),
        secret=b"s" * 32,
        key_for=lambda user, now: KEY if user == "alice" else None,
        open_relay=Relays().open,
        peer_allowed=policy.allowed,
        service=policy.service,
    )
    allocate(core)
    nonce = challenge(core)

    def permit(n: int) -> int:
        attrs = [(Attr.XOR_PEER_ADDRESS, pack_xor_address((own, 5000), tid(n)))]
        reply = answer(
            core.handle_client(
                101.0, CLIENT, request(Method.CREATE_PERMISSION, n, attrs, nonce=nonce)
            )
        )
        return 0 if reply.cls == Class.SUCCESS else error_of(reply)

    def send(port: int) -> list[object]:
        data = encode(
            Message(
                Method.SEND,
                Class.INDICATION,
                tid(40 + port % 10),
                [
                    (Attr.XOR_PEER_ADDRESS, pack_xor_address((own, port), tid(40 + port % 10))),
                    (Attr.DATA, b"x"),
                ],
            )
        )
        return list(core.handle_client(102.0, CLIENT, data))

    assert permit(31) == 403  # the server's own address, no service registered
    policy.add_service(own, 5000)  # say, a WebRTC session's ICE socket
    assert permit(32) == 0
    assert send(5000) == [ToPeer(1, (own, 5000), b"x")]
    assert send(5001) == []  # another port of the server: refused
    assert core.handle_peer(102.0, 1, (own, 5000), b"back") != []
    assert core.handle_peer(102.0, 1, (own, 22), b"from ssh?") == []
    policy.discard_service(own, 5000)  # the session ended
    assert send(5000) == []
    assert core.handle_peer(102.0, 1, (own, 5000), b"late") == []
