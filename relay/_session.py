"""One actor per connected device (``device/<network>/<device>``): it owns the transport, its
mailbox and its network membership, and is reached by other actors only through the router.

The transport is a websocket or a WebRTC data channel (:class:`relay.protocol.Transport`); the
session is the same behind either. Its actor loop is the writer (the only task that writes
messages to the transport: it drains the mailbox and writes what it holds in one go); a side task
reads frames. A websocket session is pinged by the gateway's one ping timer (the writer sends the
ping with its next write), a WebRTC session by a side task of its own. The first task to fail
ends the session; the transport is closed with a code that says why. Urgent messages (a newer
session of the same device, revoked tokens, a restarted network) end it at once, ahead of its
queue.

One session per device in the whole cluster: a new session asks the current holder of the
address to step down (4000) and takes the address once it is free.

Backpressure: the mailbox is bounded in frames and in bytes and refuses (``overloaded``) what other
devices send once it is full; the session's own frames (acknowledgements, answers) wait for room
instead, which stops the reader, which stops reading the socket. A device that does not take a
frame within ``send_timeout_s`` is disconnected (4002). All sessions of the gateway share one
byte budget: past it, the sessions with the longest backlogs are shed (queue dropped, closed with
4002). A slow reader never grows server memory past its own bound, and never delays another
device's delivery.

A device that asked for batched acknowledgements (``acks: batch`` in its ``hello``) gets those of
one write in one ``acks`` frame: the reader notes the ids, the writer encodes them at drain time.
The ids wait for room like the session's own frames (a mailbox's worth at most).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio
from trio_websocket import ConnectionClosed

from actors import (
    Actor,
    Address,
    AddressInUse,
    ByteBudget,
    Envelope,
    Mailbox,
    Overflow,
    Overloaded,
    RequestTimeout,
    Router,
    Unreachable,
    is_urgent,
)
from yggdrasil import GatewayConfig, Principal, RateLimiter, device_address, network_address
from yggdrasil.ddns import InvalidAddress, check_addresses
from yggdrasil.locks import Abandon, LockLost, locks_address
from yggdrasil.marketplace import JobCancel, JobFailed, JobOffer

from ._addresses import peer_address
from ._compute import GERI, Asks, GeriAsk, GeriChunk, GeriDone, GeriFail
from ._jobs import Jobs
from ._locks import ask_lock, expired, refused
from ._messages import (
    AcksDue,
    ActionFrom,
    ActionResult,
    AddressReport,
    DataFrom,
    Delivered,
    Encoded,
    Join,
    Joined,
    Leave,
    PingDue,
    Refused,
    Rejoin,
    Replace,
    Revoke,
    SignalFromDevice,
    Undelivered,
)
from ._network import TenantQuota
from .protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_PING_TIMEOUT,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REPLACED,
    CLOSE_REVOKED,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TRY_AGAIN,
    MAX_FRAME_BYTES,
    VERSION,
    Ack,
    Acks,
    ComputeFail,
    ComputeRequest,
    Deliver,
    Error,
    Hello,
    Incoming,
    JobChunk,
    JobDone,
    JobFail,
    LockAcquire,
    LockRelease,
    LockRenew,
    Nack,
    NackReason,
    Ping,
    Pong,
    ProtocolError,
    Received,
    Reply,
    ReportAddress,
    Request,
    Response,
    Send,
    Signal,
    SignalFrom,
    ThorResult,
    Transport,
    TransportClosed,
    Welcome,
    decode_client_frame,
    encode,
)

log = logging.getLogger(__name__)


class _Closing(Exception):
    """Ends the session's task group with a close code, and optionally a last frame to send."""

    def __init__(self, code: int, reason: str, last: Error | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.last = last


@dataclass
class SessionStats:
    received: int = 0
    sent: int = 0
    too_large: int = 0
    """Frames for this device its transport could not carry (replaced by an ``error`` frame)."""


_FRAME_OVERHEAD = MAX_FRAME_BYTES - 1024 * 1024


def _protocol_error(exc: ProtocolError) -> Error:
    return Error(code="protocol_error", message=str(exc)[:200])


_ENVELOPE_OVERHEAD = 128
_BATCH_BYTES = 16 * 1024
"""The writer stops taking envelopes into one write past this many bytes of frames: a stalled
device's session holds little more than the frame it is writing outside its mailbox's bound."""
_MAX_PAUSE_S = 1.0
_ACKS_PER_FRAME = 512
"""An ``acks`` frame holds at most this many ids (under 5 KiB: any transport carries it)."""


def queued_bytes(envelope: Envelope) -> int:
    """What an envelope waiting for a device costs (its payload and a little for the rest)."""
    body = envelope.body
    if isinstance(body, DataFrom):
        return len(body.data) + _ENVELOPE_OVERHEAD
    if isinstance(body, Encoded):
        return len(body.frame) + _ENVELOPE_OVERHEAD
    if isinstance(body, SignalFromDevice):
        return len(body.payload) + len(body.kind) + _ENVELOPE_OVERHEAD
    if isinstance(body, ActionFrom):
        return body.size + _ENVELOPE_OVERHEAD
    return _ENVELOPE_OVERHEAD


def _by_sender(entries: Iterable[tuple[Address, int]]) -> dict[Address, list[int]]:
    grouped: dict[Address, list[int]] = {}
    for sender, frame_id in entries:
        grouped.setdefault(sender, []).append(frame_id)
    return grouped


REPLACE_TIMEOUT_S = 5.0
"""How long a new session waits for an older one of the same device to step down."""
REPLACE_POLL_S = 0.02


class DeviceSession(Actor):
    __slots__ = (
        "_acks",
        "_acks_due",
        "_acks_taken",
        "_awaiting",
        "_batching",
        "_closing",
        "_incarnation",
        "_incoming",
        "_incoming_ids",
        "_joined",
        "_last",
        "_outstanding",
        "_overloaded",
        "_pending",
        "_pending_bytes",
        "_ping_wanted",
        "_pinged_by",
        "_resume_at",
        "_seq",
        "_unconfirmed",
        "_used_locks",
        "_written_then_tell",
        "asks",
        "batch_acks",
        "budget",
        "close_code",
        "close_reason",
        "closed",
        "config",
        "device_id",
        "instance",
        "jobs",
        "max_data_bytes",
        "max_frame_bytes",
        "network_address",
        "network_id",
        "principal",
        "quota",
        "rate",
        "receipts",
        "session_id",
        "stats",
        "transport",
    )
    """Its state in slots: one session per connected device, and each one's memory counts."""

    def __init__(
        self,
        transport: Transport,
        principal: Principal,
        config: GatewayConfig,
        *,
        instance: str,
        quota: TenantQuota,
        budget: ByteBudget | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        pinged_by: Callable[[DeviceSession], None] | None = None,
    ) -> None:
        """``pinged_by``: a ping timer the session joins once it runs (the gateway's, for
        transports that can send a ping without waiting for its pong); without one the session
        pings in a task of its own. ``instance``: the id of the instance this session runs on
        (its network learns it, to notice when the instance dies). ``quota``: the network's
        quota on this instance.
        ``budget``: the bytes queued for every session of the gateway, bounded together."""
        assert principal.network_id is not None
        assert principal.device_id is not None
        self.transport = transport
        self.config = config
        self.budget = budget
        self.max_frame_bytes = max_frame_bytes
        self._pinged_by = pinged_by
        self._ping_wanted = False
        """The largest message the transport carries to the device."""
        self.max_data_bytes = max(0, min(config.max_data_bytes, max_frame_bytes - _FRAME_OVERHEAD))
        self.principal = principal
        self.network_id = principal.network_id
        self.device_id = principal.device_id
        self.network_address = network_address(self.network_id)
        self.session_id = secrets.token_urlsafe(9)
        self.instance = instance
        self.quota = quota
        super().__init__(device_address(self.network_id, self.device_id))
        self.rate = RateLimiter(config.messages_per_s, max(1, int(2 * config.messages_per_s)))
        self.closed = trio.Event()
        self.close_code = CLOSE_GOING_AWAY
        self.close_reason = ""
        self.stats = SessionStats()
        self._closing = False
        self._incarnation: str | None = None
        self._joined = False
        self._incoming: dict[int, Envelope] = {}
        self._incoming_ids = itertools.count(1)
        self._outstanding = 0
        self._last: Error | None = None
        self._resume_at = 0.0
        """When the reader may read again after a refusal for rate or quota (trio time)."""
        self._overloaded = 0
        self.receipts = False
        """The device confirms what it receives, and wants its own sends confirmed."""
        self._awaiting: dict[int, float] = {}
        """As a sender: send id -> when to give up waiting for the recipient's confirmation."""
        self._unconfirmed: dict[int, tuple[Address, int]] = {}
        """As a recipient: deliver seq -> (sender's address, its send id), until confirmed."""
        self._seq = 0
        self._batching = False
        self._pending: list[bytes] = []
        """Frames handled but not yet written: the writer sends them together."""
        self._pending_bytes = 0
        self._written_then_tell: list[tuple[Address, int]] = []
        """Deliveries to confirm to their senders once the pending frames are written."""
        self.batch_acks = False
        """The device asked for ``acks: batch``: the writer sends what it acknowledges in one
        ``acks`` frame per drain."""
        self._acks: list[int] = []
        """Ids to acknowledge with the next write (``batch_acks``)."""
        self._acks_due = False
        """A wake-up for the writer (:class:`AcksDue`) is queued for ``_acks``."""
        self._acks_taken = trio.Event()
        """Set when the writer has written the acks it took (the reader waits on it when
        ``_acks`` is full)."""
        self._used_locks = False
        """The device sent lock frames: its waits end with the session."""
        self.jobs = Jobs(config.max_pending_requests)
        """Marketplace jobs offered to this (provider) device and not finished."""
        self.asks = Asks(config.max_pending_requests)
        """Compute requests this (requester) device made of ``service/geri``, not answered."""

    def make_mailbox(self) -> Mailbox[Envelope]:
        return Mailbox(
            self.config.queue_size,
            Overflow.REJECT,
            max_bytes=self.config.queue_bytes,
            sizer=queued_bytes,
            budget=self.budget,
            on_shed=self._shed,
            urgent=is_urgent,
            on_urgent=self.interrupt,
        )

    # ----------------------------------------------------------------- lifecycle

    def close(self, code: int, reason: str) -> None:
        """End the session with ``code`` (the first reason given wins)."""
        if not self._closing:
            self._closing = True
            self.close_code, self.close_reason = code, reason
        self.stop()

    def _shed(self) -> None:
        """The gateway's byte budget dropped this session's queue: it is the furthest behind."""
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer: its queue was dropped")

    def interrupt(self, envelope: Envelope) -> None:
        match envelope.body:
            case Replace(session_id=session_id) if session_id != self.session_id:
                if not self._closing:
                    log.info(
                        "session=%s device=%s replaced by session=%s",
                        self.session_id,
                        self.device_id,
                        session_id,
                        extra={
                            "session": self.session_id,
                            "device": self.device_id,
                            "network": self.network_id,
                            "replaced_by": session_id,
                        },
                    )
                self.close(CLOSE_REPLACED, "replaced by a new session")
            case Revoke():
                self.close(CLOSE_REVOKED, "revoked")
            case Rejoin(incarnation=incarnation):
                if self._joined and incarnation != self._incarnation:
                    self.close(CLOSE_GOING_AWAY, "network restarted")

    async def serve(self, router: Router) -> None:
        """The whole session: the device's ``hello``, the address, the network, then frames both
        ways until either side ends it. Always closes the transport; never raises for what a
        device or the network does."""
        try:
            try:
                await self._hello()
                await self.run(router)
            except* _Closing as group:
                first = group.exceptions[0]
                assert isinstance(first, _Closing)
                self.close_code, self.close_reason = first.code, first.reason
                self._last = first.last
            except* (ConnectionClosed, TransportClosed) as gone:
                self.close_code, self.close_reason = CLOSE_GOING_AWAY, "device closed"
                cause = gone.exceptions[0]
                if isinstance(cause, TransportClosed) and cause.code is not None:
                    self.close_code, self.close_reason = cause.code, cause.reason
            except* AddressInUse:
                self.close_code = CLOSE_TRY_AGAIN
                self.close_reason = "another session of this device is still ending"
        finally:
            with trio.move_on_after(2) as cleanup:
                cleanup.shield = True
                if self._last is not None:  # the writer has stopped: this is the only writer now
                    with contextlib.suppress(ConnectionClosed, TransportClosed):
                        await self.transport.send_message(encode(self._last))
                await self.transport.aclose(self.close_code, self.close_reason)
            self.closed.set()
            # A device's own close reason is its text: one line, whatever it holds.
            reason = "".join(c if c.isprintable() else "?" for c in self.close_reason)
            log.info(
                "session=%s device=%s disconnected code=%d reason=%s",
                self.session_id,
                self.device_id,
                self.close_code,
                reason,
                extra={
                    "session": self.session_id,
                    "device": self.device_id,
                    "network": self.network_id,
                    "code": self.close_code,
                    "reason": reason,
                },
            )

    async def _hello(self) -> None:
        raw: bytes | str | None = None
        with trio.move_on_after(self.config.hello_timeout_s):
            raw = await self.transport.get_message()
        if raw is None:
            raise _Closing(CLOSE_PROTOCOL_ERROR, "no hello in time")
        try:
            hello = decode_client_frame(raw)
        except ProtocolError as exc:
            raise _Closing(CLOSE_PROTOCOL_ERROR, "protocol error", _protocol_error(exc)) from None
        if not isinstance(hello, Hello):
            error = Error(code="protocol_error", message="the first frame must be hello")
            raise _Closing(CLOSE_PROTOCOL_ERROR, "expected hello", error)
        if hello.v != VERSION:
            error = Error(code="version", message=f"this server speaks version {VERSION}")
            raise _Closing(CLOSE_PROTOCOL_ERROR, "unsupported version", error)
        self.receipts = hello.receipts
        self.batch_acks = hello.acks == "batch"

    async def claim(self, router: Router) -> None:
        """Take the device's address: a live older session of the device (on any instance)
        is asked to step down first."""
        deadline = trio.current_time() + REPLACE_TIMEOUT_S
        while True:
            try:
                await router.register(self.address, self.mailbox)
                return
            except AddressInUse:
                if trio.current_time() > deadline:
                    raise
            with contextlib.suppress(Unreachable, Overloaded):
                step_down = Envelope(self.address, self.address, Replace(self.session_id))
                await router.send(step_down, activate=False)
            await trio.sleep(REPLACE_POLL_S)

    async def on_start(self) -> None:
        joined = await self._join()
        await self._write(
            encode(
                Welcome(
                    v=VERSION,
                    session_id=self.session_id,
                    device_id=self.device_id,
                    network_id=self.network_id,
                    serial=joined.serial,
                    devices=joined.devices,
                    max_data_bytes=self.max_data_bytes,
                    ping_interval_ms=int(self.config.ping_interval_s * 1000),
                )
            )
        )
        self.nursery.start_soon(self._reader)
        if self._pinged_by is not None:
            self._pinged_by(self)
        else:
            self.nursery.start_soon(self._pinger)
        if self.receipts:
            self.nursery.start_soon(self._expire_unconfirmed)

    async def on_stop(self) -> None:
        await self.jobs.abandon(self.router, self.address)
        if self._used_locks:  # its waits end now; its grants run out with their leases
            with contextlib.suppress(Unreachable, Overloaded):
                await self.router.send(
                    Envelope(
                        self.address,
                        locks_address(self.network_id),
                        Abandon(session=self.session_id),
                    ),
                    activate=False,
                )
        # What this device received but never confirmed, or was never written to it: its
        # senders hear it did not arrive.
        senders = _by_sender([*self._unconfirmed.values(), *self._written_then_tell])
        self._written_then_tell.clear()
        self._unconfirmed.clear()
        for sender, ids in senders.items():
            await self._tell(sender, Undelivered(ids))
        if not self._joined:
            return
        # A goodbye need not wake a network actor that is gone: the next one starts without us.
        with contextlib.suppress(Unreachable, Overloaded):
            await self.router.send(
                Envelope(
                    self.address, self.network_address, Leave(self.device_id, self.session_id)
                ),
                activate=False,
            )

    async def _join(self) -> Joined:
        for _ in range(3):  # the network actor may be stopping for idleness right now
            try:
                answer = await self.request(
                    self.network_address,
                    Join(
                        self.device_id, self.session_id, self.instance, peer_address(self.transport)
                    ),
                    timeout_s=10,
                )
            except Unreachable:
                continue
            except RequestTimeout:
                raise _Closing(CLOSE_TRY_AGAIN, "network busy, try again") from None
            if isinstance(answer, Refused):
                raise _Closing(CLOSE_REVOKED, "device unknown")
            assert isinstance(answer, Joined)
            self._incarnation = answer.incarnation
            self._joined = True
            return answer
        raise _Closing(CLOSE_TRY_AGAIN, "network unavailable, try again")

    # ----------------------------------------------------------------- reading

    async def _reader(self) -> None:
        while True:
            if self._resume_at > trio.current_time():
                await trio.sleep_until(self._resume_at)
            raw = await self.transport.get_message()
            self.stats.received += 1
            try:
                frame = decode_client_frame(raw)
            except ProtocolError as exc:
                error = _protocol_error(exc)
                raise _Closing(CLOSE_PROTOCOL_ERROR, "protocol error", error) from None
            match frame:
                case Send():
                    await self._on_send(frame)
                case Request():
                    await self._on_request(frame, len(raw))
                case Reply():
                    await self._on_reply(frame)
                case Signal():
                    await self._on_signal(frame)
                case Received(upto=upto):
                    await self._confirmed(upto)
                case LockAcquire() | LockRenew() | LockRelease():
                    await self._on_lock(frame)
                case JobChunk() | JobDone() | JobFail():
                    await self.jobs.from_device(self.router, self.address, frame)
                case ComputeRequest():
                    await self._on_compute(frame)
                case ReportAddress():
                    await self._on_address(frame)
                case Ping(nonce=nonce):
                    await self._queue(Pong(nonce=nonce))
                case Pong():
                    pass
                case Hello():
                    await self._queue(
                        Error(code="protocol_error", message="hello was already sent")
                    )
                    raise _Closing(CLOSE_PROTOCOL_ERROR, "second hello")

    def _admit(self, size: int) -> NackReason | None:
        """Whether a frame of ``size`` payload bytes may go out now.

        The budgets shape the device's traffic rather than only refuse it: after a frame, the
        reader waits until the session's rate and the network's quota would allow another of
        the same size, and after a refusal until they have refilled. A device that sends faster
        than it may is slowed down by TCP backpressure, not read and refused.
        """
        if size > self.max_data_bytes:
            return "too_large"
        wait = self.rate.take("session")
        if wait:
            self._pause(wait)
            return "rate_limited"
        wait = self.quota.take(size)
        if wait:
            self._pause(wait)
            return "quota"
        self._pause(self.quota.wait_time(size))
        self._pause(self.rate.wait_time("session"))
        return None

    def _refused_by_peer(self, reason: NackReason | None) -> None:
        """A device whose frames keep finding the recipient's queue full is slowed down too:
        reading pauses for 1 ms, doubling with each refusal in a row, up to a second."""
        if reason == "overloaded":
            self._overloaded += 1
            self._pause(0.001 * 2.0 ** min(self._overloaded, 10))
        else:
            self._overloaded = 0

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            until = trio.current_time() + min(seconds, _MAX_PAUSE_S)
            self._resume_at = max(self._resume_at, until)

    async def _on_send(self, frame: Send) -> None:
        refused = self._admit(len(frame.data))
        if refused is None and self.receipts and len(self._awaiting) >= self.config.queue_size:
            refused = "overloaded"  # too many of its sends wait for confirmation already
        if refused is None:
            body = DataFrom(self.device_id, frame.data, frame.id, confirm=self.receipts)
            refused = await self._route(frame.to, body)
            if refused is None and self.receipts:
                # The ack waits for the recipient's confirmation (Delivered).
                self._awaiting[frame.id] = trio.current_time() + self.config.confirm_timeout_s
                return
        await self._answer(frame.id, refused)

    async def _answer(self, frame_id: int, refused: NackReason | None) -> None:
        """Acknowledge (or refuse) the device's frame ``frame_id``: a ``nack`` is a frame of its
        own; an ack too, unless the device batches them (then it joins the next write's
        ``acks`` frame)."""
        if refused is not None:
            await self._queue(Nack(id=frame_id, reason=refused))
        elif not self.batch_acks:
            await self._queue(Ack(id=frame_id))
        else:
            # Backpressure as for any of our own frames: a writer that cannot write stops
            # the reader once a mailbox's worth of acks waits.
            while len(self._acks) >= self.config.queue_size:
                await self._acks_taken.wait()
            self._acks.append(frame_id)
            if not self._acks_due:
                self._acks_due = True
                await self.mailbox.put(
                    Envelope(self.address, self.address, AcksDue()), overflow=Overflow.WAIT
                )

    async def _confirmed(self, upto: int) -> None:
        """The device has every delivery up to ``upto``: their senders hear of it."""
        done = []
        for seq in self._unconfirmed:
            if seq > upto:
                break
            done.append(seq)
        senders = _by_sender(self._unconfirmed.pop(seq) for seq in done)
        for sender, ids in senders.items():
            await self._tell(sender, Delivered(ids))

    async def _tell(self, sender: Address, body: Delivered | Undelivered) -> None:
        """A confirmation for a sender's session; lost, it times out there (``timeout``)."""
        with contextlib.suppress(Unreachable, Overloaded):
            await self.router.send(Envelope(self.address, sender, body), activate=False)

    async def _expire_unconfirmed(self) -> None:
        """Sends whose confirmation never came (the recipient's instance died, a message was
        lost on the bus) are refused ``timeout``: the device decides whether to send again."""
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            expired = []
            for frame_id, deadline in self._awaiting.items():
                if deadline > now:
                    break
                expired.append(frame_id)
            for frame_id in expired:
                del self._awaiting[frame_id]
                await self._queue(Nack(id=frame_id, reason="timeout"))

    async def _on_signal(self, frame: Signal) -> None:
        refused = self._admit(len(frame.payload))
        if refused is None:
            body = SignalFromDevice(self.device_id, frame.kind, frame.payload)
            refused = await self._route(frame.to, body)
        await self._answer(frame.id, refused)

    async def _route(self, to: str, body: DataFrom | SignalFromDevice) -> NackReason | None:
        try:
            destination = device_address(self.network_id, to)
        except ValueError:
            return "unreachable"
        try:
            await self.router.send(Envelope(self.address, destination, body))
        except Unreachable:
            return "unreachable"
        except Overloaded:
            self._refused_by_peer("overloaded")
            return "overloaded"
        self._refused_by_peer(None)
        return None

    async def _on_request(self, frame: Request, size: int) -> None:
        refused = self._admit(0)
        if refused is None and self._outstanding >= self.config.max_pending_requests:
            refused = "overloaded"
        if refused is not None:
            await self._queue(Response(id=frame.id, result=ThorResult(ok=False, error=refused)))
            return
        self._outstanding += 1
        self.nursery.start_soon(self._await_answer, frame, size)

    async def _await_answer(self, frame: Request, size: int) -> None:
        try:
            timeout_s = max(0.001, min(frame.timeout_ms, 60_000) / 1000)
            try:
                destination = device_address(self.network_id, frame.to)
                body = ActionFrom(self.device_id, frame.action, int(timeout_s * 1000), size)
                answer = await self.request(destination, body, timeout_s=timeout_s)
                result = (
                    answer.result
                    if isinstance(answer, ActionResult)
                    else ThorResult(ok=False, error="bad_answer")
                )
            except (Unreachable, ValueError):
                result = ThorResult(ok=False, error="unreachable")
            except RequestTimeout:
                result = ThorResult(ok=False, error="timeout")
            except Overloaded:
                result = ThorResult(ok=False, error="overloaded")
            await self._queue(Response(id=frame.id, result=result))
        finally:
            self._outstanding -= 1

    async def _on_lock(self, frame: LockAcquire | LockRenew | LockRelease) -> None:
        refused_by = self._admit(0)
        if refused_by is None and self._outstanding >= self.config.max_pending_requests:
            refused_by = "overloaded"
        if refused_by is not None:
            await self._queue(
                refused(frame, "overloaded" if refused_by == "overloaded" else "rate_limited")
            )
            return
        self._used_locks = True
        self._outstanding += 1
        self.nursery.start_soon(self._await_lock, frame)

    async def _await_lock(self, frame: LockAcquire | LockRenew | LockRelease) -> None:
        try:
            answer = await ask_lock(
                self.router, self.address, self.network_id, frame, self.session_id
            )
            await self._queue(answer)
        finally:
            self._outstanding -= 1

    async def _on_compute(self, frame: ComputeRequest) -> None:
        """A compute request for ``service/geri`` (see ``_compute``), charged to this device's
        user; refused at once (``compute_fail``) when it is malformed or too many are open."""
        refused_by = self._admit(0)
        if refused_by is not None:
            await self._queue(ComputeFail(id=frame.id, code=refused_by, message="slow down"))
            return
        ask = self.asks.ask(self.principal.user_id, frame)
        if not isinstance(ask, GeriAsk):
            await self._queue(ask)
            return
        try:
            await self.router.dispatch(Envelope(self.address, GERI, ask))
        except (Unreachable, Overloaded):
            self.asks.forget(frame.id)
            message = "the marketplace is not reachable, try again"
            await self._queue(ComputeFail(id=frame.id, code="unavailable", message=message))

    async def _on_address(self, frame: ReportAddress) -> None:
        """The device's public addresses changed: its network records them (DDNS follows) and
        tells its other members; ``nack invalid`` for what is not a list of unicast addresses."""
        refused = self._admit(0)
        addresses: list[str] = []
        if refused is None:
            try:
                addresses = check_addresses(frame.addresses)
            except InvalidAddress:
                refused = "invalid"
        if refused is None:
            report = AddressReport(self.device_id, self.session_id, addresses)
            try:
                await self.router.send(Envelope(self.address, self.network_address, report))
            except (Unreachable, Overloaded):
                refused = "overloaded"
        await self._answer(frame.id, refused)

    async def _on_reply(self, frame: Reply) -> None:
        envelope = self._incoming.pop(frame.id, None)
        if envelope is None:
            return  # late (timed out) or made up: nothing waits for it
        with contextlib.suppress(Unreachable, Overloaded):
            await self.reply(envelope, ActionResult(frame.result))

    # ----------------------------------------------------------------- writing

    async def _queue(self, frame: object) -> None:
        """Queue one of our own frames for the writer, waiting for room (backpressure)."""
        await self.mailbox.put(
            Envelope(self.address, self.address, Encoded(encode(frame))),  # type: ignore[arg-type]
            overflow=Overflow.WAIT,
        )

    async def _serve(self) -> None:
        """The writer: waits for the mailbox, handles everything it holds by then (up to
        ``_BATCH_BYTES`` of frames) and writes the frames in one go."""
        mailbox = self.mailbox
        while True:
            try:
                envelope = await mailbox.get()
            except trio.EndOfChannel:
                return
            self._batching = True
            try:
                await self._take(envelope)
                while self._pending_bytes < _BATCH_BYTES:
                    try:
                        envelope = mailbox.get_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    await self._take(envelope)
            finally:
                self._batching = False
            await self._flush()

    async def _take(self, envelope: Envelope) -> None:
        if envelope.deadline is not None and envelope.deadline < time.time():
            self.expired += 1
            return
        await self.handle(envelope)

    async def _write(self, data: bytes) -> None:
        """Write one frame to the device; while the writer handles a batch, the frame joins it
        (written by :meth:`_flush`, in order)."""
        if len(data) > self.max_frame_bytes:
            # Only a smaller transport's limit can be exceeded (a websocket takes any frame).
            self.stats.too_large += 1
            data = encode(
                Error(code="too_large", message="a frame for this device exceeded its transport")
            )
        if self._batching:
            self._pending.append(data)
            self._pending_bytes += len(data)
            return
        with trio.move_on_after(self.config.send_timeout_s):
            await self.transport.send_message(data)
            self.stats.sent += 1
            return
        raise _Closing(CLOSE_SLOW_CONSUMER, "slow consumer")

    def want_ping(self) -> None:
        """The ping timer: send a ping with the next write (it then waits for a pong)."""
        self._ping_wanted = True
        with contextlib.suppress(Unreachable, Overloaded):
            # Not waiting: a full mailbox means the writer is busy and will flush soon.
            self.mailbox.put_nowait(Envelope(self.address, self.address, PingDue()))

    async def _flush(self) -> None:
        """Write the pending frames (one socket write where the transport can), then tell the
        senders of the deliveries among them that they were written."""
        acks = self._acks
        if acks:
            self._acks = []
            self._acks_due = False
            for start in range(0, len(acks), _ACKS_PER_FRAME):
                frame = encode(Acks(ids=acks[start : start + _ACKS_PER_FRAME]))
                self._pending.append(frame)
                self._pending_bytes += len(frame)
        frames = self._pending
        send_messages = getattr(self.transport, "send_messages", None)
        ping, self._ping_wanted = self._ping_wanted and send_messages is not None, False
        if frames or ping:
            self._pending = []
            self._pending_bytes = 0
            with trio.move_on_after(self.config.send_timeout_s):
                if send_messages is not None and (len(frames) > 1 or ping):
                    await send_messages(frames, ping=ping)
                else:
                    for frame in frames:
                        await self.transport.send_message(frame)
                self.stats.sent += len(frames)
                frames = []
                ping = False
            if frames or ping:
                raise _Closing(CLOSE_SLOW_CONSUMER, "slow consumer")
        if acks:
            self._acks_taken.set()
            self._acks_taken = trio.Event()
        if self._written_then_tell:
            senders = _by_sender(self._written_then_tell)
            self._written_then_tell = []
            for sender, ids in senders.items():
                await self._tell(sender, Delivered(ids))

    async def handle(self, envelope: Envelope) -> None:
        """The writer: one envelope from the mailbox, written to the device."""
        match envelope.body:
            case Encoded(frame=data):
                await self._write(data)
            case PingDue() | AcksDue():
                pass  # the ping and the acks go out with this batch (_flush)
            case DataFrom(device_id=sender, data=data, frame_id=frame_id, confirm=confirm):
                await self._deliver(envelope.src, sender, data, frame_id, confirm)
            case Delivered(ids=ids):
                for frame_id in ids:
                    if self._awaiting.pop(frame_id, None) is not None:
                        if self.batch_acks and self._batching:
                            self._acks.append(frame_id)
                        else:
                            await self._write(encode(Ack(id=frame_id)))
            case Undelivered(ids=ids, reason=reason):
                for frame_id in ids:
                    if self._awaiting.pop(frame_id, None) is not None:
                        await self._write(encode(Nack(id=frame_id, reason=reason)))
            case SignalFromDevice(device_id=sender, kind=kind, payload=payload):
                await self._write(encode(SignalFrom(from_=sender, kind=kind, payload=payload)))
            case ActionFrom(device_id=sender, action=action, timeout_ms=timeout_ms):
                await self._deliver_request(envelope, sender, action, timeout_ms)
            case LockLost() as lost:
                await self._write(encode(expired(lost)))
            case JobOffer() as offer:
                job = self.jobs.offered(envelope.src, offer)
                if job is None:
                    with contextlib.suppress(Unreachable, Overloaded):
                        failed = JobFailed(offer.job_id, "provider overloaded")
                        await self.router.send(Envelope(self.address, envelope.src, failed))
                else:
                    await self._write(encode(job))
            case GeriChunk() | GeriDone() | GeriFail() as answer:
                compute = self.asks.answer(answer)
                if compute is not None:
                    await self._write(encode(compute))
            case JobCancel() as cancel:
                frame = self.jobs.cancelled(cancel)
                if frame is not None:
                    await self._write(encode(frame))
            case _:
                log.warning("session=%s dropped %s", self.session_id, type(envelope.body))

    async def _deliver(
        self, src: Address, sender: str, data: bytes, frame_id: int, confirm: bool
    ) -> None:
        if not confirm:
            await self._write(encode(Deliver(from_=sender, data=data)))
            return
        if not self.receipts:
            # This device does not confirm: written to it is as far as the server can tell.
            await self._write(encode(Deliver(from_=sender, data=data)))
            if self._batching:
                self._written_then_tell.append((src, frame_id))
            else:
                await self._tell(src, Delivered([frame_id]))
            return
        if len(self._unconfirmed) >= 4 * self.config.queue_size:
            raise _Closing(CLOSE_SLOW_CONSUMER, "slow consumer: deliveries left unconfirmed")
        frame = encode(Deliver(from_=sender, data=data, seq=self._seq + 1))
        if len(frame) > self.max_frame_bytes:
            await self._write(frame)  # replaced by an error frame: this transport is smaller
            await self._tell(src, Undelivered([frame_id], "too_large"))
            return
        self._seq += 1
        self._unconfirmed[self._seq] = (src, frame_id)
        await self._write(frame)

    async def _deliver_request(
        self, envelope: Envelope, sender: str, action: object, timeout_ms: int
    ) -> None:
        if envelope.deadline is not None and envelope.deadline < time.time():
            return  # expired while queued
        if len(self._incoming) >= self.config.max_pending_requests:
            with contextlib.suppress(Unreachable, Overloaded):
                await self.reply(envelope, ActionResult(ThorResult(ok=False, error="overloaded")))
            return
        self._purge_expired()
        incoming_id = next(self._incoming_ids)
        self._incoming[incoming_id] = envelope
        await self._write(
            encode(Incoming(id=incoming_id, from_=sender, action=action, timeout_ms=timeout_ms))  # type: ignore[arg-type]
        )

    def _purge_expired(self) -> None:
        now = time.time()
        for key, envelope in list(self._incoming.items()):
            if envelope.deadline is not None and envelope.deadline < now:
                del self._incoming[key]

    # ----------------------------------------------------------------- liveness

    async def _pinger(self) -> None:
        while True:
            await trio.sleep(self.config.ping_interval_s)
            with trio.move_on_after(self.config.ping_timeout_s):
                await self.transport.ping()
                continue
            raise _Closing(CLOSE_PING_TIMEOUT, "ping timeout")
