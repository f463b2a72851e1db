"""The marketplace's routing engine: pure, no I/O, a virtual clock (docs/marketplace-routing.md)."""

from __future__ import annotations

import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yggdrasil.marketplace import (
    BreakerSettings,
    Candidate,
    Decay,
    Decision,
    Outcome,
    ProviderRouter,
    RouteRequest,
    Scored,
    Weights,
)

HOUR = 3_600_000
OK = Outcome(success=True, ttft_ms=100.0, tokens_per_s=50.0)
FAIL = Outcome(success=False)  # no first token: neither answered nor succeeded
REQUEST = RouteRequest(model="llama-3-8b", max_cost_cents=100, max_tokens=1000)


class Clock:
    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def cand(
    pid: str,
    *,
    price: int = 10,
    free: int = 4,
    available: bool = True,
    models: tuple[str, ...] = ("llama-3-8b",),
) -> Candidate:
    return Candidate(
        provider_id=pid,
        price_per_1k=price,
        free_slots=free,
        tokens_per_minute=6000,
        available=available,
        models=frozenset(models),
    )


def router(clock: Clock, **kwargs: object) -> ProviderRouter:
    return ProviderRouter(clock=clock, **kwargs)  # type: ignore[arg-type]


def by_id(decision: Decision) -> dict[str, Scored]:
    return {s.provider_id: s for s in decision.scored}


# -- the weights ------------------------------------------------------------------------------


def test_worked_example_price_alone() -> None:
    """docs/marketplace-routing.md, "A worked example": no history, so quality, latency and
    availability are equal (1.0) for both; A is cheaper, B has more free slots."""
    clock = Clock()
    d = router(clock).rank(
        REQUEST, [cand("b", price=20, free=8), cand("a", price=10, free=2)], now_ms=clock.now
    )
    assert d.order == ["a", "b"]
    a, b = d.scored
    assert (a.price, a.quality, a.latency, a.availability, a.fairness) == (1.0, 1.0, 1.0, 1.0, 0.0)
    assert (b.price, b.quality, b.latency, b.availability, b.fairness) == (0.0, 1.0, 1.0, 1.0, 1.0)
    assert a.total == pytest.approx(0.30 + 0.25 + 0.20 + 0.15)  # 0.90
    assert b.total == pytest.approx(0.25 + 0.20 + 0.15 + 0.10)  # 0.70
    assert a.excluded is None
    assert b.excluded is None
    assert d.at == clock.now


def feed(r: ProviderRouter, pid: str, *outcomes: Outcome) -> None:
    for o in outcomes:
        r.started(pid)
        r.finished(pid, o)


# Each case: A better than B on exactly one dimension, and by how much (normalized).
ONE_DIMENSION = {
    "price": ({"price": 10}, {"price": 30}, [], [], 1.0),
    "quality": ({}, {}, [Outcome(True, 100.0)], [Outcome(False, 100.0)], 1.0),
    "latency": ({}, {}, [Outcome(True, 100.0)], [Outcome(True, 300.0)], 0.5),  # ttft half
    "availability": (
        {},
        {},
        [Outcome(False, 100.0), Outcome(False, 100.0)],
        [Outcome(False, 100.0), Outcome(False, None)],
        1.0,
    ),
    "fairness": ({"free": 6}, {"free": 2}, [], [], 1.0),
}


@pytest.mark.parametrize("dimension", ONE_DIMENSION)
def test_better_on_one_dimension_wins_by_exactly_its_weight(dimension: str) -> None:
    a_kw, b_kw, a_hist, b_hist, gap = ONE_DIMENSION[dimension]
    clock = Clock()
    r = router(clock)
    feed(r, "a", *a_hist)
    feed(r, "b", *b_hist)
    d = r.rank(REQUEST, [cand("b", **b_kw), cand("a", **a_kw)], now_ms=clock.now)  # type: ignore[arg-type]
    assert d.order == ["a", "b"]
    a, b = by_id(d)["a"], by_id(d)["b"]
    for name in ("price", "quality", "latency", "availability", "fairness"):
        if name == dimension:
            assert getattr(a, name) - getattr(b, name) == pytest.approx(gap)
        else:
            assert getattr(a, name) == getattr(b, name), name
    weight = getattr(Weights(), dimension)
    assert a.total - b.total == pytest.approx(weight * gap)


