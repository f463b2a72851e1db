"""The gateway's own server side of a websocket (RFC 6455) on wsproto, without trio-websocket.

Devices still speak plain websocket; what changes is the server's side of the connection:

- no task of its own: the session's reader reads the socket (:meth:`ServerWebSocket.get_message`),
  answering pings and the close handshake on the way, and the session's writer writes to it;
- several frames go out in one socket write (:meth:`ServerWebSocket.send_messages`), where
  trio-websocket writes each frame with its own ``send_all``;
- a ping can be sent without a task waiting for its pong (:meth:`ServerWebSocket.send_ping`,
  :attr:`ServerWebSocket.pong_seen`): one timer for all sessions pings them (the gateway's).

Every byte a client sends still passes the :class:`~relay._wsguard.GuardedStream` first (frame
headers checked, oversized messages refused with 1009); the handshake is bounded in time, and a
refused handshake answers with its status and body as before.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Iterable

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from .protocol import TransportClosed

_ABNORMAL = 1006


class HandshakeFailed(Exception):
    """The client did not complete a websocket upgrade request."""


class ServerWebSocket:
    """One accepted client connection: the upgrade, then messages both ways.

    It implements :class:`relay.protocol.Transport` (``get_message``, ``send_message``, ``ping``,
    ``aclose``) plus :meth:`send_messages` and :meth:`send_ping`. Only one task may read at a
    time (the session's reader, or :meth:`aclose` once the reader is gone); writes may come from
    several tasks (the stream serializes them).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        receive_buffer_size: int = 64 * 1024,
        disconnect_timeout_s: float = 2.0,
    ) -> None:
        self._stream = stream
        self.receive_buffer_size = receive_buffer_size
        self.disconnect_timeout_s = disconnect_timeout_s
        self._handshake: WSConnection | None = WSConnection(ConnectionType.SERVER)
        """The upgrade's state (h11's parser), dropped once accepted."""
        self._ws: Connection | None = None
        """The open websocket (frames), once accepted."""
        self._messages: deque[bytes | str] = deque()
        self._parts: list[bytes | str] = []
        self._closed: TransportClosed | None = None
        self._pings: dict[bytes, trio.Event] = {}
        self._ping_ids = itertools.count(1)
        self.pong_seen = 0
        """How many pongs have arrived (the gateway's ping timer compares it)."""
        self.request: Request | None = None

    # ----------------------------------------------------------------- handshake

    async def read_request(self) -> Request:
        """Read the client's upgrade request (the caller bounds the time)."""
        handshake = self._handshake
        assert handshake is not None
        while self.request is None:
            data = await self._receive()
            if not data:
                raise HandshakeFailed("connection closed during the handshake")
            try:
                handshake.receive_data(data)
            except RemoteProtocolError as exc:
                if exc.event_hint is not None:
                    with contextlib.suppress(Exception):
                        await self._stream.send_all(handshake.send(exc.event_hint))
                raise HandshakeFailed(str(exc)) from None
            for event in handshake.events():
                if isinstance(event, Request):
                    self.request = event
                    break
        return self.request

    @property
    def path(self) -> str:
        return self.request.target if self.request is not None else ""

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.request.extra_headers) if self.request is not None else []

    async def accept(self) -> None:
        """Accept the upgrade; from now on only the frame layer is kept (not the request, nor
        h11's parser)."""
        handshake = self._handshake
        assert handshake is not None
        data = handshake.send(AcceptConnection())
        self._ws, self._handshake, self.request = handshake.connection, None, None
        await self._send_bytes(data)

    async def reject(
        self, status: int, *, extra_headers: Iterable[tuple[bytes, bytes]] = (), body: bytes = b""
    ) -> None:
        """Refuse the upgrade with an HTTP ``status`` and ``body``, then end the connection once
        the client has read it (or after the disconnect timeout)."""
        handshake = self._handshake
        assert handshake is not None
        headers = list(extra_headers)
        if body:
            headers.append((b"content-length", str(len(body)).encode("ascii")))
        data = handshake.send(
            RejectConnection(status_code=status, headers=headers, has_body=bool(body))
        )
        if body:
            data += handshake.send(RejectData(data=body))
        self._closed = TransportClosed(None, "rejected")
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._stream.send_all(data)
            with trio.move_on_after(self.disconnect_timeout_s):
                while await self._stream.receive_some(self.receive_buffer_size):
                    pass
        await trio.aclose_forcefully(self._stream)

    # ----------------------------------------------------------------- reading

    async def get_message(self) -> bytes | str:
        """The next whole message; :class:`TransportClosed` once the connection is closed."""
        messages = self._messages
        while not messages:
            if self._closed is not None:
                raise self._closed
            await self._read_once()
        return messages.popleft()

    async def _read_once(self) -> None:
        ws = self._ws
        assert ws is not None
        data = await self._receive()
        if not data:
            self._lost()
            return
        try:
            ws.receive_data(data)
        except RemoteProtocolError as exc:
            self._lost()
            if exc.event_hint is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._stream.send_all(ws.send(exc.event_hint))
            await trio.aclose_forcefully(self._stream)
            return
        for event in ws.events():
            if isinstance(event, Message):
                self._parts.append(event.data)
                if event.message_finished:
                    parts = self._parts
                    if len(parts) == 1:
                        self._messages.append(parts[0])
                    elif isinstance(event, BytesMessage):
                        self._messages.append(b"".join(parts))  # type: ignore[arg-type]
                    else:
                        assert isinstance(event, TextMessage)
                        self._messages.append("".join(parts))  # type: ignore[arg-type]
                    self._parts = []
            elif isinstance(event, Ping):
                await self._send_bytes(ws.send(event.response()))
            elif isinstance(event, Pong):
                self._pong(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                # The client closes: answer (RFC 6455 section 5.5.1), then the server closes TCP.
                if ws.state == ConnectionState.REMOTE_CLOSING:
                    with contextlib.suppress(TransportClosed):
                        await self._send_bytes(ws.send(event.response()))
                self._lost()
                await trio.aclose_forcefully(self._stream)
                return

    async def _receive(self) -> bytes:
        try:
            data = await self._stream.receive_some(self.receive_buffer_size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        return data if isinstance(data, bytes) else bytes(data)

    def _lost(self) -> None:
        if self._closed is None:
            self._closed = TransportClosed()
        for event in self._pings.values():
            event.set()  # a waiting ping() sees the connection gone
        self._pings.clear()

    def _pong(self, payload: bytes) -> None:
        self.pong_seen += 1
        if payload not in self._pings:
            return
        while self._pings:  # a pong answers its ping and every earlier one (RFC 6455 5.5.3)
            key = next(iter(self._pings))
            self._pings.pop(key).set()
            if key == payload:
                break

    # ----------------------------------------------------------------- writing

    def _frames(self) -> Connection:
        if self._ws is None:
            raise self._closed or TransportClosed()
        return self._ws

    async def send_message(self, message: bytes, /) -> None:
        await self._send_bytes(self._frames().send(BytesMessage(data=message)))

    async def send_messages(self, messages: list[bytes], /, *, ping: bool = False) -> None:
        """Send several messages in one write, in order, and a ping after them if asked (its
        pong counts in :attr:`pong_seen`)."""
        send = self._frames().send
        chunks = [send(BytesMessage(data=m)) for m in messages]
        if ping:
            chunks.append(self.ping_frame())
        await self._send_bytes(b"".join(chunks))

    def ping_frame(self) -> bytes:
        """The bytes of a new ping (its pong counts in :attr:`pong_seen`)."""
        return self._frames().send(Ping(payload=next(self._ping_ids).to_bytes(4, "big")))

    async def send_ping(self) -> None:
        """Send a ping and return without waiting for its pong."""
        await self._send_bytes(self.ping_frame())

    async def ping(self, /) -> None:
        """Send a ping and return once its pong (or a later one) has arrived; someone else must
        be reading (the session's reader)."""
        payload = next(self._ping_ids).to_bytes(4, "big")
        arrived = trio.Event()
        self._pings[payload] = arrived
        await self._send_bytes(self._frames().send(Ping(payload=payload)))
        await arrived.wait()
        if self._closed is not None:
            raise self._closed

    async def _send_bytes(self, data: bytes) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lost()
            assert self._closed is not None
            raise self._closed from None

    # ----------------------------------------------------------------- closing

    async def aclose(self, code: int = 1000, reason: str | None = None, /) -> None:
        """Close with ``code``: send the close frame, wait (at most the disconnect timeout)
        for the client's, then close TCP. Idempotent; the reader must be gone."""
        try:
            ws = self._ws
            if self._closed is None and ws is not None and ws.state == ConnectionState.OPEN:
                with trio.move_on_after(self.disconnect_timeout_s):
                    await self._send_bytes(ws.send(CloseConnection(code=code, reason=reason)))
                    while self._closed is None:
                        await self._read_once()
                        self._messages.clear()
        except TransportClosed:
            pass
        finally:
            self._lost()
            await trio.aclose_forcefully(self._stream)
