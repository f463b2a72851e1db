"""Prometheus metrics of one server instance (its own registry, so tests can run several)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from actors import Router, Supervisor

from ._hashing import Hasher
from ._hashing import pool as hashing_pool
from ._monitoring import ProbeStatistics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

AUTH_FAILURE_CODES = (
    "invalid_token",
    "invalid_code",
    "invalid_grant",
    "invalid_key",
    "oidc_failed",
)
"""The codes of the API's 401 answers; their series exist from the start (at 0)."""
PAYOUT_OUTCOMES = ("paid", "failed", "retry")

# *_created series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _ActorCollector(Collector):
    """Reads mailbox, router and supervisor statistics at scrape time.

    Mailboxes are summed by address kind: one series per device session would be unbounded.
    """

    def __init__(
        self,
        router: Callable[[], Router | None],
        supervisors: Callable[[], Iterable[Supervisor]],
        gateway: Callable[[], dict[str, int] | None],
        turn: Callable[[], object | None],
        hashing: Callable[[], Hasher],
        bus: Callable[[], dict[str, int] | None] = lambda: None,
    ) -> None:
        self._router = router
        self._supervisors = supervisors
        self._gateway = gateway
        self._turn = turn
        self._hashing = hashing
        self._bus = bus

    def collect(self) -> Iterator[Metric]:
        router = self._router()
        if router is not None:
            sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
            for address, box in router.mailboxes():
                stats = box.statistics()
                row = sums[address.kind]
                row[0] += 1
                row[1] += stats.size
                row[2] += stats.delivered
                row[3] += stats.dropped
                row[4] += stats.rejected
            actors = GaugeMetricFamily("yggdrasil_actors", "Live actors", labels=["kind"])
            size = GaugeMetricFamily(
                "yggdrasil_mailbox_queued", "Envelopes waiting in mailboxes", labels=["kind"]
            )
            delivered = CounterMetricFamily(
                "yggdrasil_mailbox_delivered", "Envelopes queued (live actors)", labels=["kind"]
            )
            dropped = CounterMetricFamily(
                "yggdrasil_mailbox_dropped", "Envelopes dropped by drop-oldest", labels=["kind"]
            )
            rejected = CounterMetricFamily(
                "yggdrasil_mailbox_rejected", "Envelopes rejected as overloaded", labels=["kind"]
            )
            for kind, row in sorted(sums.items()):
                actors.add_metric([kind], row[0])
                size.add_metric([kind], row[1])
                delivered.add_metric([kind], row[2])
                dropped.add_metric([kind], row[3])
                rejected.add_metric([kind], row[4])
            yield from (actors, size, delivered, dropped, rejected)
            rs = router.statistics()
            yield CounterMetricFamily(
                "yggdrasil_router_unreachable",
                "Envelopes refused as unreachable",
                value=rs.unreachable,
            )
            yield CounterMetricFamily(
                "yggdrasil_router_forwarded", "Envelopes forwarded over the bus", value=rs.forwarded
            )
        restarts = CounterMetricFamily(
            "yggdrasil_supervisor_restarts", "Child restarts", labels=["supervisor", "child"]
        )
        running = GaugeMetricFamily(
            "yggdrasil_supervisor_child_running",
            "1 while a child runs",
            labels=["supervisor", "child"],
        )
        for supervisor in self._supervisors():
            for child in supervisor.statistics():
                restarts.add_metric([supervisor.name, child.id], child.restarts)
                running.add_metric([supervisor.name, child.id], 1 if child.running else 0)
        yield restarts
        yield running
        turn = self._turn()
        if turn is not None:
            for name, value in vars(turn).items():
                yield CounterMetricFamily(
                    f"yggdrasil_turn_{name}", f"TURN: {name.replace('_', ' ')}", value=value
                )
        gateway = self._gateway()
        if gateway is not None:
            yield GaugeMetricFamily(
                "yggdrasil_gateway_sessions", "Device sessions open", value=gateway["sessions"]
            )
            yield CounterMetricFamily(
                "yggdrasil_gateway_sessions_accepted",
                "Sessions accepted",
                value=gateway["accepted"],
            )
            yield CounterMetricFamily(
                "yggdrasil_gateway_sessions_rejected",
                "Handshakes refused (token, origin, caps)",
                value=gateway["rejected"],
            )
            yield GaugeMetricFamily(
                "yggdrasil_gateway_queued_bytes",
                "Bytes waiting for all devices together",
                value=gateway["queued_bytes"],
            )
            yield CounterMetricFamily(
                "yggdrasil_gateway_sessions_shed",
                "Sessions cut because the instance's send queues were full",
                value=gateway["shed"],
            )
            yield CounterMetricFamily(
                "yggdrasil_gateway_protocol_violations",
                "Websocket connections failed for a protocol violation",
                value=gateway["violations"],
            )
        bus = self._bus()
        if bus is not None:
            for name in ("published", "received", "dropped", "undecodable"):
                yield CounterMetricFamily(
                    f"yggdrasil_bus_{name}", f"Envelopes {name} on the bus", value=bus[name]
                )
            for name, help_text in (
                ("ready", "1 while the bus is connected and the directory in sync"),
                ("fenced", "1 while this instance has fenced itself after losing the bus"),
                ("instances", "Instances of the cluster heard from, this one included"),
                ("directory", "Addresses held in the cluster, as this instance sees it"),
            ):
                yield GaugeMetricFamily(f"yggdrasil_bus_{name}", help_text, value=bus[name])
        hashing = self._hashing()
        yield GaugeMetricFamily(
            "yggdrasil_hashing_admitted",
            "Password hashes running or waiting now",
            value=hashing.admitted,
        )
        yield CounterMetricFamily(
            "yggdrasil_hashing_refused",
            "Password hashes refused because the pool was full (503 busy)",
            value=hashing.refused,
        )