def test_custom_weights_decide() -> None:
    """All weight on fairness: the provider with more free slots wins over a cheaper one."""
    clock = Clock()
    r = router(clock, weights=Weights(price=0, quality=0, latency=0, availability=0, fairness=1))
    d = r.rank(REQUEST, [cand("cheap", price=1, free=1), cand("free", price=90, free=9)], now_ms=0)
    assert d.order == ["free", "cheap"]
    assert [s.total for s in d.scored] == [1.0, 0.0]


@pytest.mark.parametrize(
    "weights", [dict(price=-0.1), dict(price=0, quality=0, latency=0, availability=0, fairness=0)]
)
def test_weights_are_checked(weights: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="weights"):
        Weights(**weights)


def test_outcomes_are_checked() -> None:
    with pytest.raises(ValueError, match="feedback"):
        Outcome(True, feedback=1.5)
    with pytest.raises(ValueError, match="ttft_ms"):
        Outcome(True, ttft_ms=float("nan"))
    with pytest.raises(ValueError, match="feedback"):
        router(Clock()).rate("a", -0.1)


# -- the filters ------------------------------------------------------------------------------


def test_every_filter_names_its_reason() -> None:
    clock = Clock()
    r = router(clock, breaker=BreakerSettings(consecutive_failures=1))
    feed(r, "broken", FAIL)
    candidates = [
        cand("other-model", models=("mistral-7b",)),
        cand("off-schedule", available=False),
        cand("full", free=0),
        cand("pricey", price=101),  # ceil(1000 * 101 / 1000) = 101 > 100 cents
        cand("broken"),
        cand("fine", price=100),  # exactly the max cost: allowed
    ]
    d = r.rank(REQUEST, candidates, now_ms=clock.now)
    assert d.order == ["fine"]
    assert [(s.provider_id, s.excluded) for s in d.scored] == [
        ("fine", None),
        ("other-model", "model"),
        ("off-schedule", "unavailable"),
        ("full", "no capacity"),
        ("pricey", "too expensive"),
        ("broken", "breaker open"),
    ]
    assert all(s.total == 0.0 for s in d.scored[1:])


def test_filters_apply_in_order_first_reason_wins() -> None:
    d = router(Clock()).rank(
        REQUEST, [cand("x", models=("other",), available=False, free=0, price=999)], now_ms=0
    )
    assert d.order == []
    assert d.scored[0].excluded == "model"


@pytest.mark.parametrize(
    ("max_tokens", "price", "max_cost", "allowed"),
    [(1, 1, 1, True), (1, 1, 0, False), (1500, 7, 11, True), (1500, 8, 11, False)],
)
def test_price_cap_rounds_the_cost_up(
    max_tokens: int, price: int, max_cost: int, allowed: bool
) -> None:
    # ceil(1 * 1 / 1000) = 1; ceil(1500 * 7 / 1000) = ceil(10.5) = 11; ceil(12.0) = 12
    req = RouteRequest("llama-3-8b", max_cost_cents=max_cost, max_tokens=max_tokens)
    d = router(Clock()).rank(req, [cand("p", price=price)], now_ms=0)
    assert (d.order == ["p"]) is allowed


# -- round robin, fairness, load balancing ----------------------------------------------------


def test_round_robin_among_equal_providers() -> None:
    clock = Clock()
    r = router(clock)
    candidates = [cand("c"), cand("a"), cand("b")]
    firsts = []
    for _ in range(7):
        d = r.rank(REQUEST, candidates, now_ms=clock.now)
        firsts.append(d.order[0])
        r.started(d.order[0])
        clock.now += 10
    assert firsts == ["a", "b", "c", "a", "b", "c", "a"]
    # the failover order is the rotation too: least recently started first
    assert r.rank(REQUEST, candidates, now_ms=clock.now).order == ["b", "c", "a"]


def test_a_decision_not_started_does_not_rotate() -> None:
    r = router(Clock())
    candidates = [cand("a"), cand("b")]
    assert r.rank(REQUEST, candidates, now_ms=0).order[0] == "a"
    assert r.rank(REQUEST, candidates, now_ms=0).order[0] == "a"


def test_a_better_provider_is_not_rotated_away() -> None:
    clock = Clock()
    r = router(clock)
    for _ in range(5):
        d = r.rank(REQUEST, [cand("cheap", price=5), cand("dear", price=6)], now_ms=clock.now)
        assert d.order == ["cheap", "dear"]
        r.started("cheap")


def windows_fair(sequence: list[str], members: list[str]) -> bool:
    for i in range(len(sequence)):
        counts = dict.fromkeys(members, 0)
        for j in range(i, len(sequence)):
            counts[sequence[j]] += 1
            if max(counts.values()) - min(counts.values()) > 1:
                return False
    return True


