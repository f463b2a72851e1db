"""The composition root: builds the supervision tree of one Yggdrasil instance and runs it.

::

    root (rest_for_one)
    ├── operator         /metrics on a listener of its own (loopback by default), if enabled
    ├── mail             delivers queued e-mail (SMTP, or files in <data-dir>/outbox)
    ├── store            opens SQLite or PostgreSQL, applies migrations, fills the domain handle
    ├── bus              the router's link to other instances: NATS, or in-process for a single one
    ├── revocations      service/revocations: revocations to and from every instance, pushed to
    │                    sessions
    ├── revocation-sync  keeps the token check current with the store (the backstop)
    ├── marketplace      runs the compute requests this instance settles
    ├── geri             service/geri: devices' compute requests (this instance's share)
    ├── api              quart-trio on hypercorn
    ├── networks         virtual actors, one per active tenant network (presence), started by the
    │                    router
    ├── locks            virtual actors, one lock manager per network with locks in use
    ├── gateway          the device websocket listener; one DeviceSession per connected device
    └── turn             STUN and TURN over UDP and TCP

Each child comes from a small factory beside its feature: ``_mail.mail_child``,
``_domain.store_child``, ``_cluster.bus_child``, ``_revocation_service.revocations_child`` and
``revocation_sync_child``, ``api.api_server`` (the API does not import ``actors``, so its spec is
written here), ``relay.network_actors``, ``locks.lock_managers``, ``relay.gateway_child`` and
``turn.turn_child``.
:func:`build` makes what they share and puts them in order.

rest_for_one: when the store restarts, everything started after it restarts too and picks up
the new store (through the :class:`DomainHandle`, which raises ``StoreUnavailable`` meanwhile).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import secrets as _random
import socket
from dataclasses import dataclass
from pathlib import Path

import trio
import trio_asyncio

from actors import ChildSpec, Codec, Placement, Router, Strategy, Supervisor
from api import ApiServer, OperatorServer, api_server, operator_server
from relay import MESSAGE_TYPES as RELAY_MESSAGES
from relay import Gateway, gateway_child, geri_child, network_actors

from ._addresses import LOCKS, NETWORK, SERVICE, tenant_rule
from ._asyncio_thread import AsyncioThread, open_asyncio_thread
from ._cluster import NatsBus, bus_child, cluster_bus
from ._config import Config
from ._crypto import open_vault
from ._domain import DomainHandle, store_child
from ._errors import ConfigError, ListenError, StoreUnavailable, sole_exception
from ._hashing import configure as configure_hashing
from ._logging import set_instance
from ._mail import Mailer, mail_child, parse_smtp_url
from ._metrics import Metrics
from ._monitoring import ProbeWatch, probe_audit_child, readiness
from ._revocation_service import MESSAGE_TYPES as REVOCATION_MESSAGES
from ._revocation_service import Revocations, revocation_sync_child, revocations_child
from ._secrets import Secrets, load_or_create
from ._tokens import TokenService
from ._version import VERSION
from .ddns import Ddns, DdnsCollector, Updater
from .locks import LOCK_MESSAGES, Locks, lock_managers
from .marketplace import MARKETPLACE_MESSAGES, Marketplace
from .store import PostgresDatabase, check_database
from .turn import TurnService, check_addresses, turn_child

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """What one instance's tree is built from, for those who look inside (tests). ``domain``
    raises ``StoreUnavailable`` while the store (re)starts."""

    config: Config
    secrets: Secrets
    metrics: Metrics
    router: Router
    tokens: TokenService
    mailer: Mailer
    domain: DomainHandle
    revocations: Revocations
    turn: TurnService
    gateway: Gateway
    api: ApiServer
    operator: OperatorServer | None = None
    """The operator listener (``/metrics``); ``None`` when ``operator.enabled`` is false."""
    probes: ProbeWatch | None = None
    """The watch for cross-network probing (``[monitoring]``)."""
    ddns: Ddns | None = None
    """Devices' current addresses and DNS names."""


@dataclass(frozen=True)
class Running:
    """Reported by :func:`serve` once every listener is bound."""

    api_url: str
    services: Services
    root: Supervisor

    @property
    def gateway_url(self) -> str:
        return self.services.gateway.url

    @property
    def operator_url(self) -> str:
        """Where ``/metrics`` is served (empty when the operator listener is disabled)."""
        operator = self.services.operator
        return "" if operator is None else operator.url


