"""The TURN server's state and logic, without sockets or clocks (RFC 8656 over UDP).

:class:`TurnCore` takes datagrams and the current time and returns what to send where. The trio
driver owns the sockets: it opens a relay socket when the core asks (``open_relay``) and closes it
when an output says so. Allocations, permissions (300 s) and channels (600 s) expire by the time
passed in; :meth:`TurnCore.expire` reports what to close.

Unauthenticated requests get the smallest answer that works (no reason phrases, no SOFTWARE),
and no more than ``unauthenticated_answer_bytes`` or the request's own size, whichever is larger,
and at most ``unauthenticated_answers_per_s`` per client address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from ._codec import (
    Attr,
    Class,
    Message,
    Method,
    decode,
    encode,
    is_channel_data,
    pack_error_code,
    pack_unknown_attributes,
    pack_xor_address,
    unpack_xor_address,
    verify_integrity,
)
from ._errors import StunDecodeError

Address = tuple[str, int]
UDP = 17
_CHANNEL_HEADER = struct.Struct("!HH")


class Client(NamedTuple):
    """Where a client speaks from: its transport and address (the 5-tuple, for one listener).

    A UDP datagram and a TCP connection from the same address are different clients: data can
    never reach an allocation over another transport than the one that made it. (A named tuple:
    built and hashed for every datagram, in C.)
    """

    transport: str
    address: Address


class Owner(NamedTuple):
    """Whose a credential is, for the allocation quotas (``TurnCore``'s ``owner_of``)."""

    account: str
    device: str
    quota: int = 0
    """A cap of this credential's own on its allocations (an operator's fixed credential, say),
    instead of ``max_allocations_per_user`` and ``max_allocations_per_device``; 0: those apply.
    ``max_allocations`` applies always."""


@dataclass(frozen=True)
class TurnSettings:
    realm: str = "yggdrasil"
    default_lifetime_s: int = 600
    max_lifetime_s: int = 3600
    permission_lifetime_s: int = 300
    channel_lifetime_s: int = 600
    nonce_lifetime_s: int = 600
    max_allocations: int = 10_000
    max_allocations_per_user: int = 64
    """Per owner (the account behind a credential, see ``TurnCore``'s ``owner_of``)."""
    max_allocations_per_device: int = 16
    unauthenticated_answer_bytes: int = 128
    unauthenticated_answers_per_s: float = 50.0
    allocation_bytes_per_s: float = 4_000_000.0
    """Relayed payload per allocation and second, both directions together; beyond it, drops."""


@dataclass(frozen=True)
class ToClient:
    client: Client
    data: bytes


@dataclass(frozen=True)
class ToPeer:
    relay_id: int
    peer: Address
    data: bytes


@dataclass(frozen=True)
class CloseRelay:
    relay_id: int


Output = ToClient | ToPeer | CloseRelay


@dataclass
class Allocation:
    client: Client
    username: str
    key: bytes
    relay_id: int
    relayed: Address
    expires: float
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, tuple[Address, float]] = field(default_factory=dict)
    channel_of: dict[Address, int] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)
    """Permitted hosts that are the server's own: only their registered service ports pass."""
    last_allocate: tuple[bytes, bytes] | None = None  # (transaction id, response) for retries
    budget: float = 0.0  # bytes that may still be relayed now (a token bucket)
    budget_at: float = 0.0
    due: float = 0.0
    """No earlier than the first of its expiry, its permissions' and its channels' (``expire``
    looks at the allocation only from then on; every change that can make it earlier lowers it)."""


@dataclass
class TurnStats:
    allocations_created: int = 0
    permissions_created: int = 0
    channels_bound: int = 0
    packets_to_peers: int = 0
    packets_to_clients: int = 0
    bytes_to_peers: int = 0
    bytes_to_clients: int = 0
    auth_failures: int = 0
    malformed: int = 0
    dropped_no_permission: int = 0
    dropped_amplification: int = 0
    dropped_bandwidth: int = 0
    refused_peers: int = 0


