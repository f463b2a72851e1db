"""The renewal job on both backends: renewal, retries during the grace period, the downgrade to
free after it, cancellation at the period's end, metered usage, and exactly one charge per
renewal with two jobs running at once or a rerun after a crash."""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.clients import RELAXED_LIMITS, payer
from tests.conftest import fresh_pg_database
from tests.servers import running_server
from yggdrasil import Store, load_config
from yggdrasil._ids import now_ms
from yggdrasil.billing import (
    ChargeResult,
    Plans,
    Renewals,
    SandboxCharger,
    Subscriptions,
    UsageMeter,
    add_months,
    end_subscriptions_of_user,
)
from yggdrasil.billing._subscription_leases import claim_lease
from yggdrasil.store import Tx

CONFIG = load_config(
    overrides={"subscriptions": {"grace_s": 7 * 86400, "retry_after_s": [86400, 3 * 86400]}}
).subscriptions
DAY = 86_400_000


async def user(store: Store, name: str) -> str:
    created, _ = await store.create_user(f"{name}@example.org")
    return created.user_id


async def renewal_charges(charger: SandboxCharger, user_id: str) -> list[dict[str, object]]:
    return [
        c for c in await charger.charges(user_id) if str(c["charge_key"]).startswith("renewal:")
    ]


