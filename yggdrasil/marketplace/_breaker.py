"""The circuit breaker of one provider: a small state table, time as an input (STYLE rules 5, 6).

``closed`` lets jobs through and counts outcomes; ``open`` lets nothing through until its
cool-down ends, then it is ``half_open``; ``half_open`` lets exactly one probe through (handed
out by :meth:`Breaker.claim_probe`): the probe's success closes it, its failure opens it again
for a longer cool-down (times ``backoff``, at most ``max_cooldown_ms``). See
``docs/marketplace-routing.md``.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

import msgspec


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerSettings(msgspec.Struct, frozen=True):
    """When a provider's breaker opens and for how long.

    It opens after ``consecutive_failures`` failures in a row, or when at least
    ``failure_rate`` of the last ``window`` outcomes failed (judged once ``min_outcomes`` of
    them are in). The first opening lasts ``cooldown_ms``; each failed probe multiplies the
    next by ``backoff``, up to ``max_cooldown_ms``. A probe handed out but not finished within
    ``probe_timeout_ms`` is taken as lost, and another is handed out.
    """

    consecutive_failures: int = 5
    window: int = 20
    min_outcomes: int = 10
    failure_rate: float = 0.5
    cooldown_ms: int = 30_000
    backoff: float = 2.0
    max_cooldown_ms: int = 600_000
    probe_timeout_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.window < 1:
            raise ValueError("consecutive_failures and window must be at least 1")
        if not 1 <= self.min_outcomes <= self.window:
            raise ValueError("min_outcomes must be between 1 and window")
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.cooldown_ms < 1 or self.max_cooldown_ms < self.cooldown_ms:
            raise ValueError("need 1 <= cooldown_ms <= max_cooldown_ms")
        if self.backoff < 1.0 or self.probe_timeout_ms < 1:
            raise ValueError("backoff must be at least 1 and probe_timeout_ms at least 1")


class Breaker:
    """One provider's breaker. Not thread-safe; owned by one :class:`ProviderRouter`."""

    __slots__ = (
        "_cooldown_ms",
        "_probe_until",
        "_recent",
        "_run",
        "_settings",
        "open_until",
        "state",
    )

    def __init__(self, settings: BreakerSettings) -> None:
        self._settings = settings
        self.state = BreakerState.CLOSED
        self.open_until = 0
        self._cooldown_ms = settings.cooldown_ms
        self._run = 0  # consecutive failures while closed
        self._recent: deque[bool] = deque(maxlen=settings.window)
        self._probe_until = 0  # a probe is out until then (half-open only)

    def state_at(self, now_ms: int) -> BreakerState:
        """The state at ``now_ms``: an open breaker whose cool-down has ended is half-open."""
        if self.state is BreakerState.OPEN and now_ms >= self.open_until:
            self.state = BreakerState.HALF_OPEN
            self._probe_until = 0
        return self.state

    def claim_probe(self, now_ms: int) -> bool:
        """True once per half-open period (again only if that probe was lost): the caller
        must probe the provider and report the outcome with ``probe=True``."""
        if self.state_at(now_ms) is not BreakerState.HALF_OPEN or now_ms < self._probe_until:
            return False
        self._probe_until = now_ms + self._settings.probe_timeout_ms
        return True

    def record(self, success: bool, now_ms: int, *, probe: bool) -> None:
        """An outcome. While open or half-open only a probe's outcome moves the breaker (jobs
        started before it opened may still finish: they are statistics, not evidence)."""
        state = self.state_at(now_ms)
        _TRANSITIONS[state](self, success, now_ms, probe)

    def _closed(self, success: bool, now_ms: int, probe: bool) -> None:
        s = self._settings
        self._recent.append(success)
        self._run = 0 if success else self._run + 1
        if success:
            return
        failed = self._recent.count(False)
        if self._run >= s.consecutive_failures or (
            len(self._recent) >= s.min_outcomes and failed >= s.failure_rate * len(self._recent)
        ):
            self._open(now_ms)

    def _open_state(self, success: bool, now_ms: int, probe: bool) -> None:
        return None

    def _half_open(self, success: bool, now_ms: int, probe: bool) -> None:
        if not probe:
            return
        if success:
            self.state = BreakerState.CLOSED
            self._cooldown_ms = self._settings.cooldown_ms
            self._run = 0
            self._recent.clear()
        else:
            self._cooldown_ms = min(
                self._settings.max_cooldown_ms, int(self._cooldown_ms * self._settings.backoff)
            )
            self._open(now_ms)

    def _open(self, now_ms: int) -> None:
        self.state = BreakerState.OPEN
        self.open_until = now_ms + self._cooldown_ms
        self._run = 0
        self._recent.clear()


_TRANSITIONS = {
    BreakerState.CLOSED: Breaker._closed,
    BreakerState.OPEN: Breaker._open_state,
    BreakerState.HALF_OPEN: Breaker._half_open,
}
