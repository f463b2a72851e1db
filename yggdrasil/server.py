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
import logging
import os
import secrets as _random
import socket
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio_asyncio

from actors import Bus, ChildSpec, Codec, InProcessHub, Placement, Router, Strategy, Supervisor
from api import ApiContext, create_app, serve_api
from relay import MESSAGE_TYPES as RELAY_MESSAGES
from relay import Gateway, network_factory

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
from ._version import VERSION
from .store import Database, PostgresDatabase, SqliteDatabase, migrate
from .turn import TurnService, check_addresses, turn_child

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
    turn: TurnService | None = None
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
    check_addresses(config.turn)


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

    turn = TurnService(config.turn, host=config.server.host, secret=secrets.turn_secret)
    services.turn = turn
    metrics.turn = turn.stats

    async def api_child(*, stopping: trio.Event, task_status: trio.TaskStatus[str]) -> None:
        app = create_app(
            ApiContext(
                metrics=metrics,
                domain=services.domain,
                tokens=tokens,
                revoke=revocations.revoke,
                bus_ready=lambda: router.bus.ready,
                ice=turn.ice_servers,
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

    gateway = Gateway(
        router,
        tokens,
        config.gateway,
        peer_allowed=turn.ice_peer_allowed,
        services=turn.peers,
        relay_aliases=turn.relay_aliases,
    )
    services.gateway = gateway
    revocations.add_listener(gateway.revoked)
    metrics.gateway = gateway.statistics

    async def gateway_child(*, stopping: trio.Event, task_status: trio.TaskStatus[str]) -> None:
        await gateway.serve(
            config.server.host, config.gateway.port, stopping=stopping, task_status=task_status
        )

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
            turn_child(turn),
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
