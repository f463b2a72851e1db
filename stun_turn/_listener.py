"""The trio driver of :class:`TurnCore`: STUN/TURN over UDP and over TCP on one port number.

UDP sockets (the listening one, and one per allocation's relayed address) are drained in batches:
wait until readable once, then non-blocking ``recvfrom`` until it would block, handling each
datagram in plain Python (PERFORMANCE.md: the scheduler runs once per batch, not per packet).
Sends never wait: a datagram that does not fit a socket buffer is dropped and counted, so one slow
peer never holds up the loop.

Over TCP, and TLS on its own port when a certificate is configured (RFC 8656 section 5), each
connection is a client of its own: frames are STUN messages or ChannelData padded to four bytes,
one writer task per connection drains a bounded queue, and a client that does not keep up loses
frames rather than growing memory. Closing the connection ends its allocation. Relayed addresses
are UDP either way. A TLS connection takes the context current when it is accepted, so a renewed
certificate reaches new connections while established ones keep theirs.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
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
_TCP_IDLE_S = 600.0
_RETRYABLE = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)

ContextSource: TypeAlias = Callable[[], ssl.SSLContext]
"""Called once per accepted TLS connection for the context to use; must not raise."""


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
        self._relays: dict[int, tuple[socket.socket, trio.CancelScope]] = {}
        self._streams: dict[Client, trio.MemorySendChannel[bytes]] = {}
        self._next_id = 0
        self._next_port = 0
        self._nursery: trio.Nursery | None = None

    async def serve(
        self, core: TurnCore, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; reports the bound address. Every socket is closed on exit."""
        self.core = core
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener, tcp_listeners = await self._bind_pair(family)
        try:
            self._listener = listener
            self.address = listener.getsockname()[:2]
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._drain_clients, listener)
                nursery.start_soon(self._expire)
                if tcp_listeners:
                    nursery.start_soon(trio.serve_listeners, self._serve_stream, tcp_listeners)
                if self.ssl_context is not None and self.tls_port is not None:
                    raw = await trio.open_tcp_listeners(self.tls_port, host=self.host)
                    self.tls_address = raw[0].socket.getsockname()[:2]
                    context = self.ssl_context
                    secure = [_TlsListener(listener, context) for listener in raw]
                    nursery.start_soon(trio.serve_listeners, self._serve_stream, secure)
                task_status.started(self.address)
        finally:
            for sock, _ in self._relays.values():
                sock.close()
            self._relays.clear()
            listener.close()

    async def _bind_pair(
        self, family: socket.AddressFamily
    ) -> tuple[socket.socket, list[trio.SocketListener]]:
        """The UDP socket and, on the same port number, the TCP listeners.

        With port 0 the UDP port is picked first; if that number is taken for TCP, try another.
        """
        for _ in range(1 if self.port else 20):
            listener = socket.socket(family, socket.SOCK_DGRAM)
            listener.setblocking(False)
            try:
                listener.bind((self.host, self.port))
                if not self.tcp:
                    return listener, []
                port = listener.getsockname()[1]
                return listener, await trio.open_tcp_listeners(port, host=self.host)
            except OSError as exc:
                listener.close()
                if self.port or exc.errno != errno.EADDRINUSE:
                    raise
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
        if family not in self.relay_families:
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
            scope = trio.CancelScope()
            self._relays[relay_id] = (sock, scope)
            assert self._nursery is not None
            self._nursery.start_soon(self._drain_peers, relay_id, sock, scope)
            return relay_id, (advertised, port)
        return None

    def _close_relay(self, relay_id: int) -> None:
        entry = self._relays.pop(relay_id, None)
        if entry is not None:
            sock, scope = entry
            scope.cancel()
            sock.close()

    # ----------------------------------------------------------------- UDP loops

    async def _drain(
        self, sock: socket.socket, handle: Callable[[float, Address, bytes], list[Output]]
    ) -> None:
        """Read ``sock`` in batches, handing each datagram to ``handle``, until cancelled."""
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            for _ in range(_BATCH):
                try:
                    data, source = sock.recvfrom(_MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError as exc:  # ICMP errors surface here on some systems
                    if exc.errno in _RETRYABLE:
                        continue
                    raise
                self._apply(handle(now, source[:2], data))
            await trio.lowlevel.checkpoint()

    async def _drain_clients(self, sock: socket.socket) -> None:
        core = self.core
        assert core is not None
        await self._drain(
            sock, lambda now, source, data: core.handle_client(now, Client("udp", source), data)
        )

    async def _drain_peers(
        self, relay_id: int, sock: socket.socket, scope: trio.CancelScope
    ) -> None:
        core = self.core
        assert core is not None
        with scope:
            await self._drain(
                sock, lambda now, source, data: core.handle_peer(now, relay_id, source, data)
            )

    async def _expire(self) -> None:
        core = self.core
        assert core is not None
        while True:
            await trio.sleep(1.0)
            self._apply(core.expire(trio.current_time()))

    # ----------------------------------------------------------------- TCP

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        """One TCP or TLS connection, and the error boundary around it: whatever goes wrong ends
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
        if len(self._streams) >= self.max_tcp_connections:
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
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        buffer += chunk
                        while (size := stream_frame_length(buffer)) is not None and len(
                            buffer
                        ) >= size:
                            frame = bytes(buffer[:size])
                            del buffer[:size]
                            if is_channel_data(frame):
                                length = int.from_bytes(frame[2:4], "big")
                                frame = frame[: 4 + length]
                            self._apply(core.handle_client(trio.current_time(), client, frame))
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
                entry = self._relays.get(output.relay_id)
                if entry is not None:
                    self._send(entry[0], output.data, output.peer)
            elif isinstance(output, CloseRelay):
                self._close_relay(output.relay_id)

    def _to_stream(self, client: Client, data: bytes) -> None:
        channel = self._streams.get(client)
        if channel is None:
            return
        if is_channel_data(data) and len(data) % 4:
            data += b"\x00" * (-len(data) % 4)  # ChannelData is padded on streams (RFC 8656 12.5)
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
