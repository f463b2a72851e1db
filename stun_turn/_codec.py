"""STUN (RFC 8489) and TURN (RFC 8656) messages, without sockets: bytes in, messages out.

The decoder is strict, as a server must be: a wrong magic cookie, a length that is not the
datagram's, an attribute that runs past the end or lacks its padding, a second MESSAGE-INTEGRITY,
or anything but MESSAGE-INTEGRITY-SHA256 and FINGERPRINT after MESSAGE-INTEGRITY (RFC 8489
section 14.5) raises :class:`StunDecodeError`. Attributes stay raw bytes until asked for, so that
unknown ones survive for the 420 answer and integrity is computed over the bytes as received.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from ._errors import StunDecodeError

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
HEADER = struct.Struct("!HHI12s")
ATTRIBUTE_HEADER = struct.Struct("!HH")
CHANNEL_HEADER = struct.Struct("!HH")
FINGERPRINT_XOR = 0x5354554E
MAX_MESSAGE_BYTES = 65535 + 20


class Method(enum.IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Class(enum.IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Attr(enum.IntEnum):
    """The attributes this server knows (RFC 8489 section 18.3, RFC 8656 section 18)."""

    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    CACHE_TIMEOUT = 0x8027
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


KNOWN_ATTRIBUTES = frozenset(int(a) for a in Attr)
_CLASSES = tuple(Class(value) for value in range(4))
# Plain ints for the decoder's loop (an enum member costs an attribute lookup each time).
_MI, _MI_SHA256, _FINGERPRINT = (
    int(Attr.MESSAGE_INTEGRITY),
    int(Attr.MESSAGE_INTEGRITY_SHA256),
    int(Attr.FINGERPRINT),
)
_XOR_V4 = struct.Struct("!xBHI")


def comprehension_required(attribute_type: int) -> bool:
    """Types 0x0000-0x7FFF must be understood (RFC 8489 section 14)."""
    return attribute_type < 0x8000


@dataclass
class Message:
    method: int
    cls: Class
    transaction_id: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)
    integrity_offset: int | None = None
    """Where MESSAGE-INTEGRITY starts in the decoded bytes (for verification)."""
    raw: bytes = b""

    def get(self, attribute: int) -> bytes | None:
        """The first value of ``attribute``; later duplicates are ignored (RFC 8489 section 14)."""
        for kind, value in self.attributes:
            if kind == attribute:
                return value
        return None

    def has(self, attribute: int) -> bool:
        return self.get(attribute) is not None

    def unknown_required(self) -> list[int]:
        return sorted(
            {
                kind
                for kind, _ in self.attributes
                if kind < 0x8000 and kind not in KNOWN_ATTRIBUTES  # comprehension-required
            }
        )


def _message_type(method: int, cls: int) -> int:
    # RFC 8489 section 5: the class bits are interleaved with the method bits.
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def _split_type(message_type: int) -> tuple[int, int]:
    method = (
        (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    )
    cls = ((message_type & 0x0010) >> 4) | ((message_type & 0x0100) >> 7)
    return method, cls


def is_stun(data: bytes | bytearray | memoryview) -> bool:
    """Whether a datagram looks like STUN (first two bits zero, magic cookie) - cheap demux."""
    return len(data) >= 20 and data[0] < 0x40 and bytes(data[4:8]) == _COOKIE_BYTES


def decode(data: bytes) -> Message:
    """One STUN message from exactly ``data``; :class:`StunDecodeError` for anything else."""
    if len(data) < 20:
        raise StunDecodeError("shorter than a STUN header")
    if len(data) > MAX_MESSAGE_BYTES:
        raise StunDecodeError("longer than any STUN message")
    message_type, length, cookie, transaction_id = HEADER.unpack_from(data)
    if message_type & 0xC000:
        raise StunDecodeError("the first two bits of a STUN message are zero")
    if cookie != MAGIC_COOKIE:
        raise StunDecodeError("wrong magic cookie")
    if length % 4 or length != len(data) - 20:
        raise StunDecodeError("the length field does not match the message")
    method, cls = _split_type(message_type)
    message = Message(method, _CLASSES[cls], transaction_id, raw=data)
    offset = 20
    seen_integrity = seen_sha256 = seen_fingerprint = False
    while offset < len(data):
        if len(data) - offset < 4:
            raise StunDecodeError("truncated attribute header")
        kind, size = ATTRIBUTE_HEADER.unpack_from(data, offset)
        start = offset + 4
        end = start + size
        padded = start + ((size + 3) & ~3)
        if padded > len(data):
            raise StunDecodeError("attribute runs past the end of the message")
        if seen_fingerprint:
            raise StunDecodeError("FINGERPRINT must be the last attribute")
        if seen_sha256 and kind != _FINGERPRINT:
            raise StunDecodeError("only FINGERPRINT may follow MESSAGE-INTEGRITY-SHA256")
        if seen_integrity and kind != _MI_SHA256 and kind != _FINGERPRINT:
            raise StunDecodeError("only FINGERPRINT may follow MESSAGE-INTEGRITY")
        value = data[start:end]
        if kind == _MI:
            if size != 20:
                raise StunDecodeError("MESSAGE-INTEGRITY is 20 bytes")
            seen_integrity = True
            message.integrity_offset = offset
        elif kind == _MI_SHA256:
            if size < 16 or size > 32 or size % 4:
                raise StunDecodeError("MESSAGE-INTEGRITY-SHA256 has a bad length")
            seen_sha256 = True
        elif kind == _FINGERPRINT:
            if size != 4:
                raise StunDecodeError("FINGERPRINT is 4 bytes")
            expected = (binascii.crc32(data[:offset]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if struct.unpack("!I", value)[0] != expected:
                raise StunDecodeError("FINGERPRINT does not match")
            seen_fingerprint = True
        message.attributes.append((kind, value))
        offset = padded
    return message


def _integrity(data: bytes, key: bytes) -> bytes:
    return hmac.digest(key, data, "sha1")


def verify_integrity(message: Message, key: bytes) -> bool:
    """Whether MESSAGE-INTEGRITY is right for ``key`` (RFC 8489 section 14.5)."""
    offset = message.integrity_offset
    if offset is None:
        return False
    data = message.raw
    # The length field counts up to and including MESSAGE-INTEGRITY.
    header = data[:2] + struct.pack("!H", offset + 24 - 20) + data[4:20]
    expected = _integrity(header + data[20:offset], key)
    return hmac.compare_digest(expected, data[offset + 4 : offset + 24])


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username ":" realm ":" password), RFC 8489 section 9.2.2 (after OpaqueString)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode(), usedforsecurity=False).digest()


def encode(
    message: Message, *, integrity_key: bytes | None = None, fingerprint: bool = True
) -> bytes:
    """The wire form; MESSAGE-INTEGRITY (with ``integrity_key``) and FINGERPRINT are added."""
    body = bytearray()
    for kind, value in message.attributes:
        if kind in (_MI, _FINGERPRINT):
            continue
        body += ATTRIBUTE_HEADER.pack(kind, len(value)) + value + b"\x00" * (-len(value) % 4)
    message_type = _message_type(message.method, message.cls)
    if integrity_key is not None:
        header = HEADER.pack(message_type, len(body) + 24, MAGIC_COOKIE, message.transaction_id)
        body += ATTRIBUTE_HEADER.pack(_MI, 20)
        body += _integrity(header + bytes(body[:-4]), integrity_key)
    if fingerprint:
        header = HEADER.pack(message_type, len(body) + 8, MAGIC_COOKIE, message.transaction_id)
        crc = (binascii.crc32(header + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        body += ATTRIBUTE_HEADER.pack(_FINGERPRINT, 4) + struct.pack("!I", crc)
    return HEADER.pack(message_type, len(body), MAGIC_COOKIE, message.transaction_id) + bytes(body)


# ----------------------------------------------------------------------------- attribute values

Address = tuple[str, int]


def pack_xor_address(address: Address, transaction_id: bytes) -> bytes:
    host, port = address
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ":" not in host:
        try:  # the common case, without ipaddress's parser (same strict dotted quad)
            packed = socket.inet_pton(socket.AF_INET, host)
        except OSError:
            pass
        else:
            return _XOR_V4.pack(1, xport, int.from_bytes(packed, "big") ^ MAGIC_COOKIE)
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return struct.pack("!BBH", 0, 1, xport) + bytes(
            a ^ b for a, b in zip(ip.packed, _COOKIE_BYTES, strict=True)
        )
    mask = _COOKIE_BYTES + transaction_id
    return struct.pack("!BBH", 0, 2, xport) + bytes(
        a ^ b for a, b in zip(ip.packed, mask, strict=True)
    )


def unpack_xor_address(value: bytes, transaction_id: bytes) -> Address:
    if len(value) < 4:
        raise StunDecodeError("address attribute too short")
    _, family, xport = struct.unpack_from("!BBH", value)
    port = xport ^ (MAGIC_COOKIE >> 16)
    if family == 1 and len(value) == 8:
        packed = (int.from_bytes(value[4:], "big") ^ MAGIC_COOKIE).to_bytes(4, "big")
        return socket.inet_ntoa(packed), port
    if family == 2 and len(value) == 20:
        mask = _COOKIE_BYTES + transaction_id
        packed = bytes(a ^ b for a, b in zip(value[4:], mask, strict=True))
        return str(ipaddress.IPv6Address(packed)), port
    raise StunDecodeError("bad address family or length")


def pack_error_code(code: int, reason: str) -> bytes:
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode()


def unpack_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunDecodeError("ERROR-CODE too short")
    _, hundreds, rest = struct.unpack_from("!HBB", value)
    return (hundreds & 0x07) * 100 + rest, value[4:].decode("utf-8", "replace")


def pack_unknown_attributes(types: list[int]) -> bytes:
    return b"".join(struct.pack("!H", t) for t in types)


# ----------------------------------------------------------------------------- ChannelData


def is_channel_data(data: bytes | bytearray | memoryview) -> bool:
    return len(data) >= 4 and 0x40 <= data[0] <= 0x7F


def decode_channel_data(data: bytes, *, stream: bool = False) -> tuple[int, bytes]:
    """``(channel, application data)`` of a ChannelData message (RFC 8656 section 12.4).

    Over UDP the datagram may carry padding; over a stream the caller frames it (see
    :func:`stream_frame_length`).
    """
    if len(data) < 4:
        raise StunDecodeError("shorter than a ChannelData header")
    channel, length = CHANNEL_HEADER.unpack_from(data)
    if not 0x4000 <= channel <= 0x7FFF:
        raise StunDecodeError("not a channel number")
    if length > len(data) - 4:
        raise StunDecodeError("ChannelData length exceeds the message")
    return channel, data[4 : 4 + length]


def encode_channel_data(channel: int, payload: bytes, *, stream: bool = False) -> bytes:
    frame = CHANNEL_HEADER.pack(channel, len(payload)) + payload
    if stream:
        frame += b"\x00" * (-len(payload) % 4)  # over TCP, padded to 4 (RFC 8656 section 12.5)
    return frame


def stream_frame_length(buffer: bytes | bytearray) -> int | None:
    """How many bytes the next frame on a TCP/TLS stream takes, or ``None`` if unknown yet."""
    if len(buffer) < 4:
        return None
    length: int = struct.unpack_from("!H", buffer, 2)[0]
    if buffer[0] < 0x40:
        return 20 + length
    if buffer[0] <= 0x7F:
        return 4 + length + (-length % 4)
    raise StunDecodeError("neither STUN nor ChannelData on the stream")
