"""The composition root: builds the supervision tree of one Yggdrasil instance and runs it.

::

    root (rest_for_one)
    ├── mail         delivers queued e-mail (SMTP, or files in <data-dir>/outbox)
    ├── store        opens SQLite or PostgreSQL, applies migrations, builds the domain services
    ├── bus          the router's link to other instances: NATS, or in-process for a single one
    ├── revocations  service/revocations: revocations to and from every instance, pushed to sessions
    ├── revocation-sync  keeps the token check current with the store (the backstop)
    ├── api          quart-trio on hypercorn
    ├── networks     virtual actors, one per active tenant network (presence), started by the router
    ├── gateway      the device websocket listener; one DeviceSession per connected device
    └── turn         STUN and TURN over UDP and TCP

rest_for_one: when the store restarts, everything started after it restarts too and picks up
the new store.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import secrets as _random
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioice.ice
import trio
import trio_asyncio

from actors import Bus, ChildSpec, Codec, InProcessHub, Placement, Router, Strategy, Supervisor
from api import ApiContext, create_app, serve_api
from relay import MESSAGE_TYPES as RELAY_MESSAGES
from relay import Gateway, network_factory
from stun_turn import PeerPolicy, TurnCore, TurnListener, TurnSettings, canonical

from ._addresses import NETWORK, SERVICE, tenant_rule
from ._cluster import NatsBus
from ._config import Config
from ._domain import Domain, DomainHandle
from ._errors import ConfigError, StoreUnavailable, sole_exception
from ._hashing import configure as configure_hashing
from ._ids import now_ms
from ._logging import set_instance
from ._mail import Mailer
from ._metrics import Metrics
from ._revocation_service import MESSAGE_TYPES as REVOCATION_MESSAGES
from ._revocation_service import Revocations
from ._secrets import Secrets, load_or_create
from ._tokens import TokenService
from ._turn import issue_credentials, key_lookup, owner_of
from ._version import VERSION
from .store import Database, PostgresDatabase, SqliteDatabase, migrate

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the children of one instance share. ``domain`` raises ``StoreUnavailable`` while
    the store restarts."""

    config: Config
    secrets: Secrets
    metrics: Metrics
    router: Router
    tokens: TokenService
    mailer: Mailer
    domain: DomainHandle = field(default_factory=DomainHandle)
    gateway: Gateway | None = None
    turn: TurnListener | None = None
    urls: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Running:
    """Reported by :func:`serve` once every listener is bound."""

    api_url: str
    services: Services
    root: Supervisor

    @property
    def gateway_url(self) -> str:
        assert self.services.gateway is not None
        return self.services.gateway.url


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


_WILDCARDS = {"", "0.0.0.0", "::"}