OPS = st.lists(
    st.one_of(
        st.just(("rank_start",)),
        st.just(("rank_only",)),
        st.tuples(st.just("finish"), st.integers(0, 100)),
        st.just(("probe",)),
        st.tuples(st.just("wait"), st.integers(0, 60_000)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 6), ops=OPS)
def test_fairness_guarantee(n: int, ops: list[tuple[object, ...]]) -> None:
    """Equal providers (same price, slots, and identical outcomes reported, however
    interleaved with decisions, probes and time): over any window of assignments, the counts
    differ by at most one."""
    clock = Clock()
    r = router(clock)
    members = [f"p{i}" for i in range(n)]
    candidates = [cand(m) for m in reversed(members)]
    for m in members:  # the same history for each (the registration test)
        r.started(m, probe=True)
        r.finished(m, OK, probe=True)
    in_flight: list[str] = []
    assigned: list[str] = []
    for op in ops:
        match op:
            case ("rank_start",):
                d = r.rank(REQUEST, candidates, now_ms=clock.now)
                assert sorted(d.order) == members
                r.started(d.order[0])
                in_flight.append(d.order[0])
                assigned.append(d.order[0])
            case ("rank_only",):
                r.rank(REQUEST, candidates, now_ms=clock.now)
            case ("finish", int(k)) if in_flight:
                r.finished(in_flight.pop(k % len(in_flight)), OK)
            case ("probe",):
                for m in r.probe_due(clock.now):
                    r.started(m, probe=True)
                    r.finished(m, OK, probe=True)
            case ("wait", int(ms)):
                clock.now += ms
            case _:
                pass
    assert windows_fair(assigned, members)


def test_the_window_checker_sees_unfairness() -> None:
    assert windows_fair(["a", "b", "a", "b"], ["a", "b"])
    assert not windows_fair(["a", "a", "b"], ["a", "b"])
    assert not windows_fair(["a", "b", "a"], ["a", "b", "c"])


def test_load_balancing_by_free_slots() -> None:
    """Capacities 4 and 2, no job finishing: the free slots (as the flow reports them)
    spread the jobs 4 : 2, alternating once the free slots are equal."""
    clock = Clock()
    r = router(clock)
    capacity = {"a": 4, "b": 2}
    busy = {"a": 0, "b": 0}
    firsts = []
    for _ in range(6):
        candidates = [cand(p, free=capacity[p] - busy[p]) for p in capacity]
        d = r.rank(REQUEST, candidates, now_ms=clock.now)
        firsts.append(d.order[0])
        r.started(d.order[0])
        busy[d.order[0]] += 1
    assert firsts == ["a", "a", "b", "a", "b", "a"]
    full = r.rank(REQUEST, [cand(p, free=capacity[p] - busy[p]) for p in capacity], now_ms=0)
    assert full.order == []
    assert {s.excluded for s in full.scored} == {"no capacity"}


# -- quality: recency weighting and the neutral prior -----------------------------------------


def test_old_failures_matter_less_than_new_ones() -> None:
    clock = Clock()
    r = router(clock, breaker=BreakerSettings(consecutive_failures=100, failure_rate=1.0))
    feed(r, "recovered", *[FAIL] * 5)
    feed(r, "declining", *[OK] * 5)
    clock.now += 2 * HOUR
    feed(r, "recovered", *[OK] * 5)
    feed(r, "declining", *[FAIL] * 5)
    recovered, declining = r.stats("recovered"), r.stats("declining")
    assert recovered is not None
    assert declining is not None
    # the old five weigh a quarter each: 5 / (5 + 1.25) and 1.25 / 6.25
    assert recovered.success_rate == pytest.approx(0.8)
    assert declining.success_rate == pytest.approx(0.2)
    assert recovered.weight == pytest.approx(6.25)
    d = r.rank(REQUEST, [cand("declining"), cand("recovered")], now_ms=clock.now)
    assert d.order == ["recovered", "declining"]


def test_new_providers_get_the_neutral_prior_and_history_is_forgotten() -> None:
    clock = Clock()
    r = router(clock, breaker=BreakerSettings(consecutive_failures=100, min_outcomes=20, window=20))
    feed(r, "good", OK)
    feed(r, "bad", FAIL)
    d = r.rank(REQUEST, [cand("good"), cand("bad"), cand("new")], now_ms=clock.now)
    s = by_id(d)
    assert (s["good"].quality, s["new"].quality, s["bad"].quality) == (1.0, 0.5, 0.0)  # prior 0.5
    assert d.order == ["good", "new", "bad"]
    # one observation weighs 0.05 after log2(20) = 4.32 half-lives: then it is forgotten
    clock.now += 4 * HOUR
    d = r.rank(REQUEST, [cand("bad"), cand("new")], now_ms=clock.now)
    assert {s.provider_id: s.quality for s in d.scored} == {"bad": 0.0, "new": 1.0}
    clock.now += HOUR // 2
    d = r.rank(REQUEST, [cand("bad"), cand("new")], now_ms=clock.now)
    assert {s.provider_id: s.quality for s in d.scored} == {"bad": 1.0, "new": 1.0}
    assert d.order == ["new", "bad"]  # equal: the one never started first


def test_unknown_latency_is_the_mean_of_the_known() -> None:
    clock = Clock()
    r = router(clock)
    feed(r, "fast", Outcome(True, 100.0))
    feed(r, "slow", Outcome(True, 300.0))
    d = r.rank(REQUEST, [cand("fast"), cand("slow"), cand("new")], now_ms=clock.now)
    # time to first token 1, 0 and 0.5 (the mean, 200 ms); tokens/s unknown for all: 1
    assert {s.provider_id: s.latency for s in d.scored} == {"fast": 1.0, "slow": 0.5, "new": 0.75}


def test_feedback_counts_in_quality() -> None:
    clock = Clock()
    r = router(clock)
    feed(r, "liked", OK)
    feed(r, "disliked", OK)
    r.rate("liked", 1.0)
    r.rate("disliked", 0.0)
    r.rate("unknown", 1.0)  # nothing to rate: ignored
    d = r.rank(REQUEST, [cand("disliked"), cand("liked")], now_ms=clock.now)
    assert d.order == ["liked", "disliked"]
    assert by_id(d)["liked"].total - by_id(d)["disliked"].total == pytest.approx(0.25)
    stats = r.stats("disliked")
    assert stats is not None
    assert stats.feedback == 0.0
    assert stats.success_rate == 1.0
    assert r.stats("unknown") is None


# -- the breaker ------------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_then_one_probe() -> None:
    clock = Clock()
    r = router(clock, breaker=BreakerSettings(consecutive_failures=3, cooldown_ms=30_000))
    feed(r, "p", FAIL, FAIL)
    assert r.rank(REQUEST, [cand("p")], now_ms=clock.now).order == ["p"]
    feed(r, "p", FAIL)
    opened = clock.now
    stats = r.stats("p")
    assert stats is not None
    assert stats.breaker == "open"
    assert stats.breaker_open_until == opened + 30_000
    assert r.rank(REQUEST, [cand("p")], now_ms=clock.now).scored[0].excluded == "breaker open"
    assert r.probe_due(opened + 29_999) == []
    # half-open: still no requests, exactly one probe
    clock.now = opened + 30_000
    assert r.rank(REQUEST, [cand("p")], now_ms=clock.now).order == []
    assert r.probe_due(clock.now) == ["p"]
    assert r.probe_due(clock.now) == []
    r.started("p", probe=True)
    r.finished("p", Outcome(True, 100.0))
    stats = r.stats("p")
    assert stats is not None
    assert stats.breaker == "half_open"
    r.finished("p", FAIL, probe=True)
    stats = r.stats("p")  # failed probe: open again, for twice as long
    assert stats is not None
    assert stats.breaker == "open"
    assert stats.breaker_open_until == clock.now + 60_000
    clock.now += 60_000
    assert r.probe_due(clock.now) == ["p"]
    r.started("p", probe=True)
    r.finished("p", OK, probe=True)
    stats = r.stats("p")
    assert stats is not None
    assert stats.breaker == "closed"
    assert r.rank(REQUEST, [cand("p")], now_ms=clock.now).order == ["p"]
    # closed again with a fresh count and the first cool-down
    feed(r, "p", FAIL, FAIL, FAIL)
    stats = r.stats("p")
    assert stats is not None
    assert stats.breaker_open_until == clock.now + 30_000


def test_breaker_opens_on_failure_rate_over_the_window() -> None:
    clock = Clock()
    r = router(clock, breaker=BreakerSettings(window=10, min_outcomes=10, failure_rate=0.5))
    feed(r, "p", *[OK, FAIL] * 4, OK)
    stats = r.stats("p")
    assert stats is not None
    assert stats.breaker == "closed"
    feed(r, "p", FAIL)  # 5 of 10
    stats = r.stats("p")
    assert stats is not None
    assert stats.breaker == "open"


def test_breaker_backoff_is_capped_and_a_lost_probe_is_handed_out_again() -> None:
    clock = Clock()
    settings_ = BreakerSettings(
        consecutive_failures=1, cooldown_ms=1000, backoff=10.0, max_cooldown_ms=5000,
        probe_timeout_ms=2000,
    )  # fmt: skip
    r = router(clock, breaker=settings_)
    feed(r, "p", FAIL)
    for expected in (10_000, 5000, 5000):
        stats = r.stats("p")
        assert stats is not None
        assert stats.breaker_open_until is not None
        clock.now = stats.breaker_open_until
        assert r.probe_due(clock.now) == ["p"]
        assert r.probe_due(clock.now + 1999) == []
        assert r.probe_due(clock.now + 2000) == ["p"]  # the first probe was lost
        r.finished("p", FAIL, probe=True)
        stats = r.stats("p")
        assert stats is not None
        assert stats.breaker_open_until == clock.now + min(expected, 5000)


def test_breaker_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="min_outcomes"):
        BreakerSettings(min_outcomes=30, window=20)
    with pytest.raises(ValueError, match="cooldown_ms"):
        BreakerSettings(cooldown_ms=10, max_cooldown_ms=5)
    with pytest.raises(ValueError, match="half_life_ms"):
        Decay(half_life_ms=0)


