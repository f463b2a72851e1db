"""The watch for cross-network probing (SECURITY.md: a principal must not learn what is not theirs).

A principal that asks for things it cannot see - API requests answered 404 for ids that are
foreign or absent, envelopes to devices the router refuses as unreachable - is counted, per
principal, over a sliding window. One that passes ``monitoring.probe_threshold`` refusals in
``monitoring.probe_window_s`` is a prober: it gets one audit entry per window (never one per
request), is counted on ``/metrics``, and, with ``monitoring.probe_block_s``, is refused for that
long: the API answers 429 ``blocked`` to every request it makes, and its envelopes to devices are
refused as unreachable. None of this depends on whether the ids it asked for exist, so the prober
learns nothing from it.

Each instance counts what it sees: in a cluster a prober spread over N instances gets up to N
times the threshold before one of them notices. Counting is O(1) per refusal and the number of
principals tracked is bounded (the least recently refused is forgotten first).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import trio

from actors import Address, ChildSpec, Envelope, Rule

from ._addresses import DEVICE
from ._config import MonitoringConfig
from ._errors import YggdrasilError
from ._ids import now_ms
from ._tokens import Principal
from .store import Database, Tx, append_audit

log = logging.getLogger(__name__)

ProbeKind = Literal["api", "relay"]
PROBE_KINDS: tuple[ProbeKind, ...] = ("api", "relay")
AUDIT_ACTOR = "monitor"
"""The audit log's actor for the watch's entries (their subject is the principal)."""
AUDIT_ACTION = "security.probing"


class Blocked(YggdrasilError):
    """The principal was found probing and is refused for a while (``monitoring.probe_block_s``)."""

    status = 429
    code = "blocked"
    default_message = "too many requests for things this account cannot see; try again later"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__()
        self.retry_after_s = retry_after_s


def user_principal(user_id: str) -> str:
    return f"user:{user_id}"


def device_principal(network_id: str, device_id: str) -> str:
    """The same name a device's tokens are revoked under."""
    return f"device:{network_id}/{device_id}"


def principal_name(principal: Principal) -> str:
    if principal.network_id is not None and principal.device_id is not None:
        return device_principal(principal.network_id, principal.device_id)
    return user_principal(principal.user_id)


@dataclass(frozen=True)
class ProbeReport:
    """A principal passed the threshold: what its audit entry says."""

    principal: str
    kind: ProbeKind
    """What the refusal that tripped it was."""
    refusals: int
    window_s: float
    blocked_s: float
    at_ms: int


@dataclass
class ProbeStatistics:
    refusals: dict[str, int]
    """Refusals counted, by kind (``api``, ``relay``)."""
    probing: int
    """Principals past the threshold within the last window."""
    blocked: int
    """Principals blocked now."""
    tracked: int
    trips: int
    """Times a principal passed the threshold (one per principal and window)."""
    reports_dropped: int
    """Audit entries lost because too many waited to be written (the store was away)."""


@dataclass(slots=True)
class _Track:
    window: int
    current: int = 0
    previous: int = 0
    reported_at: float = -math.inf
    blocked_until: float = -math.inf