def check(config: Config) -> None:
    """Reject configurations that cannot run, before anything starts."""
    check_database(config.database)
    if config.bus.url:
        if not config.bus.url.startswith(("nats://", "tls://")):
            raise ConfigError("bus.url must be empty (in-process) or a nats:// or tls:// URL")
        if not config.database.url:
            raise ConfigError(
                "bus.url needs database.url: the instances of a cluster share one PostgreSQL"
            )
    check_addresses(config.turn)
    if config.mail.smtp_url:
        parse_smtp_url(config.mail.smtp_url)
    if config.ddns.zone:
        Updater(config.ddns)  # the zone, its server and its TSIG key


def _listeners(config: Config) -> list[tuple[str, str, int, socket.SocketKind]]:
    """Every listener's (name, host, port, kind) that binds at start-up."""
    host = config.server.host
    found = [
        ("API", host, config.api.port, socket.SOCK_STREAM),
        ("gateway", host, config.gateway.port, socket.SOCK_STREAM),
        ("TURN", host, config.turn.port, socket.SOCK_DGRAM),
        ("TURN", host, config.turn.port, socket.SOCK_STREAM),
    ]
    if config.turn.tls_cert_file and config.turn.tls_key_file:
        found.append(("TURN over TLS", host, config.turn.tls_port, socket.SOCK_STREAM))
    if config.operator.enabled:
        found.append(
            ("operator listener", config.operator.host, config.operator.port, socket.SOCK_STREAM)
        )
    return found


def check_listeners(config: Config) -> None:
    """Bind each listener's address for a moment, before anything starts: a port in use is
    :class:`ListenError` naming the listener and its address; a host that is not this
    machine's, or two listeners on one address, :class:`ConfigError`. Port 0 (any free port)
    always binds."""
    taken: dict[tuple[socket.SocketKind, str, int], str] = {}
    for name, host, port, kind in _listeners(config):
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        other = taken.setdefault((kind, host, port), name)
        if other != name:
            raise ConfigError(f"the {other} and the {name} are both configured on port {port}")
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if name.startswith("TURN"):  # STUN/TURN listens on UDP and TCP
            where += " (UDP)" if kind == socket.SOCK_DGRAM else " (TCP)"
        setting = "operator.host" if name == "operator listener" else "server.host"
        try:
            with socket.socket(family, kind) as probe:
                if kind == socket.SOCK_STREAM:
                    # as the listeners do: a closed connection's TIME_WAIT does not count
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
                if kind == socket.SOCK_STREAM:
                    probe.listen()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(f"the {name} port {where} is in use") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    f"{setting} {host} is not an address of this machine"
                    f" (the {name} cannot bind {where})"
                ) from None
            if exc.errno == errno.EACCES:
                raise ListenError(f"the {name} may not bind {where}: permission denied") from None
            raise ListenError(f"the {name} cannot bind {where}: {exc.strerror}") from None


def prepare_data_dir(config: Config) -> Path:
    path = config.data_path
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {path}: {exc.strerror}") from None
    return path


def _instance_id(config: Config) -> str:
    if config.server.instance_id:
        return config.server.instance_id
    return f"{socket.gethostname()}-{os.getpid()}-{_random.token_hex(3)}".replace(":", "-")


