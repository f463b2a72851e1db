"""The device wire protocol: MessagePack frames, typed as msgspec tagged unions (sans-IO).

One websocket binary message is one frame. Every frame is a map whose ``t`` field names its type;
:func:`decode_client_frame` is the only way the server reads what a device sends, and
:func:`decode_server_frame` the only way a device reads what the server sends. Anything else -
not MessagePack, an unknown ``t``, a missing field, a value of the wrong type - raises
:class:`ProtocolError`. New fields get defaults, so older peers keep working.

The sender of anything a device receives (``from``) is always stamped by the server.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

VERSION = 1
MAX_FRAME_BYTES = 1024 * 1024 + 4096
"""A data payload may be 1 MiB; the frame around it adds a little."""


class ProtocolError(Exception):
    """A frame that does not decode; the session answers with an ``error`` frame and closes."""


class _Frame(msgspec.Struct, tag_field="t", omit_defaults=True, frozen=True, kw_only=True):
    pass


# ----------------------------------------------------------------------------- shared parts


class PeerState(msgspec.Struct, frozen=True, omit_defaults=True):
    """One device of the network, as the network map shows it."""

    device_id: str
    name: str
    world_type: str
    online: bool
    last_seen: int | None = None
    addresses: list[str] = []
    """Where the device is reached now, while it is online: the public addresses it reported
    (``address``), else the one its session comes from; for refreshing direct connections."""


class ThorAction(msgspec.Struct, frozen=True, omit_defaults=True):
    """What device A asks device B to do (the seed's cross-device action execution)."""

    action: str
    params: dict[str, Any] = {}


class ThorResult(msgspec.Struct, frozen=True, omit_defaults=True):
    ok: bool
    result: Any = None
    error: str | None = None
    """For ``ok=False``: ``unreachable``, ``timeout``, ``overloaded``, or the executor's code."""


AckMode = Literal["each", "batch"]
"""How a session acknowledges: one ``ack`` per frame, or ``acks`` frames for several at once."""

NackReason = Literal[
    "unreachable", "overloaded", "too_large", "rate_limited", "quota", "timeout", "invalid"
]


# ----------------------------------------------------------------------------- device -> server


class Hello(_Frame, tag="hello", frozen=True):
    """The first frame of a session.

    ``receipts``: this device confirms what it receives (``received``), and its own sends
    are acknowledged only once their recipient confirmed them: an ``ack`` then means the
    recipient device has the message, wherever it and the sender are connected, whatever
    instance dies meanwhile. Without receipts an ``ack`` means the message is in the recipient's
    queue on the server.

    ``acks``: ``each`` (the default) answers every acknowledged frame with an ``ack`` of its own;
    ``batch`` acknowledges what the session handled together in one ``acks`` frame (the same
    promise per id, each id once); a ``nack`` is always a frame of its own.
    """

    v: int = VERSION
    client: str = ""
    receipts: bool = False
    acks: AckMode = "each"


class Send(_Frame, tag="send", frozen=True):
    """Deliver ``data`` to device ``to`` of the same network; answered by ``ack`` or ``nack``."""

    id: int
    to: str
    data: bytes


class Request(_Frame, tag="request", frozen=True):
    """Ask device ``to`` to execute ``action``; answered by ``response`` with the same ``id``."""

    id: int
    to: str
    action: ThorAction
    timeout_ms: int = 10_000


class Reply(_Frame, tag="reply", frozen=True):
    """The answer to an ``incoming`` request, by its ``id``."""

    id: int
    result: ThorResult


class Signal(_Frame, tag="signal", frozen=True):
    """Opaque connection set-up data (SDP offer/answer, ICE candidates) for device ``to``;
    answered by ``ack`` or ``nack`` with the same ``id``."""

    id: int
    to: str
    kind: str
    payload: bytes


class Ping(_Frame, tag="ping", frozen=True):
    nonce: int = 0


class Pong(_Frame, tag="pong", frozen=True):
    nonce: int = 0


class Received(_Frame, tag="received", frozen=True):
    """A device with receipts has every ``deliver`` up to ``seq`` ``upto`` (cumulative)."""

    upto: int


class LockAcquire(_Frame, tag="lock_acquire", frozen=True):
    """Acquire the network's lock ``name`` for ``lease_ms``; answered by ``lock_granted`` or
    ``lock_result`` with the same ``id``. ``wait_ms`` 0: ``busy`` at once if it is held;
    otherwise wait up to that long, served by ``priority`` (higher first), then arrival."""

    id: int
    name: str
    lease_ms: int
    priority: int = 0
    wait_ms: int = 0


class LockRenew(_Frame, tag="lock_renew", frozen=True):
    """Extend this device's live grant ``token`` on ``name`` to ``lease_ms`` from now."""

    id: int
    name: str
    token: int
    lease_ms: int


class LockRelease(_Frame, tag="lock_release", frozen=True):
    """Release this device's grant ``token`` on ``name``."""

    id: int
    name: str
    token: int


class ChatMessage(msgspec.Struct, frozen=True):
    """One message of a chat (OpenAI's shape: ``role`` and ``content``)."""

    role: str
    content: str


class JobChunk(_Frame, tag="job_chunk", frozen=True):
    """A provider's next piece of the answer to job ``id``: ``text`` and how many ``tokens`` it
    holds (at least one; never more than its characters)."""

    id: str
    text: str
    tokens: int = 1


class JobDone(_Frame, tag="job_done", frozen=True):
    """The provider finished job ``id``; its own count of the usage (informational: the server
    bills the tokens it counted itself)."""

    id: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JobFail(_Frame, tag="job_fail", frozen=True):
    """The provider cannot serve job ``id`` (before its first chunk, the server fails over)."""

    id: str
    error: str = ""


class ComputeRequest(_Frame, tag="compute_request", frozen=True):
    """Ask the marketplace (``service/geri``) to answer ``messages`` with ``model``, charged to
    this device's user: at most ``max_cost`` cents (held first) and ``max_tokens`` tokens.
    ``key`` makes it idempotent (the same key and body give back the same request, like the
    HTTP API's ``Idempotency-Key``). Answered by ``compute_chunk`` frames and then one
    ``compute_done`` (or one ``compute_fail``), all with this ``id`` (the device's own)."""

    id: int
    model: str
    messages: list[ChatMessage]
    max_cost: int
    key: str
    max_tokens: int = 1024


class ReportAddress(_Frame, tag="address", frozen=True):
    """The device's public addresses changed (it learns them from STUN, its router, ...):
    at most four unicast IP addresses; answered by ``ack`` (recorded, and the network told)
    or ``nack`` ``invalid`` with the same ``id``. An empty list: use the address the server
    sees the session come from."""

    id: int
    addresses: list[str]


ClientFrame = (
    Hello
    | Send
    | Request
    | Reply
    | Signal
    | Ping
    | Pong
    | Received
    | LockAcquire
    | LockRenew
    | LockRelease
    | JobChunk
    | JobDone
    | JobFail
    | ComputeRequest
    | ReportAddress
)


# ----------------------------------------------------------------------------- server -> device


class Welcome(_Frame, tag="welcome", frozen=True):
    """The answer to ``hello``: who the device is, and the network map as of ``serial``."""

    v: int
    session_id: str
    device_id: str
    network_id: str
    serial: int
    devices: list[PeerState]
    max_data_bytes: int
    ping_interval_ms: int


class Deliver(_Frame, tag="deliver", frozen=True):
    """``data`` from device ``from_``, stamped by the server. ``seq`` (a device with receipts,
    for a sender with receipts) numbers what the device confirms with ``received``."""

    from_: str = msgspec.field(name="from")
    data: bytes
    seq: int = 0


class Ack(_Frame, tag="ack", frozen=True):
    """The ``send`` with this ``id`` reached its recipient: with receipts, its device confirmed
    it; without, it is queued for the recipient's session."""

    id: int


class Acks(_Frame, tag="acks", frozen=True):
    """Several ``ack`` frames in one (a device that asked for ``acks: batch`` in its ``hello``):
    each id in ``ids`` is acknowledged exactly as an ``ack`` would, and only once."""

    ids: list[int]


class Nack(_Frame, tag="nack", frozen=True):
    """The ``send`` or ``request`` with this ``id`` was not delivered, and why."""

    id: int
    reason: NackReason


class Incoming(_Frame, tag="incoming", frozen=True):
    """A request from device ``from_``; answer with ``reply`` before ``deadline_ms`` passes."""

    id: int
    from_: str = msgspec.field(name="from")
    action: ThorAction
    timeout_ms: int


class Response(_Frame, tag="response", frozen=True):
    """The result of this device's ``request`` with this ``id``."""

    id: int
    result: ThorResult


class Presence(_Frame, tag="presence", frozen=True):
    """A change of the network map: serials increase by one per change."""

    serial: int
    device: PeerState


class SignalFrom(_Frame, tag="signal_from", frozen=True):
    from_: str = msgspec.field(name="from")
    kind: str
    payload: bytes


class Error(_Frame, tag="error", frozen=True):
    code: str
    message: str


class Bye(_Frame, tag="bye", frozen=True):
    """The session ends, and why: the last frame on transports without close codes of their own
    (a WebRTC data channel). ``code`` is one of the ``CLOSE_*`` codes a websocket would carry."""

    code: int
    reason: str = ""


class LockGranted(_Frame, tag="lock_granted", frozen=True):
    """The ``lock_acquire`` or ``lock_renew`` with this ``id`` succeeded: the device holds
    ``name`` with fencing token ``token`` for ``lease_ms`` from now (``expires_at``: the
    server's wall clock, in milliseconds)."""

    id: int
    name: str
    token: int
    lease_ms: int
    expires_at: int


LockErrorCode = Literal[
    "busy",
    "timeout",
    "deadlock",
    "not_held",
    "invalid",
    "overloaded",
    "rate_limited",
    "unavailable",
    "not_found",
]


class LockResult(_Frame, tag="lock_result", frozen=True):
    """The answer to the lock request with this ``id`` that was not a grant: ``ok`` for a
    release; otherwise ``error`` says why (``locks``: the cycle's locks, for ``deadlock``)."""

    id: int
    name: str
    ok: bool
    error: LockErrorCode | None = None
    message: str = ""
    locks: list[str] = []


class LockExpired(_Frame, tag="lock_expired", frozen=True):
    """This device's lease on ``name`` (``token``) ended without a release: it holds the lock
    no more."""

    name: str
    token: int


class Job(_Frame, tag="job", frozen=True):
    """A compute job for a provider's device: answer ``messages`` with ``model``, at most
    ``max_tokens`` tokens, as ``job_chunk`` frames and then ``job_done`` (or ``job_fail``), all
    with this ``id``. The requester is never named."""

    id: str
    model: str
    messages: list[ChatMessage]
    max_tokens: int


class JobCancel(_Frame, tag="job_cancel", frozen=True):
    """Stop job ``id``: its requester's cap was reached, or it was given to another provider."""

    id: str


class ComputeChunk(_Frame, tag="compute_chunk", frozen=True):
    """The next piece of the answer to this device's ``compute_request`` ``id``."""

    id: int
    text: str


class ComputeDone(_Frame, tag="compute_done", frozen=True):
    """The end of ``compute_request`` ``id``: the request as it ended (``state``
    ``COMPLETED`` or ``FAILED``), its usage and cost in cents. ``provider_id`` is the
    provider's opaque id; who or where the provider is stays unknown."""

    id: int
    request_id: str
    state: str
    provider_id: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: int = 0
    error: str | None = None


class ComputeFail(_Frame, tag="compute_fail", frozen=True):
    """``compute_request`` ``id`` was refused before it started (nothing held or written):
    ``code`` as the HTTP API's (``invalid``, ``no_payment_method``, ``insufficient_funds``,
    ``idempotency_key_reused``, ``unavailable``, ``overloaded``, ...) and a ``message``."""

    id: int
    code: str
    message: str = ""


ServerFrame = (
    Welcome
    | Deliver
    | Ack
    | Acks
    | Nack
    | Incoming
    | Response
    | Presence
    | SignalFrom
    | Error
    | Bye
    | Ping
    | Pong
    | LockGranted
    | LockResult
    | LockExpired
    | Job
    | JobCancel
    | ComputeChunk
    | ComputeDone
    | ComputeFail
)


# ----------------------------------------------------------------------------- codec

_encoder = msgspec.msgpack.Encoder()
_client_decoder = msgspec.msgpack.Decoder(ClientFrame)
_server_decoder = msgspec.msgpack.Decoder(ServerFrame)


def encode(frame: _Frame) -> bytes:
    return _encoder.encode(frame)


MAX_NESTING = 32
"""How deeply the free-form values of a frame (``params``, ``result``) may nest. The server
re-encodes them for another device, so a value that decodes must also encode, wherever the stack
stands: a fixed bound, far below the interpreter's recursion limit, guarantees it."""

# MessagePack's map and array markers (fixmap, fixarray, map/array 16 and 32). A frame with no
# more of these bytes than the bound cannot nest deeper: most frames skip the walk.
_NOT_CONTAINERS = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


def _too_deep(value: Any, limit: int) -> bool:
    """Whether lists and dicts nest in ``value`` deeper than ``limit`` (iterative: no recursion
    of its own, whatever the input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        children = current.values() if isinstance(current, dict) else current
        for child in children:
            if isinstance(child, (list, dict)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _decode(decoder: msgspec.msgpack.Decoder[Any], data: bytes | bytearray | memoryview) -> Any:
    try:
        frame = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(str(exc)) from None
    except RecursionError:
        raise ProtocolError(f"values nest deeper than {MAX_NESTING} levels") from None
    free: Any = None
    if isinstance(frame, (Request, Incoming)):
        free = frame.action.params
    elif isinstance(frame, (Reply, Response)):
        free = frame.result.result
    if isinstance(free, (list, dict)) and free:
        containers = len(bytes(data).translate(None, _NOT_CONTAINERS))
        if containers > MAX_NESTING and _too_deep(free, MAX_NESTING):
            raise ProtocolError(f"values nest deeper than {MAX_NESTING} levels")
    return frame


def decode_client_frame(data: bytes | bytearray | memoryview | str) -> ClientFrame:
    """What a device sent, or :class:`ProtocolError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("frames are binary MessagePack, not text")
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError("frame too large")
    frame: ClientFrame = _decode(_client_decoder, data)
    return frame


def decode_server_frame(data: bytes | bytearray | memoryview | str) -> ServerFrame:
    """What the server sent, or :class:`ProtocolError` (for the device client)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("frames are binary MessagePack, not text")
    frame: ServerFrame = _decode(_server_decoder, data)
    return frame


# Websocket close codes (RFC 6455 section 7.4, and the 4000-4999 private range).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013
CLOSE_REPLACED = 4000
CLOSE_REVOKED = 4001
CLOSE_SLOW_CONSUMER = 4002
CLOSE_PING_TIMEOUT = 4003
