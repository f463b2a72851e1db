"""A minimal stand-in for the routing engine (``_routing.py``, built separately), with exactly
its names: filter by model, availability, free capacity and price; cheapest first; round robin
among equal prices. :mod:`._pick` imports these names, so swapping in the real engine is one
import line there."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    provider_id: str
    price_per_1k: int
    free_slots: int
    tokens_per_minute: int
    available: bool
    models: tuple[str, ...] | list[str]


@dataclass(frozen=True)
class RouteRequest:
    model: str
    max_cost_cents: int
    max_tokens: int


@dataclass(frozen=True)
class Scored:
    provider_id: str
    total: float
    price: float
    quality: float
    latency: float
    availability: float
    fairness: float
    excluded: str | None = None


@dataclass(frozen=True)
class Decision:
    order: list[str]
    scored: list[Scored]
    at: int


@dataclass(frozen=True)
class Outcome:
    success: bool
    ttft_ms: int | None = None
    tokens_per_s: float | None = None
    feedback: int | None = None


@dataclass
class ProviderRouter:
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def rank(self, request: RouteRequest, candidates: list[Candidate], *, now_ms: int) -> Decision:
        scored: list[Scored] = []
        fit: list[Candidate] = []
        for c in candidates:
            why = None
            if request.model not in c.models:
                why = "model"
            elif not c.available:
                why = "unavailable"
            elif c.free_slots <= 0:
                why = "busy"
            elif -(-request.max_tokens * c.price_per_1k // 1000) > request.max_cost_cents and (
                c.price_per_1k > request.max_cost_cents * 1000
            ):
                why = "price"
            if why is None:
                fit.append(c)
            scored.append(Scored(c.provider_id, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, why))
        prices = sorted({c.price_per_1k for c in fit})
        order: list[str] = []
        turn = next(self._turn)
        for price in prices:
            same = sorted(c.provider_id for c in fit if c.price_per_1k == price)
            k = turn % len(same)
            order += same[k:] + same[:k]
        totals = {pid: 1.0 - i / max(len(order), 1) for i, pid in enumerate(order)}
        scored = [
            Scored(
                s.provider_id,
                totals.get(s.provider_id, 0.0),
                totals.get(s.provider_id, 0.0),
                0.0,
                0.0,
                0.0,
                0.0,
                s.excluded,
            )
            for s in scored
        ]
        return Decision(order, scored, now_ms)

    def started(self, provider_id: str) -> None:
        pass

    def finished(self, provider_id: str, outcome: Outcome) -> None:
        pass

    def probe_due(self, now_ms: int) -> list[str]:
        return []