class TurnCore:
    def __init__(
        self,
        settings: TurnSettings,
        *,
        secret: bytes,
        key_for: Callable[[str, float], bytes | None],
        open_relay: Callable[[int, bool], tuple[int, Address] | None],
        peer_allowed: Callable[[str], bool],
        owner_of: Callable[[str], Owner] = lambda username: Owner(username, username),
        relay_families: frozenset[int] = frozenset({1}),
        service: Callable[[str, int | None], bool] = lambda host, port: False,
    ) -> None:
        """``key_for(username, now)`` is the long-term key of a user, or ``None``;
        ``open_relay(family, even_port)`` binds a relay socket (family 1: IPv4, 2: IPv6) and
        returns its id and address, or ``None`` when no port is free; ``owner_of(username)``
        names the account and the device a credential belongs to, for the quotas (and its own
        quota, if it has one);
        ``relay_families`` are the address families relays can have (440 for the others);
        ``service(host, port)`` says whether a peer ``peer_allowed`` refuses is one of the
        server's own services all the same (``port`` None: any on that host), see
        :class:`PeerPolicy`."""
        self.settings = settings
        self._secret = secret
        self._key_for = key_for
        self._open_relay = open_relay
        self._peer_allowed = peer_allowed
        self._service = service
        self._owner_of = owner_of
        self.relay_families = relay_families
        self.allocations: dict[Client, Allocation] = {}
        self._by_relay: dict[int, Allocation] = {}
        self._per_user: dict[str, int] = {}
        self._per_device: dict[str, int] = {}
        self._answers: dict[str, tuple[float, float]] = {}
        self.stats = TurnStats()
        self._realm = settings.realm.encode()
        self._macs: dict[tuple[bytes, str], bytes] = {}

    # ----------------------------------------------------------------- input

    def handle_client(self, now: float, client: Client, data: bytes) -> list[Output]:
        """A datagram from a client to the server's listening address."""
        if is_channel_data(data):
            return self._channel_data(now, client, data)
        try:
            message = decode(data)
        except StunDecodeError:
            self.stats.malformed += 1
            return []
        if message.cls == Class.INDICATION:
            return (
                self._send_indication(now, client, message) if message.method == Method.SEND else []
            )
        if message.cls != Class.REQUEST:
            return []
        unknown = message.unknown_required()
        if unknown:
            answer = self._error(
                message,
                420,
                attributes=[(Attr.UNKNOWN_ATTRIBUTES, pack_unknown_attributes(unknown))],
            )
            return self._unauthenticated(now, client, data, answer)
        if message.method == Method.BINDING:
            return self._binding(now, client, message, data)
        if message.method not in (
            Method.ALLOCATE,
            Method.REFRESH,
            Method.CREATE_PERMISSION,
            Method.CHANNEL_BIND,
        ):
            return self._unauthenticated(now, client, data, self._error(message, 400))
        key, username, challenge = self._authenticate(now, client, message)
        if challenge is not None:
            return self._unauthenticated(now, client, data, challenge)
        assert key is not None
        assert username is not None
        if message.method == Method.ALLOCATE:
            answer = self._allocate(now, client, message, username, key)
        elif message.method == Method.REFRESH:
            return self._refresh(now, client, message, username, key)
        elif message.method == Method.CREATE_PERMISSION:
            answer = self._create_permission(now, client, message, username, key)
        else:
            answer = self._channel_bind(now, client, message, username, key)
        return [ToClient(client, answer)]

    def handle_peer(self, now: float, relay_id: int, peer: Address, data: bytes) -> list[Output]:
        """A datagram from a peer to a relayed address: to the client, if permitted."""
        relayed = self.peer_to_client(now, relay_id, peer, data)
        return [] if relayed is None else [ToClient(*relayed)]

    def peer_to_client(
        self, now: float, relay_id: int, peer: Address, data: bytes
    ) -> tuple[Client, bytes] | None:
        """:meth:`handle_peer` without the output list: ``(client, frame)`` or ``None``.

        The drivers' hot path; the same checks, counters and frames as :meth:`handle_peer`.
        """
        allocation = self._by_relay.get(relay_id)
        if allocation is None or allocation.expires <= now:
            return None
        if allocation.permissions.get(peer[0], 0.0) <= now:
            self.stats.dropped_no_permission += 1
            return None
        if allocation.services and peer[0] in allocation.services and not self._service(*peer):
            self.stats.refused_peers += 1
            return None
        if not self._spend(allocation, now, len(data)):
            return None
        channel = allocation.channel_of.get(peer)
        if channel is not None and allocation.channels[channel][1] > now:
            frame = _CHANNEL_HEADER.pack(channel, len(data)) + data
        else:
            transaction_id = hashlib.blake2b(
                data[:16] + struct.pack("!d", now), digest_size=12
            ).digest()
            indication = Message(
                Method.DATA,
                Class.INDICATION,
                transaction_id,
                [
                    (Attr.XOR_PEER_ADDRESS, pack_xor_address(peer, transaction_id)),
                    (Attr.DATA, data),
                ],
            )
            frame = encode(indication, fingerprint=False)
        stats = self.stats
        stats.packets_to_clients += 1
        stats.bytes_to_clients += len(data)
        return allocation.client, frame

    def drop_client(self, client: Client) -> list[Output]:
        """The client's connection closed (TCP): its allocation ends with it (RFC 8656 3.1)."""
        if client in self.allocations:
            return [self._remove(client)]
        return []

    def expire(self, now: float) -> list[Output]:
        """Forget what has expired; the relay sockets of ended allocations are to be closed."""
        closed: list[Output] = []
        due = [a for a in self.allocations.values() if a.due <= now]
        for allocation in due:
            if allocation.expires <= now:
                closed.append(self._remove(allocation.client))
                continue
            for peer_ip, until in list(allocation.permissions.items()):
                if until <= now:
                    del allocation.permissions[peer_ip]
            for channel, (peer, until) in list(allocation.channels.items()):
                if until <= now:
                    del allocation.channels[channel]
                    allocation.channel_of.pop(peer, None)
            allocation.due = min(
                (
                    allocation.expires,
                    *allocation.permissions.values(),
                    *(until for _, until in allocation.channels.values()),
                )
            )
        return closed

    def next_deadline(self) -> float | None:
        deadlines = [a.expires for a in self.allocations.values()]
        return min(deadlines) if deadlines else None

    # ----------------------------------------------------------------- requests

    def _binding(self, now: float, client: Client, message: Message, data: bytes) -> list[Output]:
        answer = Message(
            Method.BINDING,
            Class.SUCCESS,
            message.transaction_id,
            [
                (Attr.XOR_MAPPED_ADDRESS, pack_xor_address(client.address, message.transaction_id)),
            ],
        )
        return self._unauthenticated(
            now, client, data, encode(answer, fingerprint=message.has(Attr.FINGERPRINT))
        )

    def _authenticate(
        self, now: float, client: Client, message: Message
    ) -> tuple[bytes | None, str | None, bytes | None]:
        """``(key, username, None)`` for a request whose integrity checks, else a challenge."""
        if not message.has(Attr.MESSAGE_INTEGRITY):
            return None, None, self._challenge(now, client, message, 401)
        username = message.get(Attr.USERNAME)
        realm = message.get(Attr.REALM)
        nonce = message.get(Attr.NONCE)
        if username is None or realm is None or nonce is None:
            return None, None, self._error(message, 400)
        if not self._nonce_valid(now, client, nonce):
            return None, None, self._challenge(now, client, message, 438)
        try:
            name = username.decode()
        except UnicodeDecodeError:
            return None, None, self._error(message, 400)
        key = self._key_for(name, now) if realm == self._realm else None
        if key is None or not verify_integrity(message, key):
            self.stats.auth_failures += 1
            return None, None, self._challenge(now, client, message, 401)
        return key, name, None

    def _allocate(
        self, now: float, client: Client, message: Message, username: str, key: bytes
    ) -> bytes:
        existing = self.allocations.get(client)
        if existing is not None:
            if existing.last_allocate and existing.last_allocate[0] == message.transaction_id:
                return existing.last_allocate[1]  # a retransmission: the same answer
            return self._error(message, 437, key=key)
        transport = message.get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            return self._error(message, 400, key=key)
        if transport[0] != UDP:
            return self._error(message, 442, key=key)
        if message.has(Attr.RESERVATION_TOKEN):
            return self._error(message, 508, key=key)
        even = message.get(Attr.EVEN_PORT)
        if even is not None and even and even[0] & 0x80:
            return self._error(message, 508, key=key)  # port reservations are not offered
        family_value = message.get(Attr.REQUESTED_ADDRESS_FAMILY)
        family = family_value[0] if family_value else 1
        if family not in self.relay_families:
            return self._error(message, 440, key=key)
        user, device, quota = self._owner_of(username)
        if len(self.allocations) >= self.settings.max_allocations or (
            self._per_user.get(user, 0) >= quota
            if quota
            else self._per_user.get(user, 0) >= self.settings.max_allocations_per_user
            or self._per_device.get(device, 0) >= self.settings.max_allocations_per_device
        ):
            return self._error(message, 486, key=key)
        opened = self._open_relay(family, even is not None)
        if opened is None:
            return self._error(message, 508, key=key)
        relay_id, relayed = opened
        lifetime = self._lifetime(message) or self.settings.default_lifetime_s
        allocation = Allocation(client, username, key, relay_id, relayed, now + lifetime)
        allocation.budget, allocation.budget_at = self.settings.allocation_bytes_per_s, now
        self.allocations[client] = allocation
        self._by_relay[relay_id] = allocation
        self._per_user[user] = self._per_user.get(user, 0) + 1
        self._per_device[device] = self._per_device.get(device, 0) + 1
        self.stats.allocations_created += 1
        answer = encode(
            Message(
                Method.ALLOCATE,
                Class.SUCCESS,
                message.transaction_id,
                [
                    (Attr.XOR_RELAYED_ADDRESS, pack_xor_address(relayed, message.transaction_id)),
                    (Attr.LIFETIME, struct.pack("!I", lifetime)),
                    (
                        Attr.XOR_MAPPED_ADDRESS,
                        pack_xor_address(client.address, message.transaction_id),
                    ),
                ],
            ),
            integrity_key=key,
        )
        allocation.last_allocate = (message.transaction_id, answer)
        return answer

    def _refresh(
        self, now: float, client: Client, message: Message, username: str, key: bytes
    ) -> list[Output]:
        allocation = self.allocations.get(client)
        if allocation is None or allocation.expires <= now:
            return [ToClient(client, self._error(message, 437, key=key))]
        if allocation.username != username:
            return [ToClient(client, self._error(message, 441, key=key))]
        lifetime = self._lifetime(message)
        outputs: list[Output] = []
        if lifetime == 0:
            outputs.append(self._remove(client))
        else:
            allocation.expires = now + lifetime
            allocation.due = min(allocation.due, allocation.expires)
        answer = encode(
            Message(
                Method.REFRESH,
                Class.SUCCESS,
                message.transaction_id,
                [
                    (Attr.LIFETIME, struct.pack("!I", lifetime)),
                ],
            ),
            integrity_key=key,
        )
        return [ToClient(client, answer), *outputs]

    def _create_permission(
        self, now: float, client: Client, message: Message, username: str, key: bytes
    ) -> bytes:
        allocation = self._own_allocation(now, client, username)
        if allocation is None:
            return self._error(message, 437, key=key)
        peers = [value for kind, value in message.attributes if kind == Attr.XOR_PEER_ADDRESS]
        if not peers:
            return self._error(message, 400, key=key)
        addresses = []
        services = []
        for value in peers:
            try:
                host, _ = unpack_xor_address(value, message.transaction_id)
            except StunDecodeError:
                return self._error(message, 400, key=key)
            if not self._peer_allowed(host):
                if not self._service(host, None):
                    self.stats.refused_peers += 1
                    return self._error(message, 403, key=key)
                services.append(host)
            if (":" in host) != (":" in allocation.relayed[0]):
                return self._error(message, 443, key=key)  # peer address family mismatch
            addresses.append(host)
        until = now + self.settings.permission_lifetime_s
        for host in addresses:  # all or nothing (RFC 8656 section 9.2)
            allocation.permissions[host] = until
            self.stats.permissions_created += 1
        allocation.due = min(allocation.due, until)
        allocation.services.update(services)
        return encode(
            Message(Method.CREATE_PERMISSION, Class.SUCCESS, message.transaction_id),
            integrity_key=key,
        )

    def _channel_bind(
        self, now: float, client: Client, message: Message, username: str, key: bytes
    ) -> bytes:
        allocation = self._own_allocation(now, client, username)
        if allocation is None:
            return self._error(message, 437, key=key)
        number = message.get(Attr.CHANNEL_NUMBER)
        peer_value = message.get(Attr.XOR_PEER_ADDRESS)
        if number is None or peer_value is None or len(number) != 4:
            return self._error(message, 400, key=key)
        channel = struct.unpack("!H", number[:2])[0]
        try:
            peer = unpack_xor_address(peer_value, message.transaction_id)
        except StunDecodeError:
            return self._error(message, 400, key=key)
        # RFC 8656 narrows channels to 0x4000-0x4FFF; RFC 5766 clients (coturn's among them)
        # still use the old range up to 0x7FFE, and ChannelData decodes either way.
        if not 0x4000 <= channel <= 0x7FFE:
            return self._error(message, 400, key=key)
        bound = allocation.channels.get(channel)
        if (bound is not None and bound[0] != peer) or allocation.channel_of.get(
            peer, channel
        ) != channel:
            return self._error(message, 400, key=key)
        service = False
        if not self._peer_allowed(peer[0]):
            if not self._service(*peer):
                self.stats.refused_peers += 1
                return self._error(message, 403, key=key)
            service = True
        if (":" in peer[0]) != (":" in allocation.relayed[0]):
            return self._error(message, 443, key=key)
        if service:
            allocation.services.add(peer[0])
        allocation.channels[channel] = (peer, now + self.settings.channel_lifetime_s)
        allocation.channel_of[peer] = channel
        allocation.permissions[peer[0]] = now + self.settings.permission_lifetime_s
        allocation.due = min(
            allocation.due,
            now + min(self.settings.channel_lifetime_s, self.settings.permission_lifetime_s),
        )
        self.stats.channels_bound += 1
        return encode(
            Message(Method.CHANNEL_BIND, Class.SUCCESS, message.transaction_id), integrity_key=key
        )

    # ----------------------------------------------------------------- data

    def _send_indication(self, now: float, client: Client, message: Message) -> list[Output]:
        allocation = self.allocations.get(client)
        peer_value = message.get(Attr.XOR_PEER_ADDRESS)
        payload = message.get(Attr.DATA)
        if allocation is None or allocation.expires <= now or peer_value is None or payload is None:
            return []
        try:
            peer = unpack_xor_address(peer_value, message.transaction_id)
        except StunDecodeError:
            return []
        return self._to_peer(now, allocation, peer, payload)

    def _channel_data(self, now: float, client: Client, data: bytes) -> list[Output]:
        relayed = self.channel_to_peer(now, client, data)
        return [] if relayed is None else [ToPeer(*relayed)]

    def channel_to_peer(
        self, now: float, client: Client, data: bytes
    ) -> tuple[int, Address, bytes] | None:
        """ChannelData from a client (``data[0]`` in 0x40-0x7F): ``(relay_id, peer, payload)``
        to send, or ``None`` (dropped, and counted where :meth:`handle_client` counts).

        The drivers' hot path: a struct unpack and dict lookups, no message objects.
        """
        allocation = self.allocations.get(client)
        if allocation is None:
            return None
        if len(data) < 4:
            self.stats.malformed += 1
            return None
        channel, length = _CHANNEL_HEADER.unpack_from(data)
        if length > len(data) - 4:
            self.stats.malformed += 1
            return None
        bound = allocation.channels.get(channel)
        if bound is None or bound[1] <= now:
            return None
        peer = bound[0]
        if allocation.permissions.get(peer[0], 0.0) <= now:
            self.stats.dropped_no_permission += 1
            return None
        if allocation.services and peer[0] in allocation.services and not self._service(*peer):
            self.stats.refused_peers += 1
            return None
        if not self._spend(allocation, now, length):
            return None
        stats = self.stats
        stats.packets_to_peers += 1
        stats.bytes_to_peers += length
        return allocation.relay_id, peer, data[4 : 4 + length]

    def _to_peer(
        self, now: float, allocation: Allocation, peer: Address, payload: bytes
    ) -> list[Output]:
        if allocation.permissions.get(peer[0], 0.0) <= now:
            self.stats.dropped_no_permission += 1
            return []
        if allocation.services and peer[0] in allocation.services and not self._service(*peer):
            self.stats.refused_peers += 1
            return []
        if not self._spend(allocation, now, len(payload)):
            return []
        self.stats.packets_to_peers += 1
        self.stats.bytes_to_peers += len(payload)
        return [ToPeer(allocation.relay_id, peer, payload)]

    # ----------------------------------------------------------------- helpers

    def _spend(self, allocation: Allocation, now: float, size: int) -> bool:
        """Take ``size`` bytes from the allocation's bandwidth budget, or drop (and count)."""
        rate = self.settings.allocation_bytes_per_s
        budget = min(rate, allocation.budget + max(0.0, now - allocation.budget_at) * rate)
        allocation.budget_at = now
        if budget < size:
            allocation.budget = budget
            self.stats.dropped_bandwidth += 1
            return False
        allocation.budget = budget - size
        return True

    def _own_allocation(self, now: float, client: Client, username: str) -> Allocation | None:
        allocation = self.allocations.get(client)
        if allocation is None or allocation.expires <= now or allocation.username != username:
            return None
        return allocation

    def _lifetime(self, message: Message) -> int:
        """0 deletes; otherwise the request's wish, within [default, max] (RFC 8656 7.2)."""
        value = message.get(Attr.LIFETIME)
        if value is None or len(value) != 4:
            return self.settings.default_lifetime_s
        requested: int = struct.unpack("!I", value)[0]
        if requested == 0:
            return 0
        return max(self.settings.default_lifetime_s, min(requested, self.settings.max_lifetime_s))

    def _remove(self, client: Client) -> CloseRelay:
        allocation = self.allocations.pop(client)
        self._by_relay.pop(allocation.relay_id, None)
        user, device, _ = self._owner_of(allocation.username)
        for counts, owner in ((self._per_user, user), (self._per_device, device)):
            count = counts.get(owner, 1) - 1
            if count <= 0:
                counts.pop(owner, None)
            else:
                counts[owner] = count
        return CloseRelay(allocation.relay_id)

    def _error(
        self,
        message: Message,
        code: int,
        *,
        key: bytes | None = None,
        attributes: list[tuple[int, bytes]] | None = None,
    ) -> bytes:
        answer = Message(
            message.method,
            Class.ERROR,
            message.transaction_id,
            [
                (Attr.ERROR_CODE, pack_error_code(code, "")),
                *(attributes or []),
            ],
        )
        return encode(answer, integrity_key=key, fingerprint=message.has(Attr.FINGERPRINT))

    def _challenge(self, now: float, client: Client, message: Message, code: int) -> bytes:
        return self._error(
            message,
            code,
            attributes=[
                (Attr.REALM, self._realm),
                (Attr.NONCE, self._nonce(now, client)),
            ],
        )

    def _nonce(self, now: float, client: Client) -> bytes:
        stamp = struct.pack("!I", int(now))
        return base64.urlsafe_b64encode(stamp + self._nonce_mac(stamp, client.address[0]))

    def _nonce_mac(self, stamp: bytes, host: str) -> bytes:
        """HMAC-SHA256 of a nonce's time stamp and the client's host, the first 8 bytes:
        remembered, since every Allocate asks for one and checks it again (bounded memory)."""
        macs = self._macs
        mac = macs.get((stamp, host))
        if mac is None:
            if len(macs) >= 4096:
                macs.clear()
            mac = macs[stamp, host] = hmac.digest(self._secret, stamp + host.encode(), "sha256")[:8]
        return mac

    def _nonce_valid(self, now: float, client: Client, nonce: bytes) -> bool:
        if len(nonce) != 16:  # the base64 of 12 bytes
            return False
        try:
            raw = base64.urlsafe_b64decode(nonce)
        except ValueError:
            return False
        if len(raw) != 12:
            return False
        (issued,) = struct.unpack("!I", raw[:4])
        if not 0 <= now - issued <= self.settings.nonce_lifetime_s:
            return False
        return hmac.compare_digest(self._nonce_mac(raw[:4], client.address[0]), raw[4:])

    def _unauthenticated(
        self, now: float, client: Client, request: bytes, answer: bytes
    ) -> list[Output]:
        """Bound what an unauthenticated request can make us send (reflection amplification)."""
        if len(answer) > max(len(request), self.settings.unauthenticated_answer_bytes):
            self.stats.dropped_amplification += 1
            return []
        tokens, stamp = self._answers.get(
            client.address[0], (self.settings.unauthenticated_answers_per_s, now)
        )
        rate = self.settings.unauthenticated_answers_per_s
        tokens = min(rate, tokens + max(0.0, now - stamp) * rate)
        if tokens < 1:
            self._answers[client.address[0]] = (tokens, now)
            self.stats.dropped_amplification += 1
            return []
        self._answers[client.address[0]] = (tokens - 1, now)
        if len(self._answers) > 100_000:
            self._answers.clear()  # bounded memory; a forgotten address starts with a full bucket
        return [ToClient(client, answer)]
