"""The wire codec: round trips for every frame, and garbage never crashes the decoder."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol import (
    Ack,
    Deliver,
    Error,
    Hello,
    Incoming,
    Nack,
    PeerState,
    Ping,
    Pong,
    Presence,
    ProtocolError,
    Reply,
    Request,
    Response,
    Send,
    Signal,
    SignalFrom,
    ThorAction,
    ThorResult,
    Welcome,
    decode_client_frame,
    decode_server_frame,
    encode,
)
from relay.protocol._frames import MAX_NESTING

CLIENT_FRAMES = [
    Hello(client="x"),
    Send(id=1, to="phone", data=b"\x00\xff"),
    Request(id=2, to="phone", action=ThorAction("lights.on", {"room": "kitchen"}), timeout_ms=500),
    Reply(id=3, result=ThorResult(ok=True, result=[1, 2])),
    Signal(id=4, to="phone", kind="candidate", payload=b"a=candidate"),
    Ping(nonce=5),
    Pong(nonce=6),
]
SERVER_FRAMES = [
    Welcome(
        v=1,
        session_id="s",
        device_id="laptop",
        network_id="n",
        serial=3,
        devices=[PeerState("laptop", "Laptop", "midgard", True, 17)],
        max_data_bytes=1024,
        ping_interval_ms=20000,
    ),
    Deliver(from_="phone", data=b"hi"),
    Ack(id=1),
    Nack(id=2, reason="unreachable"),
    Incoming(id=3, from_="phone", action=ThorAction("x"), timeout_ms=10),
    Response(id=4, result=ThorResult(ok=False, error="timeout")),
    Presence(serial=4, device=PeerState("phone", "Phone", "alfheim", False)),
    SignalFrom(from_="phone", kind="offer", payload=b"v=0"),
    Error(code="protocol_error", message="m"),
]


@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=lambda f: type(f).__name__)
def test_client_frames_round_trip(frame: object) -> None:
    assert decode_client_frame(encode(frame)) == frame  # type: ignore[arg-type]


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: type(f).__name__)
def test_server_frames_round_trip(frame: object) -> None:
    assert decode_server_frame(encode(frame)) == frame  # type: ignore[arg-type]


def test_the_wire_names_are_stable() -> None:
    raw = msgspec.msgpack.decode(encode(Deliver(from_="phone", data=b"x")))
    assert raw == {"t": "deliver", "from": "phone", "data": b"x"}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode({"t": "nope"}),
        msgspec.msgpack.encode({"t": "send", "id": "1", "to": "x", "data": b""}),
        msgspec.msgpack.encode({"t": "send", "id": 1, "to": "x"}),
        msgspec.msgpack.encode({"t": "deliver", "from": "x", "data": b""}),  # a server frame
        msgspec.msgpack.encode([1, 2, 3]),
        "text",
        b"\x00" * (2 * 1024 * 1024),
    ],
)
def test_bad_frames_are_protocol_errors(payload: bytes | str) -> None:
    with pytest.raises(ProtocolError):
        decode_client_frame(payload)


@given(st.binary(max_size=512))
def test_any_bytes_give_a_frame_or_a_protocol_error(data: bytes) -> None:
    try:
        frame = decode_client_frame(data)
    except ProtocolError:
        return
    assert type(frame).__name__ in {"Hello", "Send", "Request", "Reply", "Signal", "Ping", "Pong"}


field_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.dictionaries(
        st.sampled_from(["t", "id", "to", "data", "action", "result", "kind", "payload", "v"]),
        field_values | st.sampled_from(["send", "request", "reply", "signal", "hello", "ping"]),
        max_size=6,
    )
)
def test_structured_garbage_gives_a_frame_or_a_protocol_error(fields: dict[str, object]) -> None:
    with contextlib.suppress(ProtocolError):
        decode_client_frame(msgspec.msgpack.encode(fields))


def _nested_lists(depth: int) -> bytes:
    """MessagePack of ``depth`` lists, each inside the last, around an empty one."""
    return b"\x91" * (depth - 1) + b"\x90"


@pytest.mark.parametrize("depth", [33, 900, 5000, 100_000])
def test_values_nesting_too_deeply_are_protocol_errors(depth: int) -> None:
    # A request whose params hold ``depth`` nested lists, and a reply whose result does.
    request = msgspec.msgpack.encode(
        {"t": "request", "id": 1, "to": "x", "action": {"action": "a", "params": {"p": 0}}}
    )
    reply = msgspec.msgpack.encode({"t": "reply", "id": 1, "result": {"ok": True, "result": 0}})
    for frame in (request[:-1] + _nested_lists(depth), reply[:-1] + _nested_lists(depth)):
        with pytest.raises(ProtocolError, match="nest deeper"):
            decode_client_frame(frame)
    incoming = msgspec.msgpack.encode(
        {
            "t": "incoming",
            "id": 1,
            "from": "x",
            "timeout_ms": 5,
            "action": {"action": "a", "params": {"p": 0}},
        }
    )
    with pytest.raises(ProtocolError, match="nest deeper"):
        decode_server_frame(incoming[:-1] + _nested_lists(depth))


def test_values_within_the_nesting_bound_round_trip() -> None:
    deep: list[object] = []
    for _ in range(MAX_NESTING - 2):  # params (1) and the key's list (2) count as levels
        deep = [deep]
    frame = Request(id=1, to="x", action=ThorAction("a", {"p": deep}))
    assert decode_client_frame(encode(frame)) == frame
    wide = Request(id=1, to="x", action=ThorAction("a", {"p": [[i] for i in range(10_000)]}))
    assert decode_client_frame(encode(wide)) == wide