class CountingCharger(SandboxCharger):
    """The sandbox, counting the charges asked of it (repetitions included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    async def charge_subscription(
        self, user_id: str, amount_cents: int, *, key: str, description: str
    ) -> ChargeResult:
        self.calls.append(key)
        return await super().charge_subscription(
            user_id, amount_cents, key=key, description=description
        )


async def test_a_renewal_charges_the_next_period_once(store: Store) -> None:
    subs = Subscriptions.build(store.db, CONFIG)
    ada = await user(store, "ada")
    first = (await subs.subscribe(ada, "premium", key="s")).subscription
    assert first.period_end is not None
    assert await subs.renewals.run_due(first.period_end - 1) == Counter()
    assert await subs.renewals.run_due(first.period_end) == Counter(renewed=1)
    renewed = await subs.current(ada)
    assert renewed.status == "active"
    assert renewed.period_start == first.period_end
    assert renewed.period_end == add_months(first.period_start or 0, 2)
    assert await subs.renewals.run_due(first.period_end + DAY) == Counter()  # nothing twice
    invoices = (await subs.invoices.list(ada)).items
    assert [i.total_cents for i in invoices] == [3000, 3000]
    assert (invoices[0].period_start, invoices[0].period_end) == (
        renewed.period_start,
        renewed.period_end,
    )
    assert invoices[0].number != invoices[1].number
    charger = subs.charger
    assert isinstance(charger, SandboxCharger)
    assert [c["amount_cents"] for c in await renewal_charges(charger, ada)] == [3000]


async def test_a_declined_renewal_retries_in_grace_then_downgrades_to_free(store: Store) -> None:
    charger = SandboxCharger(store.db, default="declined", script=["ok"])
    subs = Subscriptions.build(store.db, CONFIG, charger)
    ada = await user(store, "ada")
    first = (await subs.subscribe(ada, "premium", key="s")).subscription
    due = first.period_end
    assert due is not None
    jobs = subs.renewals
    assert await jobs.run_due(due) == Counter(past_due=1)
    late = await subs.current(ada)
    assert late.status == "past_due"
    assert late.grace_until == due + 7 * DAY
    assert late.next_retry_at == due + DAY
    assert late.due_cents == 3000
    assert late.period_start == due  # usable during the grace period
    meter = UsageMeter(store.db, Plans(CONFIG))
    assert await meter.may_use(ada, "cloud_llm")
    assert await jobs.run_due(due + DAY - 1) == Counter()
    assert await jobs.run_due(due + DAY) == Counter(past_due=1)
    assert (await subs.current(ada)).next_retry_at == due + 3 * DAY
    assert await jobs.run_due(due + 3 * DAY) == Counter(past_due=1)
    # Retries are over; the grace period ends with the subscription.
    assert (await subs.current(ada)).next_retry_at == due + 7 * DAY
    assert await jobs.run_due(due + 6 * DAY) == Counter()
    assert await jobs.run_due(due + 7 * DAY) == Counter(ended=1)
    assert (await subs.current(ada)).status == "free"
    assert not await meter.may_use(ada, "cloud_llm")
    keys = [c["charge_key"] for c in await renewal_charges(charger, ada)]
    assert keys == [f"renewal:{first.subscription_id}:{due}:{n}" for n in (1, 2, 3)]
    assert [c["outcome"] for c in await renewal_charges(charger, ada)] == ["declined"] * 3
    assert len((await subs.invoices.list(ada)).items) == 1  # no invoice without a payment
    # The user may subscribe again from free.
    charger.script = ["ok"]
    again = await subs.subscribe(ada, "pro", key="again")
    assert again.subscription.status == "active"


async def test_a_retry_that_succeeds_makes_it_active(store: Store) -> None:
    charger = SandboxCharger(store.db, script=["ok", "declined", "ok"])
    subs = Subscriptions.build(store.db, CONFIG, charger)
    ada = await user(store, "ada")
    first = (await subs.subscribe(ada, "premium", key="s")).subscription
    due = first.period_end
    assert due is not None
    assert await subs.renewals.run_due(due) == Counter(past_due=1)
    assert await subs.renewals.run_due(due + DAY) == Counter(renewed=1)
    now = await subs.current(ada)
    assert now.status == "active"
    assert (now.period_start, now.renews_at) == (due, add_months(first.period_start or 0, 2))
    assert [i.total_cents for i in (await subs.invoices.list(ada)).items] == [3000, 3000]


async def test_a_canceled_subscription_ends_at_the_period_end(store: Store) -> None:
    subs = Subscriptions.build(store.db, CONFIG)
    ada = await user(store, "ada")
    first = (await subs.subscribe(ada, "pro", key="s")).subscription
    await subs.cancel(ada, key="c")
    assert first.period_end is not None
    assert await subs.renewals.run_due(first.period_end) == Counter(ended=1)
    assert (await subs.current(ada)).status == "free"
    charger = subs.charger
    assert isinstance(charger, SandboxCharger)
    assert await renewal_charges(charger, ada) == []
    assert [h.status for h in await subs.history(ada)] == ["free"]  # ended, kept


async def test_a_deleted_account_is_never_renewed(store: Store) -> None:
    subs = Subscriptions.build(store.db, CONFIG)
    ada = await user(store, "ada")
    first = (await subs.subscribe(ada, "premium", key="s")).subscription
    assert first.period_end is not None
    ended = await store.db.write(lambda tx: end_subscriptions_of_user(tx, ada, now_ms()))
    assert ended == 1
    assert await subs.renewals.run_due(first.period_end) == Counter()
    assert (await subs.current(ada)).status == "free"
    assert len((await subs.invoices.list(ada)).items) == 1  # invoices are kept


async def test_metered_usage_is_charged_at_the_period_end(store: Store) -> None:
    subs = Subscriptions.build(store.db, CONFIG)
    meter = UsageMeter(store.db, Plans(CONFIG))
    ada = await user(store, "ada")
    first = (await subs.subscribe(ada, "pay_per_token", key="s")).subscription
    await meter.consume_tokens(ada, 12_345, key="t1")
    assert first.period_end is not None
    assert await subs.renewals.run_due(first.period_end) == Counter(renewed=1)
    [invoice] = (await subs.invoices.list(ada)).items
    assert invoice.total_cents == 13  # ceil(12,345 x 1 / 1000)
    assert [(line.kind, line.quantity) for line in invoice.lines] == [("usage", 12_345)]
    assert (invoice.period_start, invoice.period_end) == (first.period_start, first.period_end)
    assert (await meter.usage(ada)).current.tokens_used == 0  # a new period
    # A period without usage costs nothing and issues no invoice.
    second = await subs.current(ada)
    assert second.period_end is not None
    assert await subs.renewals.run_due(second.period_end) == Counter(renewed=1)
    assert len((await subs.invoices.list(ada)).items) == 1


async def test_two_jobs_at_once_charge_each_renewal_once(store: Store) -> None:
    """Two instances' jobs over one database, started together, with charges slow enough to
    overlap: every due subscription is renewed by exactly one of them."""
    setup = Subscriptions.build(store.db, CONFIG)
    users = [await user(store, f"u{n}") for n in range(5)]
    ends = []
    for n, user_id in enumerate(users):
        ends.append(
            (await setup.subscribe(user_id, "premium", key=f"s{n}")).subscription.period_end
        )
    now = max(e or 0 for e in ends)
    chargers = [CountingCharger(store.db, delay_s=0.1) for _ in range(2)]
    jobs = [Renewals(store.db, Plans(CONFIG), charger, CONFIG) for charger in chargers]
    outcomes: list[Counter[str]] = []

    async def run(job: Renewals) -> None:
        outcomes.append(await job.run_due(now))

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(run, job)
    total = outcomes[0] + outcomes[1]
    assert total["renewed"] == 5
    # Each renewal was asked of one charger only, once.
    asked = chargers[0].calls + chargers[1].calls
    assert len(asked) == len(set(asked)) == 5
    assert set(total) <= {"renewed", "busy", "skipped"}
    for user_id in users:
        assert len(await renewal_charges(chargers[0], user_id)) == 1
        assert len((await setup.invoices.list(user_id)).items) == 2
    # Both again: nothing is due any more.
    assert await jobs[0].run_due(now) == Counter()


class CrashAfterCharging:
    """Charges through the sandbox, then dies before the outcome is written (a crash between
    the provider's answer and our commit)."""

    def __init__(self, inner: SandboxCharger) -> None:
        self.inner = inner

    async def charge_subscription(
        self, user_id: str, amount_cents: int, *, key: str, description: str
    ) -> ChargeResult:
        await self.inner.charge_subscription(
            user_id, amount_cents, key=key, description=description
        )
        raise RuntimeError("crashed")

    async def credit(
        self, user_id: str, amount_cents: int, *, key: str, description: str
    ) -> ChargeResult:
        raise NotImplementedError


async def test_a_rerun_after_a_crash_repeats_the_same_key_and_charges_once(store: Store) -> None:
    sandbox = SandboxCharger(store.db)
    subs = Subscriptions.build(store.db, CONFIG, sandbox)
    ada = await user(store, "ada")
    first = (await subs.subscribe(ada, "premium", key="s")).subscription
    assert first.period_end is not None
    crashing = Renewals(store.db, Plans(CONFIG), CrashAfterCharging(sandbox), CONFIG)
    with pytest.raises(RuntimeError):
        await crashing.run_due(first.period_end)
    assert (await subs.current(ada)).period_end == first.period_end  # not renewed yet
    # Another instance's lease is held now (the crashed one's lapses): it waits for it.
    holder = await claim_lease(store.db, ada, 300)
    assert holder is not None
    rerun = Renewals(store.db, Plans(CONFIG), sandbox, CONFIG)
    assert await rerun.run_due(first.period_end) == Counter(busy=1)
    await trio.sleep(0.35)
    assert await rerun.run_due(first.period_end) == Counter(renewed=1)
    charges = await renewal_charges(sandbox, ada)
    assert [(c["charge_key"], c["amount_cents"]) for c in charges] == [
        (f"renewal:{first.subscription_id}:{first.period_end}:1", 3000)
    ]
    assert len((await subs.invoices.list(ada)).items) == 2


async def test_an_unanswered_charge_is_repeated_with_its_key(store: Store) -> None:
    sandbox = SandboxCharger(store.db, script=["ok", "unavailable"])
    subs = Subscriptions.build(store.db, CONFIG, sandbox)
    ada = await user(store, "ada")
    first = (await subs.subscribe(ada, "premium", key="s")).subscription
    assert first.period_end is not None
    assert await subs.renewals.run_due(first.period_end) == Counter(unavailable=1)
    assert (await subs.current(ada)).status == "active"
    assert await subs.renewals.run_due(first.period_end) == Counter(renewed=1)
    assert len(await renewal_charges(sandbox, ada)) == 1


async def test_the_running_server_renews_on_its_own(
    backend: str, data_dir: Path, asyncio_loop: None
) -> None:
    """The job runs in the store child of a real server: a subscription whose period has ended
    is renewed within a few intervals, over HTTP as the user sees it."""
    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
        running = await stack.enter_async_context(
            running_server(
                data_dir,
                limits=RELAXED_LIMITS,
                database=database,
                subscriptions={"renewal_interval_s": 0.1},
            )
        )
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=running.api_url, timeout=30)
        )
        ada = await payer(http, data_dir / "outbox", "ada@example.org")
        answer = await ada.request(
            "POST",
            "/api/v1/subscriptions",
            headers={"Idempotency-Key": "s"},
            json={"plan": "premium"},
        )
        assert answer.status_code == 201, answer.text
        first = answer.json()["subscription"]
        # Pretend a month has passed: the period ended a second ago.
        db = running.services.domain.get().store.db
        shift = first["period_end"] - now_ms() + 1000

        async def age(tx: Tx) -> None:
            await tx.execute(
                "UPDATE subscriptions SET anchor_at = anchor_at - $1,"
                " period_start = period_start - $1, period_end = period_end - $1",
                shift,
            )

        await db.write(age)
        with trio.fail_after(10):
            while True:
                invoices = (await ada.get("/api/v1/invoices")).json()["items"]
                if len(invoices) == 2:
                    break
                await trio.sleep(0.05)
        now = (await ada.get("/api/v1/subscriptions")).json()["subscription"]
        assert now["status"] == "active"
        assert now["period_start"] < now_ms() < now["period_end"]  # the next month
        assert invoices[0]["period_start"] == now["period_start"]
        assert invoices[0]["total_cents"] == 3000
