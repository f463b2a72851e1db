"""The device side: a client that keeps one session with Yggdrasil alive.

:class:`DeviceClient` connects to the gateway with the device's access token - over a websocket,
or over a WebRTC data channel (``transport="webrtc"``) - reconnects by itself
(at once, then with exponential backoff and jitter), refreshes its tokens when the gateway says
they expired, keeps the network map current from presence deltas, answers incoming requests with
the actions it was given, and reports everything else as events.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import httpx
import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    open_websocket_url,
)

from actors import Mailbox, Overflow

from ..protocol import (
    CLOSE_REPLACED,
    MAX_FRAME_BYTES,
    Ack,
    Acks,
    Bye,
    ChatMessage,
    ComputeChunk,
    ComputeDone,
    ComputeFail,
    ComputeRequest,
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
    Received,
    Reply,
    ReportAddress,
    Request,
    Response,
    Send,
    Signal,
    SignalFrom,
    ThorAction,
    ThorResult,
    Transport,
    TransportClosed,
    Welcome,
    decode_server_frame,
    encode,
)

log = logging.getLogger(__name__)

Action = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""An executor for incoming requests: ``(from_device, params) -> result``."""


class Credentials(msgspec.Struct):
    api_url: str
    gateway_url: str
    device_id: str
    network_id: str
    access_token: str
    refresh_token: str
    more_gateways: list[str] = []
    """Other instances' gateways of the same cluster: after a failure the client tries the
    next one in turn (behind a load balancer, one address is enough)."""

    def gateways(self) -> list[str]:
        return [self.gateway_url, *self.more_gateways]


class SessionRefused(Exception):
    """The server would not open a session (``status_code`` 401: the access token expired)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code


class ClientError(Exception):
    """Root of the client's errors."""


class NotConnected(ClientError):
    def __init__(self) -> None:
        super().__init__("not connected")


