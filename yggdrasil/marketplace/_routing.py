"""The routing engine: which providers a marketplace request goes to, in which order, and why.

Pure and synchronous: no I/O, no tasks; time is an argument (``now_ms``) or the injected
``clock``. The request flow calls :meth:`ProviderRouter.rank` with the live candidates, tries
``Decision.order`` best first (failover: the next one when a provider fails or times out before
its first token), and reports each dispatch with :meth:`~ProviderRouter.started` and its end
with :meth:`~ProviderRouter.finished`; a periodic task asks :meth:`~ProviderRouter.probe_due`
which providers to probe. The algorithm, the normalization and the fairness guarantee are in
``docs/marketplace-routing.md``; in short:

1. **Filters**, in this order, each naming the first reason that excludes a candidate: the
   model (``"model"``), the schedule (``"unavailable"``), free capacity (``"no capacity"``),
   the price (``"too expensive"``: ``ceil(max_tokens * price_per_1k / 1000) > max_cost_cents``)
   and the breaker (``"breaker open"``, also while half-open: only a probe goes through then).
2. **Scores**, each normalized among the remaining candidates to [0, 1] by min-max (1 for the
   best, 0 for the worst; 1 for everyone when all are equal or there is one): price (cheaper is
   better), quality (success rate, averaged with the feedback when there is any), latency (the
   mean of time to first token, lower better, and tokens per second, higher better),
   availability (how often the provider answered at all) and fairness (free slots, more is
   better: this is the load balancing). A candidate with no history is scored as if it had
   the neutral prior: a success and answer rate of 0.5, and the mean time to first token and
   tokens per second of the candidates that have history. ``total`` is the weighted sum
   (weights normalized to sum 1).
3. **Order**: by ``total``, highest first; totals within ``TIE_EPSILON`` of the best of a group
   are equal, and among equals the provider *started* least recently comes first (never
   started ones first, by id). This is the round robin.

**The fairness guarantee.** Take any run of consecutive decisions in which the same set S of
providers forms the top tie group, and in which each decision is followed by ``started`` of its
first provider and no other non-probe ``started``. Then S is served in a fixed cyclic order, so
over any window of consecutive decisions in the run the numbers of jobs given to the members of
S differ by at most one. (Providers are equal, for instance, when they have the same price and
free slots and the same outcomes have been reported for them, however interleaved.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import msgspec

from ._breaker import Breaker, BreakerSettings, BreakerState
from ._quality import Decay, Outcome, Quality

TIE_EPSILON = 1e-9
NEUTRAL = 0.5

MODEL = "model"
UNAVAILABLE = "unavailable"
NO_CAPACITY = "no capacity"
TOO_EXPENSIVE = "too expensive"
BREAKER_OPEN = "breaker open"


class Candidate(msgspec.Struct, frozen=True):
    """A live provider as the request flow sees it now.

    ``price_per_1k``: integer cents per 1,000 tokens. ``free_slots``: concurrent jobs it can
    still take. ``tokens_per_minute``: its declared throughput (not scored: the measured
    tokens per second are). ``available``: its schedule says now.
    """

    provider_id: str
    price_per_1k: int
    free_slots: int
    tokens_per_minute: int
    available: bool
    models: frozenset[str] | tuple[str, ...]


class RouteRequest(msgspec.Struct, frozen=True):
    """What the request needs: the model, and at most ``max_cost_cents`` for ``max_tokens``."""

    model: str
    max_cost_cents: int
    max_tokens: int


class Scored(msgspec.Struct, frozen=True, gc=False):
    """One candidate's scores (each in [0, 1]) and weighted ``total``, or why it was
    ``excluded`` (then every score is 0). (``gc=False``: only strings and floats, no cycles;
    a decision over 10,000 candidates makes 10,000 of them.)"""

    provider_id: str
    total: float
    price: float
    quality: float
    latency: float
    availability: float
    fairness: float
    excluded: str | None = None


class Decision(msgspec.Struct, frozen=True):
    """``order``: the providers to try, best first. ``scored``: every candidate, the ranked
    ones in ``order`` and then the excluded ones in the order given. ``at``: ``now_ms``."""

    order: list[str]
    scored: list[Scored]
    at: int


class Weights(msgspec.Struct, frozen=True):
    """The share of each score in the total; non-negative, normalized to sum 1."""

    price: float = 0.30
    quality: float = 0.25
    latency: float = 0.20
    availability: float = 0.15
    fairness: float = 0.10

    def __post_init__(self) -> None:
        parts = (self.price, self.quality, self.latency, self.availability, self.fairness)
        if not all(math.isfinite(w) and w >= 0 for w in parts) or sum(parts) <= 0:
            raise ValueError("weights must be finite, non-negative, and not all zero")


class ProviderStats(msgspec.Struct, frozen=True):
    """What the router knows of one provider (recency-weighted averages; ``None``: no
    observation). ``weight``: the decayed number of observations behind the averages."""

    provider_id: str
    weight: float
    success_rate: float | None
    answered_rate: float | None
    ttft_ms: float | None
    tokens_per_s: float | None
    feedback: float | None
    in_flight: int
    started: int
    breaker: str
    breaker_open_until: int | None


def wall_clock_ms() -> int:
    """Milliseconds since the epoch: the default clock."""
    return time.time_ns() // 1_000_000


class _Provider:
    __slots__ = (
        "active_at",
        "breaker",
        "in_flight",
        "last_started",
        "probe_until",
        "quality",
        "started",
    )

    def __init__(self, settings: BreakerSettings, now_ms: int) -> None:
        self.quality = Quality()
        self.breaker = Breaker(settings)
        self.in_flight = 0
        self.started = 0
        self.last_started = -1  # the router's sequence number at the last non-probe start
        self.active_at = now_ms  # first seen, or the last start or finish
        self.probe_until = 0  # an idle probe is out until then


def _normalize(
    values: Sequence[float | None], *, higher: bool, prior: float | None = None
) -> list[float]:
    """Min-max to [0, 1], 1 for the best (the highest if ``higher``, else the lowest), 1 for
    everyone when all are equal or there is one (equal to 1e-9, relative: float noise between
    equal histories must not be blown up to the whole range).

    ``None`` (no history) is first replaced by the neutral prior: ``prior`` if given, else the
    mean of the known values; with no known value at all everyone is equal."""
    known = [v for v in values if v is not None]
    if not known:
        return [1.0] * len(values)
    if len(known) == len(values):
        full = known
    else:
        fill = prior if prior is not None else sum(known) / len(known)
        full = [fill if v is None else v for v in values]
    lo, hi = min(full), max(full)
    span = hi - lo
    if span <= 1e-9 * max(1.0, abs(hi)):
        return [1.0] * len(full)
    scale = 1.0 / span
    if higher:
        return [(v - lo) * scale for v in full]
    return [(hi - v) * scale for v in full]


def _regroup(by: list[int], ts: list[float], last: list[int], ids: list[str]) -> list[int]:
    """``by`` (sorted by total, ``ts``) with each tie group (from the best not yet placed,
    every total within TIE_EPSILON of it) re-sorted by last start, id and position."""
    out: list[int] = []
    i, n = 0, len(by)
    while i < n:
        bound = ts[i] - TIE_EPSILON
        j = i + 1
        while j < n and ts[j] >= bound:
            j += 1
        if ts[i] == ts[j - 1]:
            out.extend(by[i:j])  # exactly equal: already in order
        else:
            out.extend(sorted(by[i:j], key=lambda k: (last[k], ids[k], k)))
        i = j
    return out


class ProviderRouter:
    """Ranks providers for requests, keeps their statistics and breakers, schedules probes.

    One per instance (its statistics are local: each instance learns from the jobs it
    dispatches). Not thread-safe; every method is synchronous and cheap. ``clock`` gives
    milliseconds for ``started``/``finished``/``rate`` (by default the wall clock, the same
    time base as ``now_ms``). ``idle_probe_ms``: a provider with no job started or finished
    for that long is listed by :meth:`probe_due`.
    """

    def __init__(
        self,
        weights: Weights = Weights(),  # noqa: B008 (frozen)
        *,
        breaker: BreakerSettings = BreakerSettings(),  # noqa: B008 (frozen)
        decay: Decay = Decay(),  # noqa: B008 (frozen)
        idle_probe_ms: int = 300_000,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if idle_probe_ms < 1:
            raise ValueError("idle_probe_ms must be at least 1")
        total = (
            weights.price + weights.quality + weights.latency + weights.availability
        ) + weights.fairness
        self.weights = weights
        self._w = (
            weights.price / total,
            weights.quality / total,
            weights.latency / total,
            weights.availability / total,
            weights.fairness / total,
        )
        self._breaker = breaker
        self._decay = decay
        self._idle_probe_ms = idle_probe_ms
        self._clock = clock
        self._providers: dict[str, _Provider] = {}
        self._seq = 0

    def _get(self, provider_id: str, now_ms: int) -> _Provider:
        p = self._providers.get(provider_id)
        if p is None:
            p = self._providers[provider_id] = _Provider(self._breaker, now_ms)
        return p

    def rank(
        self, request: RouteRequest, candidates: Sequence[Candidate], *, now_ms: int
    ) -> Decision:
        """Filter, score and order ``candidates`` for ``request`` (see the module docstring).

        Deterministic: the same calls in the same order give the same decisions. Changes no
        statistics, except that it learns of providers it had not seen (for probing) and
        moves breakers whose cool-down has ended to half-open.
        """
        providers = self._providers
        model = request.model
        budget = request.max_cost_cents * 1000  # ceil(t * p / 1000) <= c  <=>  t * p <= 1000 c
        max_tokens = request.max_tokens
        closed = BreakerState.CLOSED
        ids: list[str] = []
        prices: list[int] = []
        free: list[int] = []
        kept: list[_Provider] = []
        excluded: list[Scored] = []
        for c in candidates:
            p = providers.get(c.provider_id)
            if p is None:
                p = providers[c.provider_id] = _Provider(self._breaker, now_ms)
            if model not in c.models:
                reason = MODEL
            elif not c.available:
                reason = UNAVAILABLE
            elif c.free_slots <= 0:
                reason = NO_CAPACITY
            elif c.price_per_1k * max_tokens > budget:
                reason = TOO_EXPENSIVE
            elif p.breaker.state is not closed and p.breaker.state_at(now_ms) is not closed:
                reason = BREAKER_OPEN
            else:
                ids.append(c.provider_id)
                prices.append(c.price_per_1k)
                free.append(c.free_slots)
                kept.append(p)
                continue
            excluded.append(Scored(c.provider_id, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, reason))
        n = len(ids)
        if not n:
            return Decision(order=[], scored=excluded, at=now_ms)

        # Column by column: a list comprehension per score costs far less than a loop body
        # per candidate (10,000 candidates rank in a few milliseconds).
        none4: tuple[None, None, None, None] = (None, None, None, None)
        raws = [p.quality.raw if now_ms < p.quality.forget_at else none4 for p in kept]
        pn = _normalize(prices, higher=False)
        qn = _normalize([r[0] for r in raws], higher=True, prior=NEUTRAL)
        an = _normalize([r[1] for r in raws], higher=True, prior=NEUTRAL)
        tn = _normalize([r[2] for r in raws], higher=False)
        sn = _normalize([r[3] for r in raws], higher=True)
        ln = [0.5 * (t + s) for t, s in zip(tn, sn, strict=True)]
        fn = _normalize(free, higher=True)
        wp, wq, wl, wa, wf = self._w
        totals = [
            wp * a + wq * b + wl * c + wa * d + wf * e
            for a, b, c, d, e in zip(pn, qn, ln, an, fn, strict=True)
        ]
        scored = list(map(Scored, ids, totals, pn, qn, ln, an, fn))

        # Highest total first; among equal totals least recently started first, then by id,
        # then by position (duplicate ids): three stable sorts, least significant key first.
        last = [p.last_started for p in kept]
        by = sorted(range(n), key=ids.__getitem__)
        by.sort(key=last.__getitem__)
        by.sort(key=totals.__getitem__, reverse=True)
        # Totals that differ by float noise only (within TIE_EPSILON of the best of their
        # group) are equal too: regroup and re-sort the few runs where that happens.
        ts = [totals[k] for k in by]
        if any(0.0 < ts[k - 1] - ts[k] <= TIE_EPSILON for k in range(1, n)):
            by = _regroup(by, ts, last, ids)
        ordered = [scored[k] for k in by]
        return Decision(
            order=[s.provider_id for s in ordered], scored=ordered + excluded, at=now_ms
        )

    def started(self, provider_id: str, *, probe: bool = False) -> None:
        """A job (or, with ``probe``, a probe) was dispatched to the provider. A non-probe
        start is an assignment: it moves the provider to the back of its tie group."""
        now = self._clock()
        p = self._get(provider_id, now)
        p.in_flight += 1
        p.active_at = now
        if not probe:
            self._seq += 1
            p.last_started = self._seq
            p.started += 1

    def finished(self, provider_id: str, outcome: Outcome, *, probe: bool = False) -> None:
        """A job (or probe) ended with ``outcome``: updates the statistics and the breaker.
        Only a probe (``probe=True``) can close a half-open breaker, or open it again."""
        now = self._clock()
        p = self._get(provider_id, now)
        p.in_flight = max(0, p.in_flight - 1)
        p.active_at = now
        if probe:
            p.probe_until = 0
        p.quality.observe(outcome, now, self._decay)
        p.breaker.record(outcome.success, now, probe=probe)

    def rate(self, provider_id: str, feedback: float) -> None:
        """The requester's rating in [0, 1] of a finished job, arriving after ``finished``."""
        if not 0.0 <= feedback <= 1.0:
            raise ValueError("feedback must be in [0, 1]")
        p = self._providers.get(provider_id)
        if p is not None and p.quality.success.value is not None:
            p.quality.add_feedback(feedback, self._clock(), self._decay)

    def probe_due(self, now_ms: int) -> list[str]:
        """The providers to probe now, sorted by id: each half-open breaker once (until its
        probe is finished, or lost: not finished within ``probe_timeout_ms``), and each
        provider idle (nothing started or finished) for ``idle_probe_ms`` with nothing in
        flight. Each is handed out once; report the probe with ``started(id, probe=True)``
        and ``finished(id, outcome, probe=True)``."""
        due: list[str] = []
        idle_before = now_ms - self._idle_probe_ms
        timeout = self._breaker.probe_timeout_ms
        closed = BreakerState.CLOSED
        for provider_id, p in self._providers.items():
            b = p.breaker
            if b.state is not closed:
                if b.claim_probe(now_ms):
                    due.append(provider_id)
            elif p.active_at <= idle_before and p.in_flight == 0 and now_ms >= p.probe_until:
                p.probe_until = now_ms + timeout
                due.append(provider_id)
        due.sort()
        return due

    def forget(self, provider_id: str) -> None:
        """Drop a provider that left the marketplace (its statistics go with it)."""
        self._providers.pop(provider_id, None)

    def stats(self, provider_id: str) -> ProviderStats | None:
        """The provider's statistics, ``None`` if the router has not seen it."""
        p = self._providers.get(provider_id)
        if p is None:
            return None
        now = self._clock()
        q = p.quality
        state = p.breaker.state_at(now)
        return ProviderStats(
            provider_id=provider_id,
            weight=q.answered.weight_at(now, self._decay.half_life_ms),
            success_rate=q.success.value,
            answered_rate=q.answered.value,
            ttft_ms=q.ttft.value,
            tokens_per_s=q.tps.value,
            feedback=q.feedback.value,
            in_flight=p.in_flight,
            started=p.started,
            breaker=state.value,
            breaker_open_until=p.breaker.open_until if state is BreakerState.OPEN else None,
        )