@dataclass
class ProbeWatch:
    """Counts refusals per principal; see the module docstring. Synchronous and O(1) per call:
    the API's error handler and the router call it on their hot paths."""

    threshold: int
    window_s: float
    block_s: float = 0.0
    max_principals: int = 10_000
    max_reports: int = 1024
    clock: Callable[[], float] = time.monotonic
    _tracks: collections.OrderedDict[str, _Track] = field(
        default_factory=collections.OrderedDict, init=False
    )
    _blocked: dict[str, float] = field(default_factory=dict, init=False)
    _reports: collections.deque[ProbeReport] = field(default_factory=collections.deque, init=False)
    _refusals: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(PROBE_KINDS, 0), init=False
    )
    _trips: int = field(default=0, init=False)
    _dropped: int = field(default=0, init=False)
    _wake: trio.Event = field(default_factory=trio.Event, init=False)

    @classmethod
    def from_config(cls, config: MonitoringConfig) -> ProbeWatch:
        return cls(
            threshold=config.probe_threshold,
            window_s=config.probe_window_s,
            block_s=config.probe_block_s,
            max_principals=config.probe_tracked,
        )

    # ----------------------------------------------------------------- counting

    def refused(self, principal: str, kind: ProbeKind) -> None:
        """Count one refusal of ``principal``'s (``user:<id>`` or ``device:<network>/<id>``).

        The rate is a sliding window estimated from two fixed ones (this window's count plus the
        previous one's, weighted by how much of it still overlaps): two integers per principal.
        """
        now = self.clock()
        if self._blocked and self.blocked_for(principal, now) > 0:
            return  # refused already for being blocked; its block does not grow from it
        self._refusals[kind] += 1
        index = int(now // self.window_s)
        track = self._tracks.pop(principal, None)
        if track is None:
            track = _Track(index)
        elif track.window != index:
            track.previous = track.current if track.window == index - 1 else 0
            track.current = 0
            track.window = index
        track.current += 1
        self._tracks[principal] = track  # most recent last
        while len(self._tracks) > self.max_principals:
            forgotten, _ = self._tracks.popitem(last=False)
            self._blocked.pop(forgotten, None)
        overlap = 1.0 - (now - index * self.window_s) / self.window_s
        estimate = track.current + track.previous * overlap
        if estimate >= self.threshold and now - track.reported_at >= self.window_s:
            self._trip(principal, track, kind, math.ceil(estimate), now)

    def _trip(
        self, principal: str, track: _Track, kind: ProbeKind, refusals: int, now: float
    ) -> None:
        track.reported_at = now
        self._trips += 1
        if self.block_s > 0:
            track.blocked_until = now + self.block_s
            self._blocked[principal] = track.blocked_until
        if len(self._reports) >= self.max_reports:
            self._dropped += 1
        else:
            self._reports.append(
                ProbeReport(principal, kind, refusals, self.window_s, self.block_s, now_ms())
            )
            self._wake.set()
        log.warning(
            "principal=%s probing: %d refusals (%s) within %g s%s",
            principal,
            refusals,
            kind,
            self.window_s,
            f", blocked for {self.block_s:g} s" if self.block_s > 0 else "",
        )

    def refused_by(self, principal: Principal) -> None:
        """Count an API request of ``principal``'s answered 404 (an id that is foreign or
        absent). Operators are not counted: they may see everything, so their 404s are real."""
        if principal.role != "operator":
            self.refused(principal_name(principal), "api")

    def refused_envelope(self, envelope: Envelope) -> None:
        """The router's hook for an envelope it refused as unreachable: counted when a device
        addressed a device (a peer that is foreign, absent, or offline right now)."""
        src, dst = envelope.src, envelope.dst
        if src.kind == DEVICE and dst.kind == DEVICE and not envelope.is_reply:
            self.refused(f"device:{src.key}", "relay")

    # ----------------------------------------------------------------- blocking

    def blocked_for(self, principal: str, now: float | None = None) -> float:
        """Seconds ``principal`` stays blocked, 0 when it is not."""
        until = self._blocked.get(principal)
        if until is None:
            return 0.0
        left = until - (self.clock() if now is None else now)
        if left <= 0:
            del self._blocked[principal]
            return 0.0
        return left

    def check(self, principal: str) -> None:
        """Raise :class:`Blocked` while ``principal`` is blocked."""
        if self._blocked:
            left = self.blocked_for(principal)
            if left > 0:
                raise Blocked(max(1, math.ceil(left)))

    def check_principal(self, principal: Principal) -> None:
        """:meth:`check` for an API caller."""
        if self._blocked:
            self.check(principal_name(principal))

    def rule(self, base: Rule) -> Rule:
        """``base`` (the tenant rule), and no envelope from a blocked device to a device: the
        sender gets the same ``unreachable`` as for an address nobody holds. Without blocking
        (``block_s`` 0), ``base`` itself: the relay's path pays nothing."""
        if self.block_s <= 0:
            return base

        def guarded(src: Address, dst: Address) -> bool:
            if (
                self._blocked
                and src.kind == DEVICE
                and dst.kind == DEVICE
                and self.blocked_for(f"device:{src.key}") > 0
            ):
                return False
            return base(src, dst)

        return guarded

    # ----------------------------------------------------------------- reading

    def statistics(self) -> ProbeStatistics:
        """At scrape time: walks the tracked principals (bounded by ``max_principals``)."""
        now = self.clock()
        probing = sum(1 for t in self._tracks.values() if now - t.reported_at < self.window_s)
        blocked = sum(1 for p in list(self._blocked) if self.blocked_for(p, now) > 0)
        return ProbeStatistics(
            dict(self._refusals), probing, blocked, len(self._tracks), self._trips, self._dropped
        )

    def take_reports(self) -> list[ProbeReport]:
        reports = list(self._reports)
        self._reports.clear()
        return reports

    def give_back(self, reports: list[ProbeReport]) -> None:
        """Reports that could not be written, to be tried again (oldest first, bounded)."""
        for report in reversed(reports):
            if len(self._reports) >= self.max_reports:
                self._dropped += 1
            else:
                self._reports.appendleft(report)

    async def wait_reports(self) -> None:
        """Return once there is a report to take."""
        if not self._reports:
            await self._wake.wait()
        self._wake = trio.Event()


DatabaseSource = Callable[[], Database]
"""The running store's database; raises ``StoreUnavailable`` while the store (re)starts."""


async def _write_reports(database: DatabaseSource, reports: list[ProbeReport]) -> None:
    async def work(tx: Tx) -> None:
        for report in reports:
            # No target ids: the entry says how much was refused, never what was asked for.
            detail = {
                "kind": report.kind,
                "refusals": report.refusals,
                "window_s": report.window_s,
                "blocked_s": report.blocked_s,
            }
            await append_audit(tx, AUDIT_ACTOR, AUDIT_ACTION, report.principal, detail)

    await database().write(work)


async def audit_probes_forever(
    watch: ProbeWatch, database: DatabaseSource, *, retry_s: float = 1.0
) -> None:
    """Write the watch's reports to the audit log as they come; while the store is away they
    wait (bounded, see :attr:`ProbeWatch.max_reports`). Runs until cancelled."""
    while True:
        await watch.wait_reports()
        reports = watch.take_reports()
        if not reports:
            continue
        try:
            await _write_reports(database, reports)
        except Exception:  # the store is away or failing: the reports wait for the next try
            log.warning("could not write %d probing audit entries", len(reports), exc_info=True)
            watch.give_back(reports)
            await trio.sleep(retry_s)


def readiness(
    database: DatabaseSource, bus_ready: Callable[[], bool], *, timeout_s: float
) -> Callable[[], Awaitable[bool]]:
    """What ``/readyz`` answers, as a yes or no for ``yggdrasil_ready`` at scrape time: the bus
    is up and the store answers a ping within ``timeout_s``."""

    async def ready() -> bool:
        if not bus_ready():
            return False
        try:
            db = database()
            with trio.move_on_after(timeout_s):
                await db.ping()
                return True
        except Exception:  # unreachable, starting: not ready, whatever the reason
            return False
        return False

    return ready


def probe_audit_child(watch: ProbeWatch, database: DatabaseSource) -> ChildSpec:
    """The ``probe-audit`` child: :func:`audit_probes_forever`. Reports made while it restarts
    wait in the watch."""

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await audit_probes_forever(watch, database)

    return ChildSpec("probe-audit", run, shutdown_s=1.0)