def _default_route_ip() -> str:
    """The local IPv4 address of the default route (a UDP "connect" sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address: str = probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address


def turn_addresses(config: Config) -> tuple[str, str, str]:
    """Where IPv4 relays bind, the address they are advertised with, and the STUN/TURN host
    devices are told to use."""
    relay = config.turn.relay_ip or config.server.host
    if relay in _WILDCARDS or ":" in relay:
        relay = _default_route_ip()
    advertised = config.turn.external_ip or relay
    public = config.turn.public_host or config.server.host
    if public in _WILDCARDS:
        public = advertised
    return relay, advertised, public


def own_addresses(config: Config, *configured: str) -> set[str]:
    """The server's own addresses, which relays must never reach: the configured ones and those
    of every interface."""
    found = {address for address in (config.server.host, *configured) if address}
    found.add(config.turn.relay_ip_v6)
    found.update(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True))
    own = set()
    for address in found:
        try:
            ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            continue  # a host name (public_host) or a wildcard's empty string
        own.add(address)
    return own


def _check_ip(key: str, value: str, version: int) -> None:
    if not value:
        return
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{key} must be an IPv{version} address, not {value!r}") from None
    if address.version != version or address.is_unspecified:
        raise ConfigError(f"{key} must be a specific IPv{version} address, not {value!r}")


def check(config: Config) -> None:
    """Reject configurations that cannot run, before anything starts."""
    url = config.database.url
    if url and not _is_postgres(url):
        raise ConfigError("database.url must be empty (SQLite) or a postgresql:// URL")
    if config.bus.url:
        if not config.bus.url.startswith(("nats://", "tls://")):
            raise ConfigError("bus.url must be empty (in-process) or a nats:// or tls:// URL")
        if not url:
            raise ConfigError(
                "bus.url needs database.url: the instances of a cluster share one PostgreSQL"
            )
    if config.database.pool_min > config.database.pool_max:
        raise ConfigError("database.pool_min must not exceed database.pool_max")
    _check_ip("turn.relay_ip", config.turn.relay_ip, 4)
    _check_ip("turn.external_ip", config.turn.external_ip, 4)
    _check_ip("turn.relay_ip_v6", config.turn.relay_ip_v6, 6)


def prepare_data_dir(config: Config) -> Path:
    path = config.data_path
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {path}: {exc.strerror}") from None
    return path


async def open_database(config: Config) -> Database:
    """Open the configured database once; ``StoreUnavailable`` if it cannot be reached."""
    url = config.database.url
    if _is_postgres(url):
        return await PostgresDatabase.open(
            url,
            min_size=config.database.pool_min,
            max_size=config.database.pool_max,
            query_timeout_s=config.database.query_timeout_s,
        )
    return await SqliteDatabase.open(config.data_path / "yggdrasil.sqlite3")


async def open_database_retrying(config: Config) -> Database:
    """Keep trying for ``database.connect_timeout_s`` (exponential backoff), then give up."""
    deadline = trio.current_time() + config.database.connect_timeout_s
    delay = 0.2
    while True:
        try:
            return await open_database(config)
        except StoreUnavailable as exc:
            if trio.current_time() + delay > deadline:
                raise
            log.warning("store unreachable (%s); retrying in %.1f s", exc.message, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _instance_id(config: Config) -> str:
    if config.server.instance_id:
        return config.server.instance_id
    return f"{socket.gethostname()}-{os.getpid()}-{_random.token_hex(3)}".replace(":", "-")


def build(config: Config, secrets: Secrets, instance_id: str) -> tuple[Supervisor, Services]:
    # One hashing pool per process, whatever runs in it: hashing is bounded process-wide.
    configure_hashing(config.auth.hash_workers, config.auth.hash_queue)
    codec = Codec(*RELAY_MESSAGES, *REVOCATION_MESSAGES)
    bus: Bus = NatsBus(config.bus, codec) if config.bus.url else InProcessHub().bus()
    router = Router(instance_id, bus, rule=tenant_rule)
    metrics = Metrics()
    metrics.router = router
    tokens = TokenService(
        secrets,
        issuer=config.auth.issuer,
        audience=config.auth.audience,
        access_ttl_s=config.auth.access_ttl_s,
    )
    mailer = Mailer(
        sender=config.mail.sender,
        outbox=config.data_path / "outbox",
        smtp_url=config.mail.smtp_url,
        timeout_s=config.mail.timeout_s,
        queue_size=config.mail.queue_size,
    )
    services = Services(config, secrets, metrics, router, tokens, mailer)
    revocations = Revocations(tokens)
    networks = Supervisor("networks", max_restarts=20, period_s=10.0)
    router.define(
        NETWORK,
        factory=network_factory(services.domain, idle_s=config.gateway.network_idle_s),
        supervisor=networks,
        shutdown_s=1.0,
    )
    router.define(SERVICE, placement=Placement.INSTANCE)

    async def mail_child(*, task_status: trio.TaskStatus[None]) -> None:
        await mailer.run(task_status=task_status)

    async def store_child(*, stopping: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        db = await open_database_retrying(config)
        try:
            applied = await migrate(db)
            services.domain.fill(
                Domain.build(db, tokens, mailer, config, on_revoke=revocations.revoke)
            )
            log.info("store ready: %s (%d migrations applied now)", db.description, len(applied))
            task_status.started()
            await stopping.wait()
        finally:
            services.domain.clear()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await db.aclose()

    async def bus_child(*, task_status: trio.TaskStatus[None]) -> None:
        await router.bus.serve(task_status=task_status)

    async def revocation_sync_child(*, task_status: trio.TaskStatus[None]) -> None:
        """Keep this process's token check current with the store's record of revocations:
        the backstop for broadcasts this instance missed."""
        domain = services.domain.get()
        # Older revocations cannot matter: every token they refuse has expired.
        since = now_ms() - (config.auth.access_ttl_s + 60) * 1000
        since = await domain.accounts.load_revocations(since)
        task_status.started()
        while True:
            await trio.sleep(config.auth.revocation_sync_s)
            revision = tokens.revision
            # Look back a little: another instance's clock may run behind ours.
            since = await domain.accounts.load_revocations(since - 60_000)
            revocations.applied(tokens.revision != revision)

    relay_ip, external_ip, public_host = turn_addresses(config)

    def ice_servers(user_id: str, network_id: str, device_id: str) -> dict[str, Any]:
        host = public_host
        port = services.turn.address[1] if services.turn is not None else config.turn.port
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        credentials = issue_credentials(
            secrets.turn_secret,
            f"{user_id}/{network_id}/{device_id}",
            config.turn.credential_ttl_s,
        )
        return {
            "ice_servers": [
                {"urls": [f"stun:{where}"]},
                {
                    "urls": [f"turn:{where}?transport=udp"],
                    "username": credentials.username,
                    "credential": credentials.password,
                },
            ],
            "ttl_s": credentials.ttl_s,
        }

    async def api_child(*, stopping: trio.Event, task_status: trio.TaskStatus[str]) -> None:
        app = create_app(
            ApiContext(
                metrics=metrics,
                domain=services.domain,
                tokens=tokens,
                revoke=revocations.revoke,
                bus_ready=lambda: router.bus.ready,
                ice=ice_servers,
                webrtc=gateway.accept_webrtc,
                version=VERSION,
                limits=config.limits,
                trusted_proxies=config.api.trusted_proxies,
                max_body_bytes=config.api.max_body_bytes,
                body_timeout_s=config.api.body_timeout_s,
                response_timeout_s=config.api.response_timeout_s,
            )
        )

        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(
                functools.partial(
                    serve_api,
                    app,
                    host=config.server.host,
                    port=config.api.port,
                    grace_s=config.server.grace_s,
                    stopping=stopping,
                )
            )
            services.urls["api"] = url
            task_status.started(url)

    peers = PeerPolicy(
        own=own_addresses(config, relay_ip, external_ip, public_host),
        allow=config.turn.allow_peers,
    )
    relays = {canonical(a) for a in (relay_ip, external_ip, config.turn.relay_ip_v6) if a}

    def ice_peer_allowed(address: str) -> bool:
        """Where the server's WebRTC ICE agent may send checks: where a relay may, and to its
        own TURN relays (a device's relay candidates)."""
        try:
            return canonical(address) in relays or peers.allowed(address)
        except ValueError:
            return False

    gateway = Gateway(
        router,
        tokens,
        config.gateway,
        peer_allowed=ice_peer_allowed,
        services=peers,
        relay_aliases={external_ip: relay_ip} if external_ip != relay_ip else {},
    )
    services.gateway = gateway
    revocations.add_listener(gateway.revoked)
    metrics.gateway = gateway.statistics

    async def gateway_child(*, stopping: trio.Event, task_status: trio.TaskStatus[str]) -> None:
        await gateway.serve(
            config.server.host, config.gateway.port, stopping=stopping, task_status=task_status
        )

    async def turn_child(*, task_status: trio.TaskStatus[None]) -> None:
        context = None
        if config.turn.tls_cert_file and config.turn.tls_key_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(config.turn.tls_cert_file, config.turn.tls_key_file)
        listener = TurnListener(
            config.server.host,
            config.turn.port,
            relay_ip,
            range(config.turn.relay_port_min, config.turn.relay_port_max + 1),
            relay_host_v6=config.turn.relay_ip_v6,
            external_ip=external_ip,
            tls_port=config.turn.tls_port,
            ssl_context=context,
        )
        core = TurnCore(
            TurnSettings(
                realm=config.turn.realm,
                default_lifetime_s=config.turn.default_lifetime_s,
                max_lifetime_s=config.turn.max_lifetime_s,
                max_allocations=config.turn.max_allocations,
                max_allocations_per_user=config.turn.max_allocations_per_user,
                max_allocations_per_device=config.turn.max_allocations_per_device,
                unauthenticated_answers_per_s=config.turn.unauthenticated_answers_per_s,
                allocation_bytes_per_s=config.turn.allocation_bytes_per_s,
            ),
            secret=secrets.turn_secret,
            key_for=key_lookup(config.turn, secrets.turn_secret),
            open_relay=listener.open_relay,
            peer_allowed=peers.allowed,
            service=peers.service,
            owner_of=owner_of,
            relay_families=listener.relay_families,
        )
        services.turn = listener
        metrics.turn = lambda: core.stats

        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(listener.serve, core)
            url = f"turn:{host}:{port}"
            log.info("turn listening on %s (udp, tcp)", url, extra={"listener": "turn", "url": url})
            if listener.tls_address is not None:
                tls_host, tls_port = listener.tls_address
                tls_url = f"turns:{tls_host}:{tls_port}"
                log.info(
                    "turn listening on %s (tls)",
                    tls_url,
                    extra={"listener": "turns", "url": tls_url},
                )
            task_status.started()

    grace = config.server.grace_s
    root = Supervisor(
        "root",
        [
            ChildSpec("mail", mail_child, shutdown_s=1.0),
            ChildSpec("store", store_child, shutdown_s=grace, graceful=True),
            ChildSpec("bus", bus_child, shutdown_s=1.0),
            ChildSpec("revocations", functools.partial(revocations.serve, router), shutdown_s=1.0),
            ChildSpec("revocation-sync", revocation_sync_child, shutdown_s=1.0),
            ChildSpec("api", api_child, shutdown_s=grace, graceful=True),
            networks.as_child(shutdown_s=2.0),
            ChildSpec("gateway", gateway_child, shutdown_s=grace, graceful=True),
            ChildSpec("turn", turn_child, shutdown_s=1.0),
        ],
        strategy=Strategy.REST_FOR_ONE,
        max_restarts=5,
        period_s=30.0,
        backoff_base_s=0.2,
        backoff_max_s=5.0,
    )
    metrics.supervisors.extend([root, networks])
    return root, services


async def serve(
    config: Config,
    *,
    stop: trio.Event,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one instance until ``stop`` is set, then shut down gracefully.

    Raises :class:`ConfigError` before starting anything if the configuration cannot run, and
    ``actors.Escalated`` if the tree gives up.
    """
    check(config)
    instance_id = _instance_id(config)
    set_instance(instance_id)
    log.info("yggdrasil %s starting, instance %s", VERSION, instance_id)
    data_dir = prepare_data_dir(config)
    secrets = load_or_create(data_dir)
    root, services = build(config, secrets, instance_id)

    async def run_tree() -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(root.run, stopping=stop))
                task_status.started(Running(services.urls["api"], services, root))
        except BaseExceptionGroup as group:
            raise sole_exception(group) from None

    if trio_asyncio.current_loop.get() is None:
        # asyncpg and aiortc live on asyncio; trio-asyncio runs that loop inside ours (unless
        # the caller already runs one, which we then share).
        async with trio_asyncio.open_loop():
            await run_tree()
    else:
        await run_tree()
    log.info("yggdrasil stopped")
