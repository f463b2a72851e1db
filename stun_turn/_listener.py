"""The trio driver of :class:`TurnCore`: STUN/TURN over UDP and over TCP on one port number.

One readiness loop serves every plain socket: the UDP listener, each allocation's relay socket,
the TCP listener and every TCP connection are registered in one ``selectors`` object (epoll on
Linux, kqueue on the BSDs), whose own descriptor trio waits on. trio therefore wakes once per
batch of ready sockets, not once per socket or per datagram (PERFORMANCE.md); each ready socket
is drained with non-blocking ``recvfrom``/``recv`` until it would block (at most ``_BATCH`` per
round, so that one busy socket cannot starve the others), and every datagram is handled in plain
Python. ChannelData, the hot path, goes through :meth:`TurnCore.channel_to_peer` and
:meth:`TurnCore.peer_to_client` (a struct unpack and dict lookups, no message objects) and is
sent at once with a non-blocking ``sendto``: a datagram that does not fit a socket buffer is
dropped and counted, so one slow peer never holds up the loop.

Over TCP each connection is a client of its own: a read takes what is there (up to 64 KiB), every
complete frame in it (STUN messages, or ChannelData padded to four bytes) is handled, and what
the round produced for a connection goes out in one ``send`` at the end of the round (what the
kernel does not take waits, the socket is watched for writability; past ``_TCP_PENDING`` bytes
waiting, frames are dropped and counted rather than growing memory). No task per connection and
no task switch per frame. Closing the connection ends its allocation.

TLS, on its own port when a certificate is configured (RFC 8656 section 5), runs one trio task
per connection (trio's ``SSLStream``) with one writer task that sends every queued frame in one
write. A TLS connection takes the context current when it is accepted, so a renewed certificate
reaches new connections while established ones keep theirs. Relayed addresses are UDP always.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import ssl
import struct
from collections.abc import Callable, Iterable
from typing import TypeAlias

import trio

from ._codec import is_channel_data, stream_frame_length
from ._errors import StunDecodeError
from ._server import Address, Client, CloseRelay, Output, ToClient, ToPeer, TurnCore

log = logging.getLogger(__name__)
_MAX_DATAGRAM = 65535
_BATCH = 256
_TCP_QUEUE = 256
_TCP_PENDING = 256 * 1024
"""Bytes that may wait for one TCP connection; beyond, frames for it are dropped and counted."""
_TCP_READ = 65536
_SOCKET_BUFFER = 4 * 1024 * 1024
_TCP_IDLE_S = 600.0
_RETRYABLE = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)
_LENGTH = struct.Struct("!H")
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# What a registered socket is (the first item of its selector key's data).
_UDP_LISTENER, _RELAY, _TCP_LISTENER, _TCP_CONNECTION = range(4)

ContextSource: TypeAlias = Callable[[], ssl.SSLContext]
"""Called once per accepted TLS connection for the context to use; must not raise."""


def _large_buffers(sock: socket.socket) -> None:
    """Room for ``_SOCKET_BUFFER`` bytes each way (the kernel caps it at ``net.core.rmem_max``
    and ``wmem_max``): every client's datagrams share the listening socket, and the buffer must
    cover the moments the process is not scheduled, or they are lost in the kernel."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)


class _Connection:
    """A plain TCP client connection, served by the readiness loop."""

    __slots__ = ("client", "closed", "events", "inbox", "last", "outbox", "queued", "sock")

    def __init__(self, sock: socket.socket, client: Client, now: float) -> None:
        self.sock = sock
        self.client = client
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.queued = False  # in the listener's list of connections to write to
        self.closed = False
        self.events = _READ
        self.last = now


class _TlsListener(trio.abc.Listener[trio.SSLStream[trio.SocketStream]]):
    """Like ``trio.SSLListener``, but the context comes from ``context()`` at each accept, so
    that new connections see a reloaded certificate and established ones keep theirs."""

    def __init__(self, transport: trio.SocketListener, context: ContextSource) -> None:
        self.transport = transport
        self._context = context

    async def accept(self) -> trio.SSLStream[trio.SocketStream]:
        stream = await self.transport.accept()
        return trio.SSLStream(stream, self._context(), server_side=True)

    async def aclose(self) -> None:
        await self.transport.aclose()


