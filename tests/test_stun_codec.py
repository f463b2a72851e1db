"""The STUN codec against RFC 5769's test vectors, strictness cases, and Hypothesis."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stun_turn import (
    Attr,
    Class,
    Message,
    Method,
    StunDecodeError,
    decode,
    decode_channel_data,
    encode,
    encode_channel_data,
    long_term_key,
    pack_xor_address,
    stream_frame_length,
    unpack_error_code,
    unpack_xor_address,
    verify_integrity,
)

# RFC 5769 section 2.1: sample request (short-term credentials).
REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
REQUEST_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

# Section 2.2: sample IPv4 response.
IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)

# Section 2.3: sample IPv6 response.
IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)

# Section 2.4: sample request with long-term authentication (no FINGERPRINT).
LONG_TERM_REQUEST = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b39353464364f4c33346f4c39465354767936347341"
    "0014000b6578616d706c652e6f726700"
    "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
)


def test_rfc5769_sample_request() -> None:
    message = decode(REQUEST)
    assert (message.method, message.cls) == (Method.BINDING, Class.REQUEST)
    assert message.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert message.get(Attr.SOFTWARE) == b"STUN test client"
    assert message.get(Attr.USERNAME) == b"evtj:h6vY"
    assert message.get(Attr.PRIORITY) == bytes.fromhex("6e0001ff")
    assert verify_integrity(message, REQUEST_PASSWORD)
    assert not verify_integrity(message, b"wrong")


@pytest.mark.parametrize(
    ("data", "address"),
    [
        (IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_sample_responses(data: bytes, address: tuple[str, int]) -> None:
    message = decode(data)
    assert (message.method, message.cls) == (Method.BINDING, Class.SUCCESS)
    value = message.get(Attr.XOR_MAPPED_ADDRESS)
    assert value is not None
    assert unpack_xor_address(value, message.transaction_id) == address
    assert verify_integrity(message, REQUEST_PASSWORD)
    assert message.get(Attr.SOFTWARE) == b"test vector"
    # Our encoding of the same attributes decodes to the same values and verifies. (The
    # vector pads SOFTWARE with spaces, we pad with zeros, so the bytes differ there.)
    rebuilt = Message(
        message.method,
        message.cls,
        message.transaction_id,
        [
            (Attr.SOFTWARE, b"test vector"),
            (Attr.XOR_MAPPED_ADDRESS, pack_xor_address(address, message.transaction_id)),
        ],
    )
    again = decode(encode(rebuilt, integrity_key=REQUEST_PASSWORD))
    assert again.get(Attr.XOR_MAPPED_ADDRESS) == value
    assert verify_integrity(again, REQUEST_PASSWORD)
    assert len(encode(rebuilt, integrity_key=REQUEST_PASSWORD)) == len(data)


def test_rfc5769_long_term_authentication() -> None:
    message = decode(LONG_TERM_REQUEST)
    username = message.get(Attr.USERNAME)
    assert username is not None
    assert username.decode() == "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert message.get(Attr.REALM) == b"example.org"
    assert message.get(Attr.NONCE) == b"f//499k954d6OL34oL9FSTvy64sA"
    # The password "The<U+00AD>M<U+00AA>tr<U+2168>" is "TheMatrIX" after OpaqueString.
    key = long_term_key(username.decode(), "example.org", "TheMatrIX")
    assert verify_integrity(message, key)
    assert not verify_integrity(message, long_term_key(username.decode(), "example.org", "x"))


def test_round_trip_with_integrity_and_fingerprint() -> None:
    message = Message(
        Method.ALLOCATE,
        Class.REQUEST,
        b"0123456789ab",
        [
            (Attr.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0])),
            (Attr.USERNAME, b"user"),
            (Attr.REALM, b"realm"),
            (Attr.NONCE, b"nonce-123"),
        ],
    )
    key = long_term_key("user", "realm", "pass")
    data = encode(message, integrity_key=key)
    decoded = decode(data)
    assert decoded.method == Method.ALLOCATE
    assert decoded.get(Attr.NONCE) == b"nonce-123"
    assert verify_integrity(decoded, key)
    tampered = bytearray(data)
    tampered[-30] ^= 1  # inside MESSAGE-INTEGRITY: FINGERPRINT no longer matches either
    with pytest.raises(StunDecodeError):
        decode(bytes(tampered))


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda d: d[:4] + b"\x00\x00\x00\x00" + d[8:], "cookie"),
        (lambda d: b"\xc0" + d[1:], "first two bits"),
        (lambda d: d + b"\x00\x00\x00\x00", "length"),
        (lambda d: d[:2] + b"\x00\x05" + d[4:], "length"),
        (lambda d: d[:-1], "length"),
    ],
)
def test_strictness(mutate: object, why: str) -> None:
    with pytest.raises(StunDecodeError):
        decode(mutate(IPV4_RESPONSE))  # type: ignore[operator]


def test_attributes_after_integrity_and_duplicates_are_refused() -> None:
    base = Message(Method.BINDING, Class.REQUEST, b"abcdefghijkl", [(Attr.USERNAME, b"u")])
    data = encode(base, integrity_key=b"k", fingerprint=False)
    # Append a USERNAME after MESSAGE-INTEGRITY, fixing up the length field.
    extra = bytes.fromhex("00060001") + b"x\x00\x00\x00"
    bad = bytearray(data + extra)
    bad[2:4] = (len(bad) - 20).to_bytes(2, "big")
    with pytest.raises(StunDecodeError, match="follow"):
        decode(bytes(bad))
    twice = bytearray(data + data[-24:])
    twice[2:4] = (len(twice) - 20).to_bytes(2, "big")
    with pytest.raises(StunDecodeError):
        decode(bytes(twice))


def test_unknown_comprehension_required_attributes_are_reported() -> None:
    message = decode(
        encode(
            Message(
                Method.BINDING,
                Class.REQUEST,
                b"abcdefghijkl",
                [
                    (0x7F00, b"?"),
                    (0xFF00, b"optional"),
                    (Attr.USERNAME, b"u"),
                ],
            )
        )
    )
    assert message.unknown_required() == [0x7F00]


def test_error_code_and_channel_data() -> None:
    assert unpack_error_code(bytes.fromhex("00000457526f6c6520436f6e666c696374")) == (
        487,
        "Role Conflict",
    )
    frame = encode_channel_data(0x4001, b"hello", stream=True)
    assert len(frame) == 12
    assert stream_frame_length(frame) == 12
    assert decode_channel_data(frame) == (0x4001, b"hello")
    with pytest.raises(StunDecodeError):
        decode_channel_data(bytes.fromhex("40010010") + b"short")


@given(st.binary(max_size=300))
def test_any_bytes_give_a_message_or_our_error(data: bytes) -> None:
    with contextlib.suppress(StunDecodeError):
        decode(data)


@given(st.binary(min_size=0, max_size=64))
def test_mutated_valid_messages_never_crash(noise: bytes) -> None:
    for position in range(0, len(REQUEST), 7):
        data = REQUEST[:position] + noise + REQUEST[position + len(noise) :]
        with contextlib.suppress(StunDecodeError):
            decode(data)