def build(
    config: Config, secrets: Secrets, instance_id: str, bridge: AsyncioThread
) -> tuple[Supervisor, Services]:
    """The root supervisor of one instance (not started), and what its children share.
    ``bridge`` runs the asyncio libraries of the store and the bus; it outlives the tree."""
    # One hashing pool per process, whatever runs in it: hashing is bounded process-wide.
    configure_hashing(config.auth.hash_workers, config.auth.hash_queue)
    metrics = Metrics()
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
    codec = Codec(*RELAY_MESSAGES, *REVOCATION_MESSAGES, *LOCK_MESSAGES, *MARKETPLACE_MESSAGES)
    probes = ProbeWatch.from_config(config.monitoring)
    router = Router(
        instance_id, cluster_bus(config.bus, codec, bridge), rule=probes.rule(tenant_rule)
    )
    router.on_unreachable = probes.refused_envelope
    router.define(SERVICE, placement=Placement.INSTANCE)
    domain = DomainHandle()
    marketplace = Marketplace(
        router, domain, config.marketplace, fee_bp=config.ledger.company_fee_bp
    )
    revocations = Revocations(tokens)
    turn = TurnService(config.turn, host=config.server.host, secret=secrets.turn_secret)
    gateway = Gateway(
        router,
        tokens,
        config.gateway,
        peer_allowed=turn.ice_peer_allowed,
        services=turn.peers,
        relay_aliases=turn.relay_aliases,
    )
    revocations.add_listener(gateway.revoked)
    ddns = Ddns(config.ddns, lambda: domain.get().store.db)
    api = api_server(
        config,
        metrics=metrics,
        domain=domain,
        tokens=tokens,
        revoke=revocations.revoke,
        bus_ready=lambda: router.bus.ready,
        ice=turn.ice_servers,
        webrtc=gateway.accept_webrtc,
        locks=Locks(router),
        marketplace=marketplace,
        probes=probes,
        ddns=ddns,
    )
    networks = network_actors(
        router,
        NETWORK,
        domain,
        idle_s=config.gateway.network_idle_s,
        on_address=ddns.address_changed,
    )
    locks = lock_managers(router, LOCKS, lambda: domain.get().store.locks, config.locks)
    operator = operator_server(config, metrics)

    grace = config.server.grace_s
    # The operator listener comes first: metrics are there while the store is still connecting,
    # and a restart of the store leaves it alone.
    operator_children = (
        [] if operator is None else [ChildSpec("operator", operator.serve, graceful=True)]
    )
    root = Supervisor(
        "root",
        [
            *operator_children,
            mail_child(mailer),
            store_child(
                domain,
                config,
                tokens,
                mailer,
                bridge,
                on_revoke=revocations.revoke,
                shutdown_s=grace,
                vault=open_vault(config.data_path, config.encryption.key_file),
            ),
            bus_child(router.bus),
            revocations_child(revocations, router),
            revocation_sync_child(revocations, domain, config.auth),
            ChildSpec("marketplace", marketplace.serve, shutdown_s=grace, graceful=True),
            geri_child(marketplace, router),
            ChildSpec("api", api.serve, shutdown_s=grace, graceful=True),
            networks.as_child(shutdown_s=2.0),
            locks.as_child(shutdown_s=2.0),
            gateway_child(gateway, config.server.host, config.gateway.port, shutdown_s=grace),
            turn_child(turn),
            probe_audit_child(probes, lambda: domain.get().store.db),
            ChildSpec("ddns", ddns.serve),
        ],
        strategy=Strategy.REST_FOR_ONE,
        max_restarts=5,
        period_s=30.0,
        backoff_base_s=0.2,
        backoff_max_s=5.0,
    )
    metrics.router = router
    metrics.supervisors.extend([root, networks, locks])
    metrics.gateway = gateway.statistics
    metrics.turn = turn.stats
    metrics.probes = probes.statistics
    metrics.payouts = functools.partial(_payout_outcomes, domain)
    metrics.readiness = readiness(
        lambda: domain.get().store.db, lambda: router.bus.ready, timeout_s=2.0
    )
    metrics.gateway_queue_limit = config.gateway.queue_bytes_total
    metrics.registry.register(DdnsCollector(ddns))
    if isinstance(router.bus, NatsBus):
        metrics.bus = router.bus.statistics
    services = Services(
        config,
        secrets,
        metrics,
        router,
        tokens,
        mailer,
        domain,
        revocations,
        turn,
        gateway,
        api,
        operator,
        probes,
        ddns,
    )
    return root, services


def _payout_outcomes(domain: DomainHandle) -> dict[str, int] | None:
    """The running store's payouts sent by outcome, for ``/metrics``; ``None`` while the store
    is away (each run of the store counts from 0: a counter reset to Prometheus)."""
    try:
        return dict(domain.get().payouts.outcomes)
    except StoreUnavailable:
        return None


async def serve(
    config: Config,
    *,
    stop: trio.Event,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one instance until ``stop`` is set, then shut down gracefully.

    Raises :class:`ConfigError` before starting anything if the configuration cannot run
    (PostgreSQL refusing the database or role included), :class:`ListenError` if a port is in
    use, and ``actors.Escalated`` if the tree gives up.
    """
    check(config)
    check_listeners(config)

    async def run_tree() -> None:
        # asyncpg and nats-py run on a loop thread of their own (the bridge); aiortc's WebRTC
        # objects on trio-asyncio, inside trio's loop.
        async with open_asyncio_thread() as bridge:
            if config.database.url:  # a missing database or role is reported before all else
                await PostgresDatabase.check_access(
                    config.database.url,
                    bridge,
                    timeout_s=min(config.database.query_timeout_s, 5.0),
                )
            instance_id = _instance_id(config)
            set_instance(instance_id)
            log.info("yggdrasil %s starting, instance %s", VERSION, instance_id)
            secrets = load_or_create(prepare_data_dir(config))
            root, services = build(config, secrets, instance_id, bridge)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(functools.partial(root.run, stopping=stop))
                    task_status.started(Running(services.api.url, services, root))
            except BaseExceptionGroup as group:
                raise sole_exception(group) from None

    if trio_asyncio.current_loop.get() is None:
        # (unless the caller already runs one, which we then share)
        async with trio_asyncio.open_loop():
            await run_tree()
    else:
        await run_tree()
    log.info("yggdrasil stopped")
