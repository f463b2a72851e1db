"""The trio driver of :class:`TurnCore` over UDP.

Each socket (the listening one, and one per allocation's relayed address) is drained in batches:
wait until it is readable once, then read with non-blocking ``recvfrom`` until it would block,
handling each datagram in plain Python (PERFORMANCE.md: the scheduler runs once per batch, not
once per packet). Sends are non-blocking too: a datagram that does not fit is dropped and counted,
so one slow peer never holds up the loop.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterable

import trio

from ._server import Address, CloseRelay, Output, ToClient, ToPeer, TurnCore

log = logging.getLogger(__name__)
_MAX_DATAGRAM = 65535
_BATCH = 256


class UdpTurnServer:
    """Owns the sockets; the core decides. Relay ports come from ``relay_ports``."""

    def __init__(self, host: str, port: int, relay_host: str, relay_ports: range) -> None:
        self.host = host
        self.port = port
        self.relay_host = relay_host
        self.relay_ports = relay_ports
        self.address: Address = (host, port)
        self.core: TurnCore | None = None
        self.dropped = 0
        self._listener: socket.socket | None = None
        self._relays: dict[int, tuple[socket.socket, trio.CancelScope]] = {}
        self._next_id = 0
        self._next_port = 0
        self._nursery: trio.Nursery | None = None

    async def serve(
        self, core: TurnCore, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; reports the bound address. Every socket is closed on exit."""
        self.core = core
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_DGRAM)
        try:
            listener.setblocking(False)
            listener.bind((self.host, self.port))
            self._listener = listener
            self.address = listener.getsockname()[:2]
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._drain_clients, listener)
                nursery.start_soon(self._expire)
                task_status.started(self.address)
        finally:
            for sock, _ in self._relays.values():
                sock.close()
            self._relays.clear()
            listener.close()

    # ----------------------------------------------------------------- relay sockets

    def open_relay(self, family: int, even: bool) -> tuple[int, Address] | None:
        """Bind a relay socket from the port range (the core calls this synchronously)."""
        if family != 1 or ":" in self.relay_host:
            return None  # IPv4 relays only, for now
        span = len(self.relay_ports)
        for _ in range(span):
            port = self.relay_ports[self._next_port % span]
            self._next_port += 1
            if even and port % 2:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.relay_host, port))
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
            return relay_id, (self.relay_host, port)
        return None

    def _close_relay(self, relay_id: int) -> None:
        entry = self._relays.pop(relay_id, None)
        if entry is not None:
            sock, scope = entry
            scope.cancel()
            sock.close()

    # ----------------------------------------------------------------- loops

    async def _drain_clients(self, sock: socket.socket) -> None:
        core = self.core
        assert core is not None
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            for _ in range(_BATCH):
                try:
                    data, source = sock.recvfrom(_MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError as exc:  # ICMP errors surface here on some systems
                    if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                        continue
                    raise
                self._apply(core.handle_client(now, source[:2], data))
            await trio.lowlevel.checkpoint()

    async def _drain_peers(
        self, relay_id: int, sock: socket.socket, scope: trio.CancelScope
    ) -> None:
        core = self.core
        assert core is not None
        with scope:
            while True:
                await trio.lowlevel.wait_readable(sock)
                now = trio.current_time()
                for _ in range(_BATCH):
                    try:
                        data, source = sock.recvfrom(_MAX_DATAGRAM)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                            continue
                        raise
                    self._apply(core.handle_peer(now, relay_id, source[:2], data))
                await trio.lowlevel.checkpoint()

    async def _expire(self) -> None:
        core = self.core
        assert core is not None
        while True:
            await trio.sleep(1.0)
            self._apply(core.expire(trio.current_time()))

    def _apply(self, outputs: Iterable[Output]) -> None:
        for output in outputs:
            if isinstance(output, ToClient):
                self._send(self._listener, output.data, output.client)
            elif isinstance(output, ToPeer):
                entry = self._relays.get(output.relay_id)
                if entry is not None:
                    self._send(entry[0], output.data, output.peer)
            elif isinstance(output, CloseRelay):
                self._close_relay(output.relay_id)

    def _send(self, sock: socket.socket | None, data: bytes, address: Address) -> None:
        if sock is None:
            return
        try:
            sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1  # a full socket buffer: drop, never wait
        except OSError:
            self.dropped += 1