class _OperationsCollector(Collector):
    """Readiness, the probing watch, payouts and limits, read at scrape time (alerting)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        if m.ready is not None:
            yield GaugeMetricFamily(
                "yggdrasil_ready", "1 while /readyz would answer ready (at this scrape)", m.ready
            )
        if m.gateway_queue_limit is not None:
            yield GaugeMetricFamily(
                "yggdrasil_gateway_queued_bytes_limit",
                "gateway.queue_bytes_total: past it the furthest-behind sessions are shed",
                value=m.gateway_queue_limit,
            )
        if m.probes is not None:
            stats = m.probes()
            refusals = CounterMetricFamily(
                "yggdrasil_probe_refusals",
                "Refusals of ids a principal may not see (api: 404, relay: unreachable device)",
                labels=["kind"],
            )
            for kind, count in sorted(stats.refusals.items()):
                refusals.add_metric([kind], count)
            yield refusals
            for name, help_text, value in (
                ("probing_principals", "Principals past the probing threshold", stats.probing),
                ("probe_blocked_principals", "Principals blocked for probing", stats.blocked),
                ("probe_tracked_principals", "Principals the watch tracks", stats.tracked),
            ):
                yield GaugeMetricFamily(f"yggdrasil_{name}", help_text, value=value)
            yield CounterMetricFamily(
                "yggdrasil_probe_trips",
                "Times a principal passed the probing threshold (audited)",
                value=stats.trips,
            )
            yield CounterMetricFamily(
                "yggdrasil_probe_reports_dropped",
                "Probing audit entries lost while the store was away",
                value=stats.reports_dropped,
            )
        if m.payouts is not None:
            counts = m.payouts()
            if counts is not None:
                family = CounterMetricFamily(
                    "yggdrasil_payout_attempts",
                    "Payouts sent to a provider: paid, failed (reversed), retry (unreachable)",
                    labels=["outcome"],
                )
                for outcome in PAYOUT_OUTCOMES:
                    family.add_metric([outcome], counts.get(outcome, 0))
                yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.http_requests = Counter(
            "yggdrasil_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "yggdrasil_http_request_duration_seconds",
            "HTTP request latency by route and method",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.auth_failures = Counter(
            "yggdrasil_auth_failures",
            "API requests refused 401, by error code (bad tokens, codes, keys, sign-ins)",
            ["code"],
            registry=self.registry,
        )
        for code in AUTH_FAILURE_CODES:
            self.auth_failures.labels(code)
        self.probes: Callable[[], ProbeStatistics] | None = None
        """The probing watch's statistics, when it runs."""
        self.payouts: Callable[[], dict[str, int] | None] | None = None
        """Payouts sent by this instance by outcome; ``None`` while the store is away."""
        self.readiness: Callable[[], Awaitable[bool]] | None = None
        """What ``/readyz`` checks, asked at each scrape (:meth:`refresh`)."""
        self.ready: int | None = None
        self.gateway_queue_limit: int | None = None
        self.router: Router | None = None
        self.supervisors: list[Supervisor] = []
        self.gateway: Callable[[], dict[str, int]] | None = None
        """The gateway's statistics (sessions, handshakes, queued bytes...), when it runs."""
        self.bus: Callable[[], dict[str, int]] | None = None
        """The NATS bus's counters, when the instance is part of a cluster."""
        self.turn: Callable[[], object] | None = None
        """The TURN core's counters (a dataclass of integers), when TURN runs."""
        self.registry.register(
            _ActorCollector(
                lambda: self.router,
                lambda: self.supervisors,
                lambda: None if self.gateway is None else self.gateway(),
                lambda: None if self.turn is None else self.turn(),
                hashing_pool,
                lambda: None if self.bus is None else self.bus(),
            )
        )
        self.registry.register(_OperationsCollector(self))

    def auth_failure(self, code: str) -> None:
        self.auth_failures.labels(code).inc()

    async def refresh(self) -> None:
        """Ask what can only be asked with a wait (readiness), just before a scrape."""
        if self.readiness is not None:
            self.ready = 1 if await self.readiness() else 0

    def observe_http(self, route: str, method: str, status: int, seconds: float | None) -> None:
        """Count one answered request (and its latency, when known). The labelled children are
        looked up once per route, method and status: ``labels()`` costs more than the count."""
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route, method),
            )
            self._http_children[key] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
