"""Feature access and token quotas: the one domain API, on both backends."""

from __future__ import annotations

import pytest
import trio

from yggdrasil import Invalid, Store, load_config
from yggdrasil._config import PlanConfig, SubscriptionsConfig
from yggdrasil.billing import (
    FeatureNotInPlan,
    Plans,
    QuotaExceeded,
    Subscriptions,
    Usage,
    UsageMeter,
)
from yggdrasil.billing._subscription_requests import IdempotencyKeyReused

CONFIG = SubscriptionsConfig(
    plans=[
        PlanConfig(id="free", name="Free"),
        PlanConfig(id="tiny", name="Tiny", price_cents=100, tokens=1000, features=["cloud_llm"]),
        PlanConfig(id="big", name="Big", price_cents=900, tokens=5000, features=["cloud_llm"]),
        PlanConfig(id="metered", name="Metered", token_price_cents=7, features=["cloud_llm"]),
        PlanConfig(id="relay_only", name="Relay only", price_cents=50),
    ]
)


async def user(store: Store, name: str) -> str:
    created, _ = await store.create_user(f"{name}@example.org")
    return created.user_id


async def test_parallel_consumers_never_exceed_the_quota(store: Store) -> None:
    subs = Subscriptions.build(store.db, CONFIG)
    meter = UsageMeter(store.db, Plans(CONFIG))
    ada = await user(store, "ada")
    await subs.subscribe(ada, "tiny", key="s")
    granted: list[Usage] = []
    refused: list[str] = []

    async def consume(n: int) -> None:
        try:
            granted.append(await meter.consume_tokens(ada, 15, key=f"call-{n}"))
        except QuotaExceeded as exc:
            refused.append(exc.code)

    async with trio.open_nursery() as nursery:
        for n in range(100):
            nursery.start_soon(consume, n)
    # 1000 tokens hold 66 calls of 15: exactly those succeed, whatever the order.
    assert len(granted) == 66
    assert refused == ["quota_exceeded"] * 34
    assert max(u.tokens_used for u in granted) == 990
    assert sorted(u.tokens_used for u in granted) == list(range(15, 991, 15))
    report = await meter.usage(ada)
    assert report.current.tokens_used == 990
    assert report.current.tokens_remaining == 10
    with pytest.raises(QuotaExceeded):
        await meter.consume_tokens(ada, 11, key="one-more")
    assert (await meter.consume_tokens(ada, 10, key="last")).tokens_remaining == 0
    # An upgrade raises the quota at once; what was used stays used.
    await subs.change(ada, "big", key="up")
    after = await meter.consume_tokens(ada, 4000, key="after-upgrade")
    assert (after.tokens_used, after.tokens_remaining) == (5000, 0)


async def test_a_repeated_call_counts_once(store: Store) -> None:
    subs = Subscriptions.build(store.db, CONFIG)
    meter = UsageMeter(store.db, Plans(CONFIG))
    ada = await user(store, "ada")
    await subs.subscribe(ada, "tiny", key="s")
    first = await meter.consume_tokens(ada, 300, key="req-1")
    again = await meter.consume_tokens(ada, 300, key="req-1")
    assert first == again
    assert again.tokens_used == 300
    with pytest.raises(IdempotencyKeyReused):
        await meter.consume_tokens(ada, 301, key="req-1")
    # A refused call leaves its key unused: it may be tried again later.
    with pytest.raises(QuotaExceeded):
        await meter.consume_tokens(ada, 800, key="req-2")
    await meter.consume_tokens(ada, 700, key="req-2")
    assert (await meter.usage(ada)).current.tokens_used == 1000


async def test_bad_amounts_are_refused(store: Store) -> None:
    meter = UsageMeter(store.db, Plans(CONFIG))
    ada = await user(store, "ada")
    for bad in (0, -5, 10**10, True, 1.5):
        with pytest.raises(Invalid):
            await meter.consume_tokens(ada, bad, key=f"bad-{bad}")  # type: ignore[arg-type]
    with pytest.raises(Invalid):
        await meter.consume_tokens(ada, 5, key="")


async def test_pay_per_token_counts_instead_of_refusing(store: Store) -> None:
    subs = Subscriptions.build(store.db, CONFIG)
    meter = UsageMeter(store.db, Plans(CONFIG))
    ada = await user(store, "ada")
    await subs.subscribe(ada, "metered", key="s")
    assert (await subs.invoices.list(ada)).items == []  # no fee, nothing charged
    for n in range(20):
        usage = await meter.consume_tokens(ada, 100_001, key=f"m-{n}")
    assert usage.metered
    assert usage.tokens_remaining is None
    assert usage.metered_tokens == 2_000_020
    assert usage.metered_cents == 14_001  # ceil(2,000,020 x 7 / 1000)


async def test_feature_access_follows_the_plan(store: Store) -> None:
    subs = Subscriptions.build(store.db, load_config().subscriptions)
    meter = UsageMeter(store.db, Plans(load_config().subscriptions))
    ada = await user(store, "ada")
    for feature in ("relay", "turn", "marketplace"):
        assert await meter.may_use(ada, feature)
    assert not await meter.may_use(ada, "cloud_llm")
    assert not await meter.may_use(ada, "no_such_feature")
    with pytest.raises(FeatureNotInPlan):
        await meter.consume_tokens(ada, 1, key="free")
    await subs.subscribe(ada, "premium", key="s")
    assert await meter.may_use(ada, "cloud_llm")
    assert not await meter.may_use(ada, "priority_relay")
    await subs.change(ada, "pro", key="c")
    assert await meter.may_use(ada, "priority_relay")
    assert not await meter.may_use(ada, "priority_support")
    assert await meter.may_use(ada, "relay")
    # Another user's plan is theirs alone.
    bob = await user(store, "bob")
    assert not await meter.may_use(bob, "cloud_llm")


async def test_a_plan_without_cloud_llm_refuses_tokens(store: Store) -> None:
    subs = Subscriptions.build(store.db, CONFIG)
    meter = UsageMeter(store.db, Plans(CONFIG))
    ada = await user(store, "ada")
    await subs.subscribe(ada, "relay_only", key="s")
    with pytest.raises(FeatureNotInPlan):
        await meter.consume_tokens(ada, 1, key="x")
    assert (await meter.usage(ada)).current.tokens_used == 0
