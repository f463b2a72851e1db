"""Recency-weighted statistics of one provider: success, time to first token, tokens per
second, user feedback.

Each is an exponentially decaying average *by time*: an observation made ``age`` ms ago weighs
``0.5 ** (age / half_life_ms)``, so with the default half-life of an hour a failure from an hour
ago counts half as much as one from now, and one from a day ago next to nothing. The average is
``sum(weight * value) / sum(weight)``; both sums decay together, so the average itself only
moves when an observation arrives, and is cached then. When the total weight of a provider's
observations falls below ``forget_below`` (by default 0.05: one observation about 4.3
half-lives old) the provider has, for routing, no history again and gets the neutral prior.
"""

from __future__ import annotations

import math

import msgspec


class Decay(msgspec.Struct, frozen=True):
    """How fast observations fade: ``half_life_ms``, and the weight under which a provider's
    history is forgotten (``forget_below``)."""

    half_life_ms: int = 3_600_000
    forget_below: float = 0.05

    def __post_init__(self) -> None:
        if self.half_life_ms < 1 or not 0.0 < self.forget_below < 1.0:
            raise ValueError("half_life_ms must be at least 1 and forget_below in (0, 1)")


class Outcome(msgspec.Struct, frozen=True):
    """How one job (or probe) went.

    ``success``: the answer was complete (and, for a probe, the known answer was right).
    ``ttft_ms``: time to the first token, ``None`` if none came. ``tokens_per_s``: streaming
    speed after the first token, ``None`` if not measured. ``feedback``: the requester's rating
    in [0, 1] (1 best), ``None`` if not given.
    """

    success: bool
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    feedback: float | None = None

    def __post_init__(self) -> None:
        if self.ttft_ms is not None and not (math.isfinite(self.ttft_ms) and self.ttft_ms >= 0):
            raise ValueError("ttft_ms must be a finite number >= 0")
        if self.tokens_per_s is not None and not (
            math.isfinite(self.tokens_per_s) and self.tokens_per_s >= 0
        ):
            raise ValueError("tokens_per_s must be a finite number >= 0")
        if self.feedback is not None and not 0.0 <= self.feedback <= 1.0:
            raise ValueError("feedback must be in [0, 1]")


class Average:
    """One decaying average. ``value`` is ``None`` before the first observation."""

    __slots__ = ("_sum", "at", "value", "weight")

    def __init__(self) -> None:
        self._sum = 0.0
        self.weight = 0.0
        self.at = 0
        self.value: float | None = None

    def add(self, x: float, now_ms: int, half_life_ms: int) -> None:
        if self.value is not None:
            factor = 0.5 ** (max(0, now_ms - self.at) / half_life_ms)
            self._sum *= factor
            self.weight *= factor
        self._sum += x
        self.weight += 1.0
        self.at = max(self.at, now_ms)
        self.value = self._sum / self.weight

    def weight_at(self, now_ms: int, half_life_ms: int) -> float:
        return self.weight * float(0.5 ** (max(0, now_ms - self.at) / half_life_ms))


class Quality:
    """The five averages of one provider and the raw routing inputs derived from them.

    ``raw`` is ``(quality, availability, ttft_ms, tokens_per_s)`` with ``None`` where there is
    no observation, valid until ``forget_at`` (ms); recomputed on each observation only, so
    ranking reads a tuple.
    """

    __slots__ = ("answered", "feedback", "forget_at", "raw", "success", "tps", "ttft")

    def __init__(self) -> None:
        self.answered = Average()  # a first token came (or the job succeeded)
        self.success = Average()
        self.ttft = Average()
        self.tps = Average()
        self.feedback = Average()
        self.raw: tuple[float | None, float | None, float | None, float | None] = (
            None,
            None,
            None,
            None,
        )
        self.forget_at = 0

    def observe(self, outcome: Outcome, now_ms: int, decay: Decay) -> None:
        h = decay.half_life_ms
        answered = outcome.success or outcome.ttft_ms is not None
        self.answered.add(1.0 if answered else 0.0, now_ms, h)
        self.success.add(1.0 if outcome.success else 0.0, now_ms, h)
        if outcome.ttft_ms is not None:
            self.ttft.add(outcome.ttft_ms, now_ms, h)
        if outcome.tokens_per_s is not None:
            self.tps.add(outcome.tokens_per_s, now_ms, h)
        if outcome.feedback is not None:
            self.feedback.add(outcome.feedback, now_ms, h)
        self._refresh(decay)

    def add_feedback(self, feedback: float, now_ms: int, decay: Decay) -> None:
        """A rating that arrived after its job's outcome (the history must not be empty)."""
        self.feedback.add(feedback, now_ms, decay.half_life_ms)
        self._refresh(decay)

    def _refresh(self, decay: Decay) -> None:
        success = self.success.value
        if success is None:
            return
        feedback = self.feedback.value
        quality = success if feedback is None else 0.5 * success + 0.5 * feedback
        self.raw = (quality, self.answered.value, self.ttft.value, self.tps.value)
        # Every outcome feeds ``answered``: its weight is the weight of the whole history.
        w = self.answered.weight
        h = decay.half_life_ms
        self.forget_at = self.answered.at + math.floor(h * math.log2(w / decay.forget_below))

    def raw_at(
        self, now_ms: int
    ) -> tuple[float | None, float | None, float | None, float | None] | None:
        """The raw inputs, or ``None`` if there is no history (or it has been forgotten)."""
        return self.raw if now_ms < self.forget_at else None
