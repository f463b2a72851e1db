"""The compute marketplace. ``routing``: routing decisions per second, against a bare sort.
``latency``: what Yggdrasil adds to a compute request on the device wire against the echo
provider called directly, CPU per request and per chunk, requests/s
(``benchmarks/marketplace_latency.py``; run:
``.venv/bin/python -m benchmarks.marketplace latency [--requests 300] [--concurrency 32]``).

Run:  .venv/bin/python -m benchmarks.marketplace routing [--seconds 2] [--providers 10,1000,10000]

One process, no I/O: a :class:`yggdrasil.marketplace.ProviderRouter` and ``N`` live providers
(prices 10-46 cents per 1,000 tokens, 1-5 free slots, one in ten for another model, one in
fifty off its schedule; a third with a history of outcomes). Each decision is one
``rank`` over all ``N`` candidates followed by ``started`` of the first (so the round robin
turns, as in the request flow).

Baseline, in the same run: ``sorted(candidates, key=price)``, the least a router must do
(one pass over the candidates and an ordering). The ratio is the router's decisions per second
over the baseline's sorts per second: how many times slower than a bare sort a full decision
(filters, five normalized scores, tie groups, every candidate's ``Scored``) is.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from operator import attrgetter

from yggdrasil.marketplace import Candidate, Outcome, ProviderRouter, RouteRequest

REQUEST = RouteRequest(model="llama-3-8b", max_cost_cents=1000, max_tokens=4096)


def candidates(n: int) -> list[Candidate]:
    return [
        Candidate(
            provider_id=f"prov_{i:06d}",
            price_per_1k=10 + (i * 7) % 37,
            free_slots=1 + i % 5,
            tokens_per_minute=6000,
            available=i % 50 != 7,
            models=frozenset({"mistral-7b" if i % 10 == 3 else "llama-3-8b"}),
        )
        for i in range(n)
    ]


def rate(seconds: float, one: Callable[[], object]) -> float:
    """Calls per second of ``one`` over ``seconds`` (after a warm-up of a tenth of it)."""
    for deadline in (time.perf_counter() + seconds / 10, None):
        count = 0
        started = time.perf_counter()
        end = deadline if deadline is not None else started + seconds
        while time.perf_counter() < end:
            one()
            count += 1
    return count / (time.perf_counter() - started)


def one_size(seconds: float, n: int) -> tuple[float, float]:
    """(decisions per second, baseline sorts per second) with ``n`` live providers."""
    now = [1_000_000]
    router = ProviderRouter(clock=lambda: now[0])
    live = candidates(n)
    for i in range(0, n, 3):
        pid = live[i].provider_id
        router.started(pid)
        router.finished(pid, Outcome(i % 11 != 0, 80.0 + i % 120, 20.0 + i % 40))

    def decide() -> None:
        now[0] += 1
        first = router.rank(REQUEST, live, now_ms=now[0]).order[0]
        router.started(first)
        router.finished(first, Outcome(True, 100.0, 30.0))

    price = attrgetter("price_per_1k")
    base = rate(seconds, lambda: sorted(live, key=price))
    return rate(seconds, decide), base


def routing(seconds: float, sizes: list[int]) -> None:
    print("| live providers | decisions/s | ms per decision | baseline sorts/s | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for n in sizes:
        decisions, base = one_size(seconds, n)
        print(
            f"| {n:,} | {decisions:,.0f} | {1000 / decisions:.3f} | {base:,.0f} "
            f"| {decisions / base:.3f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.marketplace")
    sub = parser.add_subparsers(dest="part", required=True)
    r = sub.add_parser("routing", help="routing decisions per second")
    r.add_argument("--seconds", type=float, default=2.0)
    r.add_argument("--providers", default="10,1000,10000")
    lat = sub.add_parser("latency", help="latency, CPU and requests/s added to a compute request")
    lat.add_argument("--requests", type=int, default=300)
    lat.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    if args.part == "routing":
        routing(args.seconds, [int(x) for x in args.providers.split(",")])
    if args.part == "latency":
        from benchmarks.marketplace_latency import latency

        latency(args.requests, args.concurrency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
