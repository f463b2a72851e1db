"""Token-bucket rate limits per key (client address, principal), bounded in memory."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from ._errors import YggdrasilError


class RateLimited(YggdrasilError):
    status = 429
    code = "rate_limited"
    default_message = "too many requests, slow down"

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimiter:
    """``rate`` tokens per second, at most ``burst`` saved up, one bucket per key.

    At most ``max_keys`` buckets are kept; the least recently used is forgotten first (a forgotten
    key starts again with a full bucket, which errs on the side of letting a request through).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from ``key``'s bucket or raise :class:`RateLimited`."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens < cost:
            self._remember(key, tokens, now)
            raise RateLimited(max(1, math.ceil((cost - tokens) / self.rate)))
        self._remember(key, tokens - cost, now)

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key``'s bucket and return 0, or take nothing and return
        the seconds until they would be there (for callers that slow down instead of failing;
        the wait is at most that of a full bucket, and a cost above the burst is never taken)."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens < cost:
            self._remember(key, tokens, now)
            return (min(cost, float(self.burst)) - tokens) / self.rate
        self._remember(key, tokens - cost, now)
        return 0.0

    def wait_time(self, key: str, cost: float = 1.0) -> float:
        """The seconds until ``cost`` tokens would be in ``key``'s bucket (0 if they are now);
        takes nothing."""
        now = self._clock()
        tokens, stamp = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        return max(0.0, (min(cost, float(self.burst)) - tokens) / self.rate)

    def _remember(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
