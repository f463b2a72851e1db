"""The websocket frame guard: every header-level protocol violation closes the connection at once
with RFC 6455's close code, tried sans-IO and against a running gateway with raw bytes."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import wsproto
from hypothesis import given
from hypothesis import strategies as st
from wsproto.events import AcceptConnection, BytesMessage
from wsproto.events import Request as WsRequest

from relay._wsguard import FrameScanner, Violation
from relay.protocol import Hello, Welcome, decode_server_frame, encode
from tests.clients import RELAXED_LIMITS, device, sign_in
from tests.servers import running_server, scrape

HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
LIMIT = 1024 * 1024


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0
) -> bytes:
    """A client frame as RFC 6455 section 5.2 lays it out (masked unless told otherwise)."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        header = bytes((first, mask_bit | len(payload)))
    elif len(payload) < 65536:
        header = bytes((first, mask_bit | 126)) + struct.pack("!H", len(payload))
    else:
        header = bytes((first, mask_bit | 127)) + struct.pack("!Q", len(payload))
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def announce(length: int, opcode: int = 0x2) -> bytes:
    """Only a header, announcing ``length`` payload bytes."""
    return bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", length) + os.urandom(4)


def scan(data: bytes, *, bytewise: bool = False) -> None:
    scanner = FrameScanner(LIMIT)
    if not bytewise:
        scanner.feed(data)
        return
    step = 1 if len(data) < 10_000 else 997  # large payloads in pieces of an odd size
    for i in range(0, len(data), step):
        scanner.feed(data[i : i + step])


VALID = HEAD + b"".join(
    [
        frame(0x2, b"hello"),
        frame(0x9, b"ping"),
        frame(0x1, b"t" * 300),
        frame(0x2, b"a" * 70_000, fin=False),
        frame(0xA, b""),  # a control frame between fragments is allowed (section 5.4)
        frame(0x0, b"b" * 10, fin=False),
        frame(0x0, b"c"),
        frame(0x2, b""),
        frame(0x8, struct.pack("!H", 1000)),
    ]
)


@pytest.mark.parametrize("bytewise", [False, True])
def test_valid_client_streams_pass(bytewise: bool) -> None:
    scan(VALID, bytewise=bytewise)


VIOLATIONS = [
    (frame(0x2, b"x", masked=False), 1002, "unmasked"),
    (frame(0x2, b"x", rsv=4), 1002, "reserved"),
    (frame(0x3, b"x"), 1002, "opcode"),
    (frame(0x9, b"x", fin=False), 1002, "control"),
    (frame(0x9, b"x" * 126), 1002, "control"),
    (frame(0x0, b"x"), 1002, "continuation"),
    (frame(0x2, b"x", fin=False) + frame(0x2, b"y"), 1002, "inside"),
    (announce(2**62), 1009, "larger"),
    (announce(LIMIT + 1), 1009, "larger"),
    (announce(2**63), 1002, "top bit"),
    (frame(0x2, b"x" * 700_000, fin=False) + announce(400_000, opcode=0x0), 1009, "larger"),
]


@pytest.mark.parametrize(("data", "code", "words"), VIOLATIONS)
@pytest.mark.parametrize("bytewise", [False, True])
def test_violations_name_their_close_code(
    data: bytes, code: int, words: str, bytewise: bool
) -> None:
    with pytest.raises(Violation) as raised:
        scan(HEAD + data, bytewise=bytewise)
    assert raised.value.code == code
    assert words in raised.value.reason


def test_a_header_split_across_reads_is_followed() -> None:
    data = HEAD + frame(0x2, b"x" * 200) + frame(0x2, b"y", masked=False)

    def in_two(cut: int) -> None:
        scanner = FrameScanner(LIMIT)
        scanner.feed(data[:cut])
        scanner.feed(data[cut:])

    for cut in range(len(HEAD) - 3, len(data)):
        with pytest.raises(Violation, match="unmasked"):
            in_two(cut)


@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_any_bytes_give_a_violation_or_nothing(data: bytes, chunk: int) -> None:
    scanner = FrameScanner(LIMIT)
    code = 0
    try:
        for i in range(0, len(HEAD + data), chunk):
            scanner.feed((HEAD + data)[i : i + chunk])
    except Violation as violation:
        code = violation.code
    assert code in (0, 1002, 1009)


# ----------------------------------------------------------------------------- a real gateway


@asynccontextmanager
async def upgraded(gateway_url: str, token: str) -> AsyncIterator[trio.SocketStream]:
    """A raw TCP connection that has completed the websocket handshake and the device's hello."""
    url = urlsplit(gateway_url)
    assert url.hostname is not None
    assert url.port is not None
    stream = await trio.open_tcp_stream(url.hostname, url.port)
    async with stream:
        client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        request = WsRequest(
            host=url.hostname,
            target="/",
            extra_headers=[(b"authorization", f"Bearer {token}".encode())],
        )
        await stream.send_all(client.send(request))
        with trio.fail_after(5):
            accepted = False
            while not accepted:
                client.receive_data(await stream.receive_some())
                accepted = any(isinstance(e, AcceptConnection) for e in client.events())
            await stream.send_all(client.send(BytesMessage(data=encode(Hello()))))
            welcome = None
            while welcome is None:
                client.receive_data(await stream.receive_some())
                for event in client.events():
                    if isinstance(event, BytesMessage):
                        welcome = decode_server_frame(event.data)
        assert isinstance(welcome, Welcome)
        yield stream


async def close_code_and_eof(stream: trio.SocketStream, timeout_s: float = 2.0) -> int:
    """Read the server's (unmasked) frames until the connection ends; the close frame's code."""
    buffer = b""
    with trio.fail_after(timeout_s):
        while chunk := await stream.receive_some():
            buffer += chunk
    code = -1
    while len(buffer) >= 2:
        short = buffer[1] & 0x7F
        at, length = 2, short
        if short == 126:
            at, length = 4, struct.unpack("!H", buffer[2:4])[0]
        elif short == 127:
            at, length = 10, struct.unpack("!Q", buffer[2:10])[0]
        if buffer[0] & 0x0F == 0x8:
            code = struct.unpack("!H", buffer[at : at + 2])[0]
        buffer = buffer[at + length :]
    return code


@pytest.mark.parametrize(
    ("attack", "code"),
    [
        (frame(0x2, encode(Hello()), masked=False), 1002),
        (announce(2**62), 1009),
        (frame(0x2, b"x", rsv=2), 1002),
    ],
)
async def test_the_gateway_fails_a_violating_client_at_once(
    data_dir: Path, attack: bytes, code: int
) -> None:
    async with (
        running_server(data_dir, limits=RELAXED_LIMITS) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        phone = await sign_in(
            http, data_dir / "outbox", "guard@example.org", device_body=device("phone")
        )
        async with upgraded(running.gateway_url, phone.session["access_token"]) as stream:
            await stream.send_all(attack)
            # At once: well before the ping interval (20 s) or any payload arrives.
            assert await close_code_and_eof(stream, timeout_s=2) == code
        # The device's session ended with the connection, and it can come back.
        async with upgraded(running.gateway_url, phone.session["access_token"]):
            pass
        metrics = await scrape(running)
        assert "yggdrasil_gateway_protocol_violations_total 1.0" in metrics