class DeliveryFailed(ClientError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ComputeRefused(ClientError):
    """A compute request was refused before it started (``compute_fail``): ``code`` and the
    server's message; nothing was held or charged."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class SignedOut(ClientError):
    """The refresh token was refused: the device must sign in again."""


class Replaced(ClientError):
    """Another session of this device replaced this one; reconnecting would only take turns."""

    def __init__(self) -> None:
        super().__init__("another session of this device took over")


# Events the client reports.
class Connected(msgspec.Struct, frozen=True):
    welcome: Welcome


class Disconnected(msgspec.Struct, frozen=True):
    code: int | None
    reason: str


class Message(msgspec.Struct, frozen=True):
    from_device: str
    data: bytes


class PresenceChanged(msgspec.Struct, frozen=True):
    device: PeerState
    serial: int


class SignalReceived(msgspec.Struct, frozen=True):
    from_device: str
    kind: str
    payload: bytes


class RequestAnswered(msgspec.Struct, frozen=True):
    from_device: str
    action: str
    result: ThorResult


Event = Connected | Disconnected | Message | PresenceChanged | SignalReceived | RequestAnswered


class _Slot:
    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None


_ACKED = Ack(id=0)
"""What a slot holds for an id acknowledged in an ``acks`` frame (anything but a ``Nack``)."""


class DeviceClient:
    def __init__(
        self,
        credentials: Credentials,
        *,
        actions: dict[str, Action] | None = None,
        on_credentials: Callable[[Credentials], None] | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        events_capacity: int = 1024,
        rng: random.Random | None = None,
        transport: Literal["websocket", "webrtc"] = "websocket",
        relay_only: bool = False,
    ) -> None:
        """``transport="webrtc"`` holds the session over a WebRTC data channel (needs a running
        trio-asyncio loop); ``relay_only`` then uses only Yggdrasil's TURN relay for it."""
        self.credentials = credentials
        self.transport = transport
        self.relay_only = relay_only
        self.actions = dict(actions or {})
        self._on_credentials = on_credentials
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._rng = rng or random.Random()
        self.peers: dict[str, PeerState] = {}
        self.serial = 0
        self.connected = False
        self.connections = 0
        self.events: Mailbox[Event] = Mailbox(events_capacity, Overflow.DROP_OLDEST)
        self._ws: Transport | None = None
        self._send_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Slot] = {}
        self._ready = trio.Event()
        self.signal_handlers: dict[str, Callable[[str, bytes], Awaitable[None]]] = {}
        """Incoming ``signal`` frames by kind; the rest are reported as events."""
        self._signal_waiters: dict[tuple[str, str], _Slot] = {}
        self._computes: dict[int, trio.MemorySendChannel[ComputeChunk | ComputeDone | ComputeFail]]
        self._computes = {}
        self._inboxes: dict[str, trio.MemorySendChannel[bytes]] = {}
        self._attempts = 0
        self._received_upto = 0
        self._receipt_due = trio.Event()

    # ----------------------------------------------------------------- public

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay connected until cancelled; raises :class:`SignedOut` if the tokens are gone and
        :class:`Replaced` if another session of this device took over (4000).

        Reports started at once; :meth:`wait_connected` waits for a session.
        """
        task_status.started()
        attempt = 0
        while True:
            try:
                await self._session()
            except (ConnectionRejected, SessionRefused) as rejected:
                if rejected.status_code == 401:
                    await self._refresh()
                    continue
                log.warning("gateway refused the session: %s", rejected.status_code)
            except ConnectionClosed as closed:
                if closed.reason is not None and closed.reason.code == CLOSE_REPLACED:
                    raise Replaced() from None
            except TransportClosed as closed:
                if closed.code == CLOSE_REPLACED:
                    raise Replaced() from None
            except (
                OSError,
                HandshakeError,
                ProtocolError,
                trio.TooSlowError,
                httpx.HTTPError,
            ):
                pass
            finally:
                if self._ws is not None:
                    attempt = 0  # that session worked: the next try is immediate
                self._disconnected()
            delay = 0.0
            if attempt > 0:
                delay = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
                delay *= 0.5 + 0.5 * self._rng.random()
            attempt += 1
            await trio.sleep(delay)

    async def wait_connected(self) -> None:
        """Return once a session is up (at once if it is)."""
        while not self.connected:
            await self._ready.wait()

    async def send(self, to: str, data: bytes, *, timeout_s: float = 10.0) -> None:
        """Deliver ``data`` to device ``to``; :class:`DeliveryFailed` with the server's reason."""
        frame_id = next(self._ids)
        result = await self._roundtrip(frame_id, Send(id=frame_id, to=to, data=data), timeout_s)
        if isinstance(result, Nack):
            raise DeliveryFailed(result.reason)

    async def report_address(self, addresses: list[str], *, timeout_s: float = 10.0) -> None:
        """Tell the server this device's public addresses changed (learned from STUN, its
        router, a network change): the network's other devices hear of it at once, and a DNS
        name the device has follows. An empty list: the address the server sees.
        :class:`DeliveryFailed` (``invalid``) for what is not up to four unicast addresses."""
        frame_id = next(self._ids)
        frame = ReportAddress(id=frame_id, addresses=addresses)
        result = await self._roundtrip(frame_id, frame, timeout_s)
        if isinstance(result, Nack):
            raise DeliveryFailed(result.reason)

    async def signal(self, to: str, kind: str, payload: bytes, *, timeout_s: float = 10.0) -> None:
        frame_id = next(self._ids)
        frame = Signal(id=frame_id, to=to, kind=kind, payload=payload)
        result = await self._roundtrip(frame_id, frame, timeout_s)
        if isinstance(result, Nack):
            raise DeliveryFailed(result.reason)

    async def request(
        self,
        to: str,
        action: str,
        params: dict[str, Any] | None = None,
        *,
        timeout_s: float = 10.0,
    ) -> ThorResult:
        """Ask device ``to`` to run ``action``; its :class:`ThorResult`, ``ok=False`` on failure."""
        frame_id = next(self._ids)
        frame = Request(
            id=frame_id,
            to=to,
            action=ThorAction(action, params or {}),
            timeout_ms=int(timeout_s * 1000),
        )
        result = await self._roundtrip(frame_id, frame, timeout_s + 5)
        if isinstance(result, Nack):
            return ThorResult(ok=False, error=result.reason)
        assert isinstance(result, ThorResult)
        return result

    async def ask(
        self,
        model: str,
        messages: list[tuple[str, str]] | list[ChatMessage],
        *,
        max_cost: int,
        key: str | None = None,
        max_tokens: int = 1024,
        timeout_s: float = 300.0,
    ) -> AsyncGenerator[str | ComputeDone, None]:
        """Ask the marketplace (``service/geri``) to answer ``messages`` (``(role, content)``
        pairs) with ``model``, charged to this device's user, at most ``max_cost`` cents: the
        answer's pieces as they stream, then the :class:`ComputeDone` that ends it.
        :class:`ComputeRefused` when it was refused before it started; :class:`NotConnected`
        when the session ends first (the request itself goes on: ``key`` finds it again);
        ``trio.TooSlowError`` after ``timeout_s``. ``key`` (default: a fresh one) makes it
        idempotent."""
        frame_id = next(self._ids)
        wire = [m if isinstance(m, ChatMessage) else ChatMessage(m[0], m[1]) for m in messages]
        frame = ComputeRequest(
            id=frame_id,
            model=model,
            messages=wire,
            max_cost=max_cost,
            key=key or f"device-ask-{random.getrandbits(96):024x}",
            max_tokens=max_tokens,
        )
        # Unbounded: the reader must never block, and the server bounds the answer (max_tokens).
        send, receive = trio.open_memory_channel[ComputeChunk | ComputeDone | ComputeFail](math.inf)
        self._computes[frame_id] = send
        deadline = trio.current_time() + timeout_s
        try:
            await self._send(frame)
            while True:
                # (no cancel scope may stay open across a yield)
                with trio.fail_at(deadline):
                    try:
                        answer = await receive.receive()
                    except trio.EndOfChannel:
                        raise NotConnected() from None
                match answer:
                    case ComputeChunk(text=text):
                        yield text
                    case ComputeDone():
                        yield answer
                        return
                    case ComputeFail(code=code, message=message):
                        raise ComputeRefused(code, message)
        finally:
            self._computes.pop(frame_id, None)
            send.close()
            receive.close()

    async def ask_all(
        self,
        model: str,
        messages: list[tuple[str, str]] | list[ChatMessage],
        *,
        max_cost: int,
        key: str | None = None,
        max_tokens: int = 1024,
        timeout_s: float = 300.0,
    ) -> tuple[list[str], ComputeDone]:
        """:meth:`ask`, collected: the answer's pieces and how it ended."""
        parts: list[str] = []
        stream = self.ask(
            model, messages, max_cost=max_cost, key=key, max_tokens=max_tokens, timeout_s=timeout_s
        )
        async with contextlib.aclosing(stream):
            async for item in stream:
                if isinstance(item, ComputeDone):
                    return parts, item
                parts.append(item)
        raise NotConnected()

    async def wait_signal(self, peer: str, kind: str, *, timeout_s: float) -> bytes:
        """The payload of the next ``signal`` of ``kind`` from ``peer``; ``trio.TooSlowError``."""
        slot = _Slot()
        self._signal_waiters[(peer, kind)] = slot
        try:
            with trio.fail_after(timeout_s):
                await slot.done.wait()
        finally:
            if self._signal_waiters.get((peer, kind)) is slot:
                del self._signal_waiters[(peer, kind)]
        if slot.value is None:
            raise NotConnected()
        payload: bytes = slot.value
        return payload

    def open_inbox(self, peer: str, capacity: int = 256) -> trio.MemoryReceiveChannel[bytes]:
        """Messages from ``peer`` go here instead of :attr:`events` (a channel's relay path)."""
        send, receive = trio.open_memory_channel[bytes](capacity)
        self._inboxes[peer] = send
        return receive

    def close_inbox(self, peer: str) -> None:
        inbox = self._inboxes.pop(peer, None)
        if inbox is not None:
            inbox.close()

    # ----------------------------------------------------------------- internals

    async def _roundtrip(self, frame_id: int, frame: Any, timeout_s: float) -> Any:
        slot = _Slot()
        self._pending[frame_id] = slot
        try:
            await self._send(frame)
            with trio.fail_after(timeout_s):
                await slot.done.wait()
        finally:
            self._pending.pop(frame_id, None)
        if slot.value is None:
            raise NotConnected()
        return slot.value

    async def _send(self, frame: Any) -> None:
        ws = self._ws
        if ws is None:
            raise NotConnected()
        async with self._send_lock:  # one writer at a time on the socket
            try:
                await ws.send_message(encode(frame))
            except (ConnectionClosed, TransportClosed):
                raise NotConnected() from None

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[Transport]:
        if self.transport == "webrtc":
            from ._webrtc import open_webrtc  # aiortc loads only for WebRTC sessions

            async with open_webrtc(
                self.credentials.api_url,
                self.credentials.device_id,
                self.credentials.access_token,
                relay_only=self.relay_only,
            ) as channel:
                yield channel
            return
        headers = [(b"authorization", f"Bearer {self.credentials.access_token}".encode())]
        gateways = self.credentials.gateways()
        url = gateways[self._attempts % len(gateways)]
        self._attempts += 1
        async with open_websocket_url(
            url,
            extra_headers=headers,
            max_message_size=MAX_FRAME_BYTES,
            connect_timeout=10,
            disconnect_timeout=2,
        ) as ws:
            yield ws

    async def _session(self) -> None:
        async with self._connect() as ws:
            # Receipts: this client confirms what it receives, and its sends are acknowledged
            # once their recipient confirmed them; several at once in an ``acks`` frame (a
            # server that does not know the option answers with ``ack`` frames, also handled).
            hello = Hello(client="yggdrasil-device", receipts=True, acks="batch")
            await ws.send_message(encode(hello))
            with trio.fail_after(10):
                welcome = decode_server_frame(await ws.get_message())
            if not isinstance(welcome, Welcome):
                raise ProtocolError(f"expected welcome, got {type(welcome).__name__}")
            self._ws = ws
            self.connected = True
            self.connections += 1
            self.serial = welcome.serial
            self.peers = {p.device_id: p for p in welcome.devices}
            self._ready.set()
            self._emit(Connected(welcome))
            self._received_upto = 0
            self._attempts -= 1  # the same gateway first again, should this session end
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._confirm_receipts)
                    while True:
                        frame = decode_server_frame(await ws.get_message())
                        await self._dispatch(frame, nursery)
            except BaseExceptionGroup as group:
                closed = _sole(group)
                if isinstance(closed, TransportClosed):
                    self._emit(Disconnected(closed.code, closed.reason))
                    raise closed from None
                if not isinstance(closed, ConnectionClosed):
                    raise
                reason = closed.reason
                code = reason.code if reason is not None else None
                self._emit(Disconnected(code, (reason.reason or "") if reason is not None else ""))
                raise closed from None

    async def _dispatch(self, frame: Any, nursery: trio.Nursery) -> None:
        match frame:
            case Ack(id=frame_id) | Nack(id=frame_id):
                self._resolve(frame_id, frame)
            case Acks(ids=ids):
                for frame_id in ids:
                    self._resolve(frame_id, _ACKED)
            case Response(id=frame_id, result=result):
                self._resolve(frame_id, result)
            case Deliver(from_=sender, data=data, seq=seq):
                inbox = self._inboxes.get(sender)
                if inbox is None:
                    self._emit(Message(sender, data))
                else:
                    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                        inbox.send_nowait(data)
                if seq:
                    self._received_upto = seq
                    self._receipt_due.set()
            case Presence(serial=serial, device=device):
                self.peers[device.device_id] = device
                self.serial = max(self.serial, serial)
                self._emit(PresenceChanged(device, serial))
            case SignalFrom(from_=sender, kind=kind, payload=payload):
                waiter = self._signal_waiters.pop((sender, kind), None)
                handler = self.signal_handlers.get(kind)
                if waiter is not None:
                    waiter.value = payload
                    waiter.done.set()
                elif handler is not None:
                    nursery.start_soon(handler, sender, payload)
                else:
                    self._emit(SignalReceived(sender, kind, payload))
            case ComputeChunk(id=frame_id) | ComputeDone(id=frame_id) | ComputeFail(id=frame_id):
                compute = self._computes.get(frame_id)
                if compute is not None:
                    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                        compute.send_nowait(frame)
            case Incoming():
                nursery.start_soon(self._execute, frame)
            case Ping(nonce=nonce):
                await self._send(Pong(nonce=nonce))
            case Error(code=code, message=message):
                log.warning("server error %s: %s", code, message)
            case Bye(code=code, reason=reason):
                raise TransportClosed(code, reason)
            case _:
                pass

    async def _confirm_receipts(self) -> None:
        """Tell the server what arrived: one cumulative ``received`` for what came in within a
        couple of milliseconds, not one per message."""
        while True:
            await self._receipt_due.wait()
            self._receipt_due = trio.Event()
            await trio.sleep(0.002)
            await self._send(Received(upto=self._received_upto))

    async def _execute(self, frame: Incoming) -> None:
        action = self.actions.get(frame.action.action)
        if action is None:
            result = ThorResult(ok=False, error="unknown_action")
        else:
            try:
                with trio.fail_after(max(0.001, frame.timeout_ms / 1000)):
                    result = ThorResult(
                        ok=True, result=await action(frame.from_, frame.action.params)
                    )
            except trio.TooSlowError:
                result = ThorResult(ok=False, error="timeout")
            except Exception as exc:  # the executor's failure is the requester's answer
                result = ThorResult(ok=False, error=type(exc).__name__)
        self._emit(RequestAnswered(frame.from_, frame.action.action, result))
        with contextlib.suppress(NotConnected):  # the requester learns "timeout" instead
            await self._send(Reply(id=frame.id, result=result))

    def _resolve(self, frame_id: int, value: Any) -> None:
        slot = self._pending.get(frame_id)
        if slot is not None and not slot.done.is_set():
            slot.value = value
            slot.done.set()

    def _emit(self, event: Event) -> None:
        self.events.put_nowait(event)

    def _disconnected(self) -> None:
        self._ws = None
        self.connected = False
        if self._ready.is_set():  # a fresh event for the next wait; waiters on an unset one stay
            self._ready = trio.Event()
        for slot in self._pending.values():
            slot.done.set()  # value None: NotConnected
        for compute in self._computes.values():
            compute.close()  # the stream ends without its done: NotConnected

    async def _refresh(self) -> None:
        body = {
            "refresh_token": self.credentials.refresh_token,
            "device_id": self.credentials.device_id,
            "network_id": self.credentials.network_id,
        }
        try:
            async with httpx.AsyncClient(base_url=self.credentials.api_url, timeout=10) as http:
                response = await http.post("/api/v1/auth/refresh", json=body)
        except httpx.HTTPError:
            await trio.sleep(self.backoff_base_s)
            return
        if response.status_code == 401:
            raise SignedOut("the refresh token was refused; sign in again")
        if response.status_code != 200:
            await trio.sleep(self.backoff_base_s)
            return
        session = response.json()
        self.credentials = msgspec.structs.replace(
            self.credentials,
            access_token=session["access_token"],
            refresh_token=session["refresh_token"],
        )
        if self._on_credentials is not None:
            self._on_credentials(self.credentials)


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The only exception inside nested groups, or the group if there are several."""
    current: BaseException = group
    while isinstance(current, BaseExceptionGroup) and len(current.exceptions) == 1:
        current = current.exceptions[0]
    return current


async def echo(from_device: str, params: dict[str, Any]) -> Any:
    """Built-in action: the parameters back."""
    return params


async def whoami(from_device: str, params: dict[str, Any]) -> Any:
    return {"asked_by": from_device}


BUILTIN_ACTIONS: dict[str, Action] = {"echo": echo, "whoami": whoami}
