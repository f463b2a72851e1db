"""The device gateway: a trio-websocket listener that authenticates before the upgrade, and the
WebRTC ingress (sessions over a data channel, offered through the HTTP API).

Each accepted connection runs one :class:`DeviceSession` actor; its task is its error boundary (a
crash closes that one connection and is logged once with the session id). One live session per
device in the cluster, whatever its transport: a new one replaces the old (on any instance), which
closes with 4000 ``replaced``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, urlsplit

import msgspec
import trio

from actors import ByteBudget, ChildSpec, Envelope, Overloaded, Router, Unreachable
from yggdrasil import (
    Forbidden,
    GatewayConfig,
    Invalid,
    InvalidToken,
    Principal,
    RateLimited,
    TokenService,
    Unavailable,
    network_address,
    service_address,
)

from ._messages import Rejoin, Revoke
from ._network import TenantQuota
from ._session import DeviceSession
from ._websocket import HandshakeFailed, ServerWebSocket
from ._wsguard import GuardedListener
from .protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_PING_TIMEOUT,
    MAX_FRAME_BYTES,
    Transport,
    TransportClosed,
)

if TYPE_CHECKING:
    from ._webrtc import Offer

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
_GATEWAY = service_address("gateway")
"""The sender of what the gateway pushes to its sessions (services may reach any network)."""


def _error_body(code: str, message: str) -> bytes:
    return _json.encode({"error": {"code": code, "message": message}})


class ServiceRegistry(Protocol):
    """The TURN peer policy's registry of the server's own endpoints (``stun_turn.PeerPolicy``)."""

    def add_service(self, address: str, port: int, /) -> None: ...

    def discard_service(self, address: str, port: int, /) -> None: ...


NETWORK_CHECK_S = 1.0
"""How often the gateway looks for networks whose actor is gone while sessions of it run here."""


class Gateway:
    """Accepts device connections and runs one :class:`DeviceSession` actor on each.

    It keeps the book of the sessions it runs (their principals, for revocation; their
    networks, for the per-instance quota and to notice a network actor that is gone) and owns
    their lifecycle at shutdown, like a supervisor; everything else reaches a session through
    the router.
    """

    def __init__(
        self,
        router: Router,
        tokens: TokenService,
        config: GatewayConfig,
        *,
        peer_allowed: Callable[[str], bool] = lambda address: False,
        services: ServiceRegistry | None = None,
        relay_aliases: dict[str, str] | None = None,
    ) -> None:
        """``peer_allowed(address)``: whether the server's own ICE agent (WebRTC sessions) may
        send to ``address`` - the TURN peer policy; by default it may send nowhere.
        ``services``: where the UDP endpoints of those peer connections are registered while
        they live, so that a device's TURN relay may reach them (relay-only sessions).
        ``relay_aliases``: the public address of this server's TURN relays -> the address they
        bind to, for the server's own ICE checks toward them."""
        self.router = router
        self.peer_allowed = peer_allowed
        self.services = services
        self.relay_aliases = dict(relay_aliases or {})
        self.tokens = tokens
        self.config = config
        self.sessions: dict[str, DeviceSession] = {}
        """The sessions running here, by session id."""
        self._quotas: dict[str, tuple[TenantQuota, int]] = {}
        """Each network with sessions here: its quota on this instance, and how many."""
        self.queued = ByteBudget(config.queue_bytes_total)
        """The bytes waiting for all devices of this gateway together."""
        self._guards: list[GuardedListener] = []
        self._per_user: Counter[str] = Counter()
        self.accepted = 0
        self.rejected = 0
        self.url = ""
        self._nursery: trio.Nursery | None = None
        self._ping_at: deque[tuple[float, DeviceSession, ServerWebSocket]] = deque()
        """Websocket sessions by when they are pinged next (one interval for all: in order)."""
        self._pong_by: deque[tuple[float, DeviceSession, ServerWebSocket, int]] = deque()
        """Pings sent: by when a pong must have come, and how many had come before."""

    async def serve(
        self,
        host: str,
        port: int,
        *,
        stopping: trio.Event,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until ``stopping`` is set, then close every session with 1001 (going away)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # Every connection's bytes pass a frame guard before wsproto sees them, so a
            # protocol violation closes with RFC 6455's code at once (relay._wsguard).
            sockets = await trio.open_tcp_listeners(port, host=host)
            self._guards = [GuardedListener(listener, MAX_FRAME_BYTES) for listener in sockets]
            await nursery.start(
                functools.partial(trio.serve_listeners, handler_nursery=nursery),
                self._connection,
                self._guards,
            )
            address, bound_port = sockets[0].socket.getsockname()[:2]
            url = f"ws://{address}:{bound_port}"
            if ":" in str(address):
                url = f"ws://[{address}]:{bound_port}"
            self.url = url
            log.info("gateway listening on %s", url, extra={"listener": "gateway", "url": url})
            task_status.started(url)
            nursery.start_soon(self._watch_networks)
            nursery.start_soon(self._ping_timer)
            await stopping.wait()
            self._nursery = None  # no new WebRTC sessions
            for session in list(self.sessions.values()):
                session.close(CLOSE_GOING_AWAY, "server shutting down")  # as their owner
            with trio.move_on_after(5):
                for session in list(self.sessions.values()):
                    await session.closed.wait()
            nursery.cancel_scope.cancel()

    def statistics(self) -> dict[str, int]:
        """Counters and gauges for the metrics endpoint."""
        return {
            "sessions": len(self.sessions),
            "accepted": self.accepted,
            "rejected": self.rejected,
            "queued_bytes": self.queued.used,
            "shed": self.queued.shed,
            "violations": sum(guard.violations for guard in self._guards),
        }

    async def _connection(self, stream: trio.abc.Stream) -> None:
        """One client connection: its upgrade request within the handshake timeout, then
        :meth:`_handle`; the connection is closed when it returns."""
        ws = ServerWebSocket(stream, receive_buffer_size=64 * 1024, disconnect_timeout_s=2.0)
        try:
            with trio.move_on_after(self.config.handshake_timeout_s) as timer:
                await ws.read_request()
            if timer.cancelled_caught:
                return
            await self._handle(ws)
        except HandshakeFailed:
            return
        finally:
            with trio.move_on_after(2.0) as cleanup:
                cleanup.shield = True
                await ws.aclose(CLOSE_GOING_AWAY, "")

    def _authenticate(self, request: ServerWebSocket) -> Principal:
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1") for key, value in request.headers
        }
        token = ""
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = value.strip()
        if not token:
            # Browsers cannot set headers on a websocket; they pass the token in the query.
            token = parse_qs(urlsplit(request.path).query).get("access_token", [""])[0]
        principal = self.tokens.verify(token)
        return principal

    def _origin_allowed(self, request: ServerWebSocket) -> bool:
        for key, value in request.headers:
            if key.lower() == b"origin":
                return value.decode("latin-1") in self.config.allowed_origins
        return True  # not a browser

    async def _handle(self, request: ServerWebSocket) -> None:
        if not self._origin_allowed(request):
            self.rejected += 1
            _refused(403, "origin not allowed")
            await request.reject(403, body=_error_body("forbidden", "origin not allowed"))
            return
        try:
            principal = self._authenticate(request)
        except InvalidToken as exc:
            self.rejected += 1
            _refused(401, exc.message)
            await request.reject(
                401,
                extra_headers=[(b"www-authenticate", b'Bearer error="invalid_token"')],
                body=_error_body(exc.code, exc.message),
            )
            return
        if principal.device_id is None or principal.network_id is None:
            self.rejected += 1
            _refused(403, "not a device's token")
            await request.reject(
                403, body=_error_body("forbidden", "only a device's token opens a session")
            )
            return
        if self._per_user[principal.user_id] >= self.config.max_sessions_per_user:
            self.rejected += 1
            _refused(429, "too many sessions for this account")
            await request.reject(
                429, body=_error_body("rate_limited", "too many sessions for this account")
            )
            return
        await request.accept()
        ws = request
        self.accepted += 1
        self._per_user[principal.user_id] += 1
        try:
            await self._run(ws, principal, MAX_FRAME_BYTES, "websocket", ws)
        finally:
            self._release(principal)

    async def _run(
        self,
        transport: Transport,
        principal: Principal,
        max_frame_bytes: int,
        kind: str,
        websocket: ServerWebSocket | None = None,
    ) -> None:
        """Run one session on ``transport`` (a ``kind``: websocket or webrtc) to its end; a
        ``websocket`` session is pinged by the gateway's timer (:meth:`_ping_timer`)."""
        assert principal.network_id is not None
        network_id = principal.network_id
        quota, count = self._quotas.get(network_id) or (
            TenantQuota(self.config.tenant_messages_per_s, self.config.tenant_bytes_per_s),
            0,
        )
        self._quotas[network_id] = (quota, count + 1)
        session = DeviceSession(
            transport,
            principal,
            self.config,
            instance=self.router.instance_id,
            quota=quota,
            budget=self.queued,
            max_frame_bytes=max_frame_bytes,
            pinged_by=None if websocket is None else functools.partial(self._pinged, websocket),
        )
        self.sessions[session.session_id] = session
        log.info(
            "session=%s device=%s connected over %s",
            session.session_id,
            session.device_id,
            kind,
            extra={
                "session": session.session_id,
                "device": session.device_id,
                "network": network_id,
                "transport": kind,
            },
        )
        try:
            await session.serve(self.router)
        except Exception:
            log.exception("session=%s crashed", session.session_id)
        finally:
            del self.sessions[session.session_id]
            quota, count = self._quotas[network_id]
            if count <= 1:
                del self._quotas[network_id]
            else:
                self._quotas[network_id] = (quota, count - 1)

    # ----------------------------------------------------------------- pushed to sessions

    async def revoked(self) -> None:
        """Tokens were revoked (here or on another instance): every session here whose
        principal is now refused ends at once (4001), through the router like any message."""
        for session in list(self.sessions.values()):
            if self.tokens.is_revoked(session.principal):
                with contextlib.suppress(Unreachable, Overloaded):
                    await self.router.send(
                        Envelope(_GATEWAY, session.address, Revoke()), activate=False
                    )

    async def _watch_networks(self) -> None:
        """A network whose actor is gone (it crashed, or its instance died) while its sessions
        run here: they end (1001) so that their devices reconnect and a new actor starts and
        resyncs them. Seen twice in a row before acting: the directory may lag a fresh join."""
        suspects: set[str] = set()
        while True:
            await trio.sleep(NETWORK_CHECK_S)
            gone: set[str] = set()
            bus = self.router.bus
            for network_id in list(self._quotas):
                address = network_address(network_id)
                holder = None if self.router.is_local(address) else bus.holder(address)
                if self.router.is_local(address) or (holder is not None and bus.alive(holder)):
                    continue
                gone.add(network_id)
            for network_id in gone & suspects:
                log.info("network=%s lost its actor; its sessions here resync", network_id)
                for session in list(self.sessions.values()):
                    if session.network_id == network_id:
                        with contextlib.suppress(Unreachable, Overloaded):
                            await self.router.send(
                                Envelope(_GATEWAY, session.address, Rejoin()), activate=False
                            )
            suspects = gone

    def _pinged(self, websocket: ServerWebSocket, session: DeviceSession) -> None:
        """A websocket session runs: the timer pings it from now on."""
        due = trio.current_time() + self.config.ping_interval_s
        self._ping_at.append((due, session, websocket))

    async def _ping_timer(self) -> None:
        """One timer pings every websocket session here each ``ping_interval_s`` (the session's
        writer sends the ping with its next write) and ends (4003) those whose pong has not come
        within ``ping_timeout_s``: no task per session waits for its pong."""
        interval, timeout = self.config.ping_interval_s, self.config.ping_timeout_s
        tick = min(1.0, max(0.01, min(interval, timeout) / 4))
        ping_at, pong_by = self._ping_at, self._pong_by
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            while ping_at and ping_at[0][0] <= now:
                _, session, websocket = ping_at.popleft()
                if self.sessions.get(session.session_id) is not session:
                    continue  # ended
                pong_by.append((now + timeout, session, websocket, websocket.pong_seen))
                session.want_ping()
                ping_at.append((now + interval, session, websocket))
            while pong_by and pong_by[0][0] <= now:
                _, session, websocket, seen = pong_by.popleft()
                if websocket.pong_seen == seen and session.session_id in self.sessions:
                    session.close(CLOSE_PING_TIMEOUT, "ping timeout")

    def _release(self, principal: Principal) -> None:
        self._per_user[principal.user_id] -= 1
        if self._per_user[principal.user_id] <= 0:
            del self._per_user[principal.user_id]

    # ----------------------------------------------------------------- WebRTC

    async def accept_webrtc(self, principal: Principal, offer_sdp: str) -> str:
        """Answer a device's SDP offer; its session then runs on the offered data channel.

        The caller (the API) has checked that ``principal`` is the device itself. Raises
        :class:`Invalid` for an unusable offer, :class:`RateLimited` past the account's session
        cap, :class:`Unavailable` while the gateway is not serving.
        """
        nursery = self._nursery
        if nursery is None or not self.config.webrtc:
            raise Unavailable("device sessions over WebRTC are not served now")
        if principal.device_id is None or principal.network_id is None:
            raise Forbidden("only a device's token opens a session")
        if self._per_user[principal.user_id] >= self.config.max_sessions_per_user:
            self.rejected += 1
            raise RateLimited(5, "too many sessions for this account")
        from ._webrtc import accept_offer  # aiortc loads on the first offer
        from .protocol import InvalidOffer

        self._per_user[principal.user_id] += 1  # a negotiation counts as a session
        try:
            offer = await accept_offer(
                offer_sdp, peer_allowed=self.peer_allowed, aliases=self.relay_aliases
            )
        except InvalidOffer as exc:
            self._release(principal)
            self.rejected += 1
            raise Invalid(str(exc)) from None
        except BaseException:
            self._release(principal)
            raise
        if self._nursery is not nursery:  # the gateway began to stop meanwhile
            self._release(principal)
            await offer.abandon()
            raise Unavailable("device sessions over WebRTC are not served now")
        nursery.start_soon(self._webrtc_session, principal, offer)
        return offer.answer

    async def _webrtc_session(self, principal: Principal, offer: Offer) -> None:
        services = self.services
        endpoints = offer.local_endpoints()
        if services is not None:
            for host, port in endpoints:
                services.add_service(host, port)
        try:
            try:
                transport = await offer.wait_open(self.config.webrtc_connect_timeout_s)
            except TransportClosed as exc:
                self.rejected += 1
                log.info("webrtc negotiation for a device ended: %s", exc.reason)
                return
            self.accepted += 1
            await self._run(transport, principal, transport.max_message_bytes, "webrtc")
        finally:
            if services is not None:
                for host, port in endpoints:
                    services.discard_service(host, port)
            self._release(principal)


def _refused(status: int, why: str) -> None:
    """One line per refused handshake: the status and why, never the token."""
    log.info(
        "device handshake refused with %d: %s", status, why, extra={"status": status, "why": why}
    )


def gateway_child(gateway: Gateway, host: str, port: int, *, shutdown_s: float) -> ChildSpec:
    """The ``gateway`` child: ``gateway`` listens on ``host:port`` for device websockets while
    it runs; stopping it closes every session it runs (see :meth:`Gateway.serve`)."""
    return ChildSpec(
        "gateway",
        functools.partial(gateway.serve, host, port),
        shutdown_s=shutdown_s,
        graceful=True,
    )