# -- probing idle providers -------------------------------------------------------------------


def test_idle_providers_are_probed_once_each() -> None:
    clock = Clock(0)
    r = router(clock, idle_probe_ms=60_000, breaker=BreakerSettings(probe_timeout_ms=10_000))
    r.rank(REQUEST, [cand("idle"), cand("busy")], now_ms=0)  # first seen at 0
    clock.now = 30_000
    r.started("busy")  # in flight: never probed
    assert r.probe_due(59_999) == []
    assert r.probe_due(60_000) == ["idle"]
    assert r.probe_due(60_001) == []  # handed out
    assert r.probe_due(70_000) == ["idle"]  # that probe was lost: again
    clock.now = 70_500
    r.started("idle", probe=True)
    r.finished("idle", OK, probe=True)
    assert r.probe_due(130_499) == []
    assert r.probe_due(130_500) == ["idle"]
    clock.now = 200_000
    r.finished("busy", OK)
    assert r.probe_due(259_999) == ["idle"]  # (lost again)
    assert r.probe_due(260_000) == ["busy"]
    r.forget("idle")
    assert r.stats("idle") is None
    assert r.probe_due(10_000_000) == ["busy"]


# -- determinism and speed --------------------------------------------------------------------


def test_same_calls_same_decisions() -> None:
    def run() -> list[bytes]:
        clock = Clock()
        r = router(clock)
        out = []
        candidates = [cand(f"p{i}", price=10 + i % 3, free=1 + i % 2) for i in range(12)]
        for step in range(40):
            d = r.rank(REQUEST, candidates, now_ms=clock.now)
            out.append(msgspec.json.encode(d))
            r.started(d.order[0])
            r.finished(d.order[step % 3], OK if step % 4 else FAIL)
            clock.now += 1000
        return out

    first = run()
    assert first == run()
    assert len(set(first)) > 1


def test_the_order_does_not_depend_on_the_input_order() -> None:
    candidates = [cand(f"p{i}", price=10 + i % 3) for i in range(30)]
    a = router(Clock()).rank(REQUEST, candidates, now_ms=0)
    b = router(Clock()).rank(REQUEST, list(reversed(candidates)), now_ms=0)
    assert a.order == b.order
    assert a.scored == b.scored


def test_ten_thousand_candidates_rank_quickly() -> None:
    """A sanity bound, not a benchmark (benchmarks/marketplace.py measures): CPU time, best
    of five, so a busy machine does not make it flake."""
    clock = Clock()
    r = router(clock)
    candidates = [cand(f"p{i:05d}", price=10 + i % 37, free=1 + i % 5) for i in range(10_000)]
    for i in range(0, 10_000, 3):
        feed(r, f"p{i:05d}", Outcome(True, 100.0 + i % 50, 30.0 + i % 7))
    r.rank(REQUEST, candidates, now_ms=clock.now)
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        d = r.rank(REQUEST, candidates, now_ms=clock.now)
        best = min(best, time.process_time() - started)
    assert len(d.order) == 10_000
    assert best < 0.050
