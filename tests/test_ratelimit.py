"""Token buckets: refusing (``check``) and slowing down (``take``), in virtual time."""

from __future__ import annotations

import pytest

from yggdrasil import RateLimited, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_check_refuses_past_the_burst_with_a_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    for _ in range(3):
        limiter.check("k")
    with pytest.raises(RateLimited) as refused:
        limiter.check("k")
    assert refused.value.retry_after_s == 1
    clock.now = 0.5
    limiter.check("k")  # one token back after half a second
    limiter.check("other")  # buckets are per key


def test_take_says_how_long_to_wait_and_takes_nothing_meanwhile() -> None:
    clock = Clock()
    limiter = RateLimiter(4.0, 2, clock=clock)
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == pytest.approx(0.25)
    clock.now = 0.1
    assert limiter.take("k") == pytest.approx(0.15)  # nothing was taken by the refusals
    clock.now = 0.25
    assert limiter.take("k") == 0.0
    # The wait is capped at a full bucket (a cost above the burst is never taken).
    assert limiter.take("k", 10.0) == pytest.approx(0.5)


def test_the_least_recently_used_key_is_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, max_keys=2, clock=clock)
    limiter.check("a")
    limiter.check("b")
    limiter.check("c")  # "a" is forgotten and starts again with a full bucket
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("c")
