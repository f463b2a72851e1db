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

    def _remember(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