class TurnListener:
    """Owns the sockets; the core decides. Relay ports come from ``relay_ports``.

    IPv4 relays bind to ``relay_host`` and are advertised as ``external_ip`` (the public address
    of a 1:1 NAT, when there is one); IPv6 relays bind to ``relay_host_v6`` and exist only if it
    is set.
    """

    def __init__(
        self,
        host: str,
        port: int,
        relay_host: str,
        relay_ports: range,
        *,
        relay_host_v6: str = "",
        external_ip: str = "",
        tcp: bool = True,
        max_tcp_connections: int = 10_000,
        tls_port: int | None = None,
        ssl_context: ssl.SSLContext | ContextSource | None = None,
    ) -> None:
        """``ssl_context``: TLS on ``tls_port``, with one context, or with the one a
        :data:`ContextSource` gives when a connection is accepted."""
        self.host = host
        self.port = port
        self.relay_host = relay_host
        self.relay_host_v6 = relay_host_v6
        self.external_ip = external_ip or relay_host
        self.relay_ports = relay_ports
        self.tcp = tcp
        self.max_tcp_connections = max_tcp_connections
        self.tls_port = tls_port
        self.ssl_context: ContextSource | None
        if isinstance(ssl_context, ssl.SSLContext):
            fixed = ssl_context
            self.ssl_context = lambda: fixed
        else:
            self.ssl_context = ssl_context
        self.tls_address: Address | None = None
        self.address: Address = (host, port)
        self.core: TurnCore | None = None
        self.dropped = 0
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._relays: dict[int, socket.socket] = {}
        self._connections: dict[Client, _Connection] = {}
        self._pending: list[_Connection] = []
        self._paused: list[socket.socket] = []
        self._streams: dict[Client, trio.MemorySendChannel[bytes]] = {}
        self._next_id = 0
        self._next_port = 0

    async def serve(
        self, core: TurnCore, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; reports the bound address. Every socket is closed on exit."""
        self.core = core
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        selector = selectors.DefaultSelector()
        tcp_listeners: list[socket.socket] = []
        listener: socket.socket | None = None
        try:
            listener, tcp_listeners = await self._bind_pair(family)
            self._listener = listener
            self._selector = selector
            self.address = listener.getsockname()[:2]
            selector.register(listener, _READ, (_UDP_LISTENER, None))
            for sock in tcp_listeners:
                selector.register(sock, _READ, (_TCP_LISTENER, None))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._loop, selector)
                nursery.start_soon(self._expire)
                if self.ssl_context is not None and self.tls_port is not None:
                    raw = await trio.open_tcp_listeners(self.tls_port, host=self.host)
                    self.tls_address = raw[0].socket.getsockname()[:2]
                    context = self.ssl_context
                    secure = [_TlsListener(listener, context) for listener in raw]
                    nursery.start_soon(trio.serve_listeners, self._serve_stream, secure)
                task_status.started(self.address)
        finally:
            for sock in self._relays.values():
                sock.close()
            self._relays.clear()
            for connection in self._connections.values():
                connection.closed = True
                connection.sock.close()
            self._connections.clear()
            self._pending.clear()
            for sock in tcp_listeners:
                sock.close()
            if listener is not None:
                listener.close()
            self._selector = None
            selector.close()

    async def _bind_pair(
        self, family: socket.AddressFamily
    ) -> tuple[socket.socket, list[socket.socket]]:
        """The UDP socket and, on the same port number, the TCP listeners (non-blocking).

        With port 0 the UDP port is picked first; if that number is taken for TCP, try another.
        """
        for _ in range(1 if self.port else 20):
            listener = socket.socket(family, socket.SOCK_DGRAM)
            listener.setblocking(False)
            _large_buffers(listener)
            try:
                listener.bind((self.host, self.port))
                if not self.tcp:
                    return listener, []
                port = listener.getsockname()[1]
                bound = await trio.open_tcp_listeners(port, host=self.host)
            except OSError as exc:
                listener.close()
                if self.port or exc.errno != errno.EADDRINUSE:
                    raise
                continue
            # trio binds them (addresses, SO_REUSEADDR, IPV6_V6ONLY); the readiness loop owns them.
            plain = [socket.socket(fileno=each.socket.detach()) for each in bound]
            for sock in plain:
                sock.setblocking(False)
            return listener, plain
        raise OSError(errno.EADDRINUSE, "no port number free for both UDP and TCP")

    # ----------------------------------------------------------------- relay sockets

    @property
    def relay_families(self) -> frozenset[int]:
        """The address families relays can have (RFC 8656: 1 is IPv4, 2 is IPv6)."""
        families = set()
        if self.relay_host and ":" not in self.relay_host:
            families.add(1)
        if self.relay_host_v6:
            families.add(2)
        return frozenset(families)

    def open_relay(self, family: int, even: bool) -> tuple[int, Address] | None:
        """Bind a relay socket from the port range (the core calls this synchronously)."""
        if family not in self.relay_families or self._selector is None:
            return None
        if family == 2:
            host, advertised, kind = self.relay_host_v6, self.relay_host_v6, socket.AF_INET6
        else:
            host, advertised, kind = self.relay_host, self.external_ip, socket.AF_INET
        span = len(self.relay_ports)
        for _ in range(span):
            port = self.relay_ports[self._next_port % span]
            self._next_port += 1
            if even and port % 2:
                continue
            sock = socket.socket(kind, socket.SOCK_DGRAM)
            try:
                if kind == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            self._next_id += 1
            relay_id = self._next_id
            self._relays[relay_id] = sock
            self._selector.register(sock, _READ, (_RELAY, relay_id))
            return relay_id, (advertised, port)
        return None

    def _close_relay(self, relay_id: int) -> None:
        sock = self._relays.pop(relay_id, None)
        if sock is not None:
            if self._selector is not None:
                self._selector.unregister(sock)
            sock.close()

    # ----------------------------------------------------------------- the readiness loop

    async def _loop(self, selector: selectors.BaseSelector) -> None:
        """Wait for any registered socket, serve every ready one, write what is pending; again."""
        fd = selector.fileno()  # type: ignore[attr-defined]  # epoll and kqueue selectors have it
        relays = self._relays
        while True:
            # The one scheduler pass of a round (and the checkpoint that keeps the loop fair): trio
            # returns at once if a socket is still ready, the selector being level-triggered.
            await trio.lowlevel.wait_readable(fd)
            ready = selector.select(0)
            now = trio.current_time()
            for key, events in ready:
                kind, what = key.data
                if kind == _RELAY:
                    if what in relays:  # not closed earlier in this round
                        self._drain_relay(now, relays[what], what)
                elif kind == _UDP_LISTENER:
                    self._drain_clients(now, key.fileobj)  # type: ignore[arg-type]
                elif kind == _TCP_CONNECTION:
                    if what.closed:
                        continue
                    if events & _READ:
                        self._read_connection(now, what)
                    if events & _WRITE and not what.closed and not what.queued:
                        self._write_connection(what)
                else:
                    self._accept(now, key.fileobj)  # type: ignore[arg-type]
            self._write_pending()

    def _drain_clients(self, now: float, sock: socket.socket) -> None:
        """Datagrams from clients to the listening address."""
        core = self.core
        assert core is not None
        relays = self._relays
        for _ in range(_BATCH):
            try:
                data, source = sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:  # ICMP errors surface here on some systems
                if exc.errno in _RETRYABLE:
                    continue
                raise
            client = Client("udp", source[:2])
            if data and 0x40 <= data[0] <= 0x7F:  # ChannelData
                relayed = core.channel_to_peer(now, client, data)
                if relayed is not None:
                    relay = relays.get(relayed[0])
                    if relay is not None:
                        try:
                            relay.sendto(relayed[2], relayed[1])
                        except OSError:  # a full buffer or an unreachable peer: drop, never wait
                            self.dropped += 1
            else:
                self._apply(core.handle_client(now, client, data))

    def _drain_relay(self, now: float, sock: socket.socket, relay_id: int) -> None:
        """Datagrams from peers to one relayed address."""
        core = self.core
        assert core is not None
        listener = self._listener
        assert listener is not None
        for _ in range(_BATCH):
            try:
                data, source = sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _RETRYABLE:
                    continue
                raise
            relayed = core.peer_to_client(now, relay_id, source[:2], data)
            if relayed is None:
                continue
            client, frame = relayed
            if client.transport == "udp":
                try:
                    listener.sendto(frame, client.address)
                except OSError:
                    self.dropped += 1
            else:
                self._to_stream(client, frame)

    async def _expire(self) -> None:
        core = self.core
        assert core is not None
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            self._apply(core.expire(now))
            if self._paused and self._selector is not None:
                for sock in self._paused:
                    self._selector.register(sock, _READ, (_TCP_LISTENER, None))
                self._paused.clear()
            for connection in list(self._connections.values()):
                if now - connection.last > _TCP_IDLE_S:
                    self._close_connection(connection)
            self._write_pending()

    # ----------------------------------------------------------------- TCP in the loop

    def _accept(self, now: float, sock: socket.socket) -> None:
        assert self._selector is not None
        for _ in range(_BATCH):
            try:
                conn, peer = sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # The connection stays queued and the listener readable: stop watching it
                    # until the next expiry tick rather than spin (as trio.serve_listeners does).
                    log.warning("turn: accepting TCP connections paused: %s", exc)
                    self._selector.unregister(sock)
                    self._paused.append(sock)
                return  # aborted before we took it, or the like: the next one
            if len(self._connections) + len(self._streams) >= self.max_tcp_connections:
                conn.close()
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):  # not every stream socket has it
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = Client("tcp", (peer[0], peer[1]))
            connection = _Connection(conn, client, now)
            self._connections[client] = connection
            self._selector.register(conn, _READ, (_TCP_CONNECTION, connection))

    def _read_connection(self, now: float, connection: _Connection) -> None:
        """Take what the connection has, handle every complete frame in it."""
        core = self.core
        assert core is not None
        try:
            chunk = connection.sock.recv(_TCP_READ)
        except BlockingIOError:
            return
        except OSError:
            self._close_connection(connection)
            return
        if not chunk:
            self._close_connection(connection)
            return
        connection.last = now
        client = connection.client
        buffer = connection.inbox
        if buffer:
            buffer += chunk
            data: bytes | bytearray = buffer
        else:
            data = chunk  # the common case: whole frames in one read, no copy
        end = len(data)
        position = 0
        relays = self._relays
        try:
            while end - position >= 4:
                first = data[position]
                (length,) = _LENGTH.unpack_from(data, position + 2)
                if first < 0x40:
                    size = 20 + length
                elif first <= 0x7F:
                    size = 4 + length + (-length % 4)
                else:
                    raise StunDecodeError("neither STUN nor ChannelData on the stream")
                if end - position < size:
                    break
                if first >= 0x40:
                    relayed = core.channel_to_peer(
                        now, client, bytes(data[position : position + 4 + length])
                    )
                    if relayed is not None:
                        relay = relays.get(relayed[0])
                        if relay is not None:
                            try:
                                relay.sendto(relayed[2], relayed[1])
                            except OSError:
                                self.dropped += 1
                else:
                    frame = bytes(data[position : position + size])
                    self._apply(core.handle_client(now, client, frame))
                position += size
                if connection.closed:
                    return
        except StunDecodeError:
            self._close_connection(connection)  # garbage on the stream: the connection ends
            return
        except Exception:  # the error boundary of one connection
            log.warning("turn stream connection failed", exc_info=True)
            self._close_connection(connection)
            return
        if buffer:
            del buffer[:position]
        elif position < end:
            buffer += chunk[position:]

    def _write_pending(self) -> None:
        """Write what this round produced for each connection, in one ``send`` each."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        for connection in pending:
            connection.queued = False
            if not connection.closed:
                self._write_connection(connection)

    def _write_connection(self, connection: _Connection) -> None:
        outbox = connection.outbox
        if outbox:
            try:
                sent = connection.sock.send(outbox)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close_connection(connection)
                return
            del outbox[:sent]
        events = _READ | _WRITE if outbox else _READ
        if events != connection.events:
            assert self._selector is not None
            connection.events = events
            self._selector.modify(connection.sock, events, (_TCP_CONNECTION, connection))

    def _close_connection(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        if self._selector is not None:
            self._selector.unregister(connection.sock)
        connection.sock.close()
        self._connections.pop(connection.client, None)
        core = self.core
        assert core is not None
        self._apply(core.drop_client(connection.client))

    # ----------------------------------------------------------------- TLS

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        """One TLS connection, and the error boundary around it: whatever goes wrong ends
        this connection only (logged once), never the listener."""
        try:
            await self._client_stream(stream)
        except Exception:
            log.warning("turn stream connection failed", exc_info=True)
        finally:
            await trio.aclose_forcefully(stream)

    async def _client_stream(self, stream: trio.abc.Stream) -> None:
        core = self.core
        assert core is not None
        if len(self._connections) + len(self._streams) >= self.max_tcp_connections:
            await trio.aclose_forcefully(stream)
            return
        try:
            if isinstance(stream, trio.SSLStream):
                transport = "tls"
                peer = stream.transport_stream.socket.getpeername()
            else:
                assert isinstance(stream, trio.SocketStream)
                transport = "tcp"
                peer = stream.socket.getpeername()
        except OSError:
            return  # gone before we looked
        client = Client(transport, (peer[0], peer[1]))
        send, receive = trio.open_memory_channel[bytes](_TCP_QUEUE)
        self._streams[client] = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_stream, stream, receive, nursery.cancel_scope)
                buffer = bytearray()
                while True:
                    with trio.move_on_after(_TCP_IDLE_S):
                        chunk = await stream.receive_some(_TCP_READ)
                        if not chunk:
                            break
                        buffer += chunk
                        now = trio.current_time()
                        while (size := stream_frame_length(buffer)) is not None and len(
                            buffer
                        ) >= size:
                            frame = bytes(buffer[:size])
                            del buffer[:size]
                            if is_channel_data(frame):
                                length = int.from_bytes(frame[2:4], "big")
                                frame = frame[: 4 + length]
                            self._apply(core.handle_client(now, client, frame))
                        self._write_pending()
                        continue
                    break  # idle too long
                nursery.cancel_scope.cancel()
        except (StunDecodeError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # garbage on the stream, a failed TLS handshake or a reset: the connection ends
        finally:
            self._streams.pop(client, None)
            self._apply(core.drop_client(client))

    @staticmethod
    async def _write_stream(
        stream: trio.abc.Stream,
        frames: trio.MemoryReceiveChannel[bytes],
        scope: trio.CancelScope,
    ) -> None:
        """The one writer of a stream, one TLS record per frame: coturn's client (and maybe
        others) reads one message per record over TLS and drops the rest of a batched one."""
        try:
            async for frame in frames:
                await stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()

    # ----------------------------------------------------------------- output

    def _apply(self, outputs: Iterable[Output]) -> None:
        for output in outputs:
            if isinstance(output, ToClient):
                if output.client.transport == "udp":
                    self._send(self._listener, output.data, output.client.address)
                else:
                    self._to_stream(output.client, output.data)
            elif isinstance(output, ToPeer):
                self._send(self._relays.get(output.relay_id), output.data, output.peer)
            elif isinstance(output, CloseRelay):
                self._close_relay(output.relay_id)

    def _to_stream(self, client: Client, data: bytes) -> None:
        if 0x40 <= data[0] <= 0x7F and len(data) % 4:
            data += b"\x00" * (-len(data) % 4)  # ChannelData is padded on streams (RFC 8656 12.5)
        connection = self._connections.get(client)
        if connection is not None:
            if len(connection.outbox) > _TCP_PENDING:
                self.dropped += 1  # the client does not keep up: drop rather than grow
                return
            connection.outbox += data
            if not connection.queued:
                connection.queued = True
                self._pending.append(connection)
            return
        channel = self._streams.get(client)
        if channel is None:
            return
        try:
            channel.send_nowait(data)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += 1

    def _send(self, sock: socket.socket | None, data: bytes, address: Address) -> None:
        if sock is None:
            return
        try:
            sock.sendto(data, address)
        except OSError:  # a full buffer (BlockingIOError) or an unreachable peer: drop, never wait
            self.dropped += 1
