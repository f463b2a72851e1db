"""The ledger on both backends: cents, balanced immutable postings, holds, refunds, payouts,
netting, idempotency, concurrency, and a Hypothesis state machine over all of them."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from yggdrasil import Database, NotFound, Tx
from yggdrasil._config import LedgerConfig
from yggdrasil._ids import now_ms
from yggdrasil.billing import (
    MAX_AMOUNT,
    Capture,
    ExceedsHold,
    ExceedsRefundable,
    HoldClosed,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidAmount,
    Ledger,
    LedgerCharger,
    NettingOff,
    Posting,
    SandboxCollector,
    UnbalancedPostings,
    check_cents,
    company_account,
    compute_cost,
    external_account,
    fee,
    post,
    purge_idempotency_keys,
    split,
    user_account,
)


def uid() -> str:
    return f"u_{secrets.token_hex(6)}"


@pytest.fixture
def ledger(database: Database) -> Ledger:
    return Ledger(database, LedgerConfig())


async def funded(ledger: Ledger, amount: int) -> str:
    user = uid()
    await ledger.deposit(user, amount, key=f"fund-{user}", provider="sandbox", provider_ref="r")
    return user


# ----------------------------------------------------------------------------- money


def test_fee_is_the_configured_share_rounded_half_up() -> None:
    assert fee(1000, 1000) == 100
    assert fee(5, 1000) == 1  # 0.5 cents: half up
    assert fee(4, 1000) == 0  # 0.4 cents
    assert fee(15, 1000) == 2  # 1.5 cents
    assert fee(1, 1500) == 0  # 0.15 cents
    assert fee(10, 1500) == 2  # 1.5 cents
    for amount in range(0, 500):
        taken, earned = split(amount, 1200)
        assert taken + earned == amount
        assert taken == int(amount * 12 / 100 + 0.5 + 1e-9)


def test_compute_cost_rounds_up_to_whole_cents() -> None:
    assert compute_cost(1000, 7) == 7
    assert compute_cost(1001, 7) == 8
    assert compute_cost(1, 1) == 1
    assert compute_cost(0, 50) == 0
    assert compute_cost(400_000, 3) == 1200
    with pytest.raises(InvalidAmount):
        compute_cost(-1, 3)


@pytest.mark.parametrize("bad", [10.0, 10.5, "10", True, None, 0, -1, MAX_AMOUNT + 1])
def test_amounts_are_whole_positive_cents(bad: Any) -> None:
    with pytest.raises(InvalidAmount):
        check_cents(bad)


# ----------------------------------------------------------------------------- postings


async def test_post_refuses_what_is_not_a_balanced_transaction(database: Database) -> None:
    a, b = user_account("u_a", "balance"), external_account("sandbox")
    refused = [
        [],
        [Posting(a, 10)],
        [Posting(a, 10), Posting(b, -9)],
        [Posting(a, 0), Posting(b, 0)],
        [Posting(a, 10), Posting("bank:x", -10)],
        [Posting(a, 10.0), Posting(b, -10)],  # type: ignore[arg-type]
    ]
    for postings in refused:

        async def work(tx: Tx, postings: list[Posting] = postings) -> str:
            return await post(tx, kind="deposit", user_id="u_a", postings=postings, memo={})

        with pytest.raises(UnbalancedPostings):
            await database.write(work)

    async def wrong_sign(tx: Tx) -> str:  # a deposit takes money in from outside
        return await post(
            tx, kind="deposit", user_id="u_a", postings=[Posting(a, -5), Posting(b, 5)], memo={}
        )

    with pytest.raises(UnbalancedPostings):
        await database.write(wrong_sign)
    assert (await Ledger(database, LedgerConfig()).verify()).total == 0

    async def count(tx: Tx) -> int:
        return int(await tx.fetchval("SELECT COUNT(*) FROM ledger_entries"))

    assert await database.read(count) == 0


async def test_a_refused_posting_rolls_back_the_callers_whole_unit(ledger: Ledger) -> None:
    user = await funded(ledger, 100)

    async def work(tx: Tx) -> None:
        await post(
            tx,
            kind="charge",
            user_id=user,
            postings=[
                Posting(user_account(user, "balance"), -60),
                Posting(company_account("revenue:general"), 60),
            ],
            memo={},
        )
        await post(  # the second one overdraws: neither is written
            tx,
            kind="charge",
            user_id=user,
            postings=[
                Posting(user_account(user, "balance"), -60),
                Posting(company_account("revenue:general"), 60),
            ],
            memo={},
        )

    with pytest.raises(InsufficientFunds):
        await ledger.db.write(work)
    assert (await ledger.balances(user)).balance == 100
    assert len((await ledger.entries(user)).items) == 1
    assert (await ledger.verify()).ok


async def test_entries_cannot_be_changed_or_deleted(ledger: Ledger) -> None:
    user = await funded(ledger, 100)
    for sql in (
        "UPDATE ledger_entries SET amount = amount * 2 WHERE user_id = $1",
        "DELETE FROM ledger_entries WHERE user_id = $1",
    ):

        async def tamper(tx: Tx, sql: str = sql) -> int:
            return await tx.execute(sql, user)

        with pytest.raises(Exception, match="immutable"):
            await ledger.db.write(tamper)
    assert (await ledger.balances(user)).balance == 100
    assert (await ledger.verify()).ok


# ----------------------------------------------------------------------------- operations


async def test_hold_capture_release(ledger: Ledger) -> None:
    requester, provider = await funded(ledger, 1000), uid()
    with pytest.raises(InsufficientFunds):
        await ledger.hold(requester, 1001, key="too-much")
    hold = await ledger.hold(requester, 600, key="h", purpose="compute")
    assert (await ledger.balances(requester)).balance == 400
    assert (await ledger.balances(requester)).held == 600
    taken, earned = split(250, 1000)
    legs = [Posting(user_account(provider, "earnings"), earned), Posting("company:fees", taken)]
    first = await ledger.capture(hold.hold_id, 250, key="c1", to=legs)
    assert (first.captured, first.remaining, first.status) == (250, 350, "open")
    with pytest.raises(ExceedsHold):
        await ledger.capture(hold.hold_id, 351, key="c2")
    second = await ledger.capture(hold.hold_id, 100, key="c3")  # to compute revenue
    assert second.remaining == 250
    released = await ledger.release(hold.hold_id, key="r")
    assert (released.status, released.released, released.remaining) == ("released", 250, 0)
    with pytest.raises(HoldClosed):
        await ledger.capture(hold.hold_id, 1, key="c4")
    with pytest.raises(HoldClosed):
        await ledger.release(hold.hold_id, key="r2")
    mine = await ledger.balances(requester)
    assert (mine.balance, mine.held) == (650, 0)
    assert (await ledger.balances(provider)).earnings == 225
    assert (await ledger.verify()).ok


async def test_refunds_never_exceed_what_was_taken(ledger: Ledger) -> None:
    requester, provider = await funded(ledger, 1000), uid()
    hold = await ledger.hold(requester, 1000, key="h")
    legs = [Posting(user_account(provider, "earnings"), 900), Posting("company:fees", 100)]
    capture = await ledger.capture(hold.hold_id, 1000, key="c", to=legs)
    assert capture.status == "captured"
    first = await ledger.refund(capture.transaction_id, 333, key="rf1")
    assert first.refunded == 333
    with pytest.raises(ExceedsRefundable):
        await ledger.refund(capture.transaction_id, 668, key="rf2")
    last = await ledger.refund(capture.transaction_id, 667, key="rf3")
    assert last.refunded == 1000
    assert (await ledger.balances(requester)).balance == 1000
    assert (await ledger.balances(provider)).earnings == 0
    with pytest.raises(NotFound):
        await ledger.refund("tx_nothing", 1, key="rf4")
    assert (await ledger.verify()).ok


async def test_a_refund_after_a_payout_becomes_a_receivable_netted_from_the_next(
    ledger: Ledger,
) -> None:
    requester, provider = await funded(ledger, 2000), uid()
    hold = await ledger.hold(requester, 1000, key="h")
    legs = [Posting(user_account(provider, "earnings"), 900), Posting("company:fees", 100)]
    capture = await ledger.capture(hold.hold_id, 1000, key="c", to=legs)
    await ledger.payout(provider, 900, key="p1")
    await ledger.refund(capture.transaction_id, 500, key="rf")
    owes = await ledger.balances(provider)
    assert (owes.earnings, owes.receivable) == (0, 450)
    # New earnings of 600: only 150 can be paid out, and paying it settles the debt.
    hold2 = await ledger.hold(requester, 600, key="h2")
    await ledger.capture(
        hold2.hold_id, 600, key="c2", to=[Posting(user_account(provider, "earnings"), 600)]
    )
    with pytest.raises(InsufficientFunds):
        await ledger.payout(provider, 151, key="p2")
    paid = await ledger.payout(provider, 150, key="p3")
    assert paid.settled_receivable == 450
    after = await ledger.balances(provider)
    assert (after.earnings, after.receivable) == (0, 0)
    assert (await ledger.verify()).ok


async def test_netting_settles_earnings_against_debt_for_users_who_opt_in(ledger: Ledger) -> None:
    requester, provider = await funded(ledger, 1000), uid()
    hold = await ledger.hold(requester, 1000, key="h")
    legs = [Posting(user_account(provider, "earnings"), 1000)]
    capture = await ledger.capture(hold.hold_id, 1000, key="c", to=legs)
    await ledger.payout(provider, 1000, key="p")
    await ledger.refund(capture.transaction_id, 400, key="rf")
    hold2 = await ledger.hold(requester, 250, key="h2")
    await ledger.capture(
        hold2.hold_id, 250, key="c2", to=[Posting(user_account(provider, "earnings"), 250)]
    )
    with pytest.raises(NettingOff):
        await ledger.net(provider, key="n0")
    await ledger.set_netting(provider, True)
    netting = await ledger.net(provider, key="n1")
    assert (netting.settled, netting.to_charge, netting.to_pay_out) == (250, 150, 0)
    assert netting == await ledger.net(provider, key="n1")  # a replay
    after = await ledger.balances(provider)
    assert (after.earnings, after.receivable) == (0, 150)
    assert (await ledger.verify()).ok


async def test_expired_holds_are_released_by_the_reconciliation(ledger: Ledger) -> None:
    user = await funded(ledger, 500)
    short = await ledger.hold(user, 200, key="short", expires_in_s=1)
    long = await ledger.hold(user, 100, key="long")
    await ledger.capture(short.hold_id, 50, key="c")
    assert await ledger.reconcile_holds() == 0
    later = short.expires_at + 1000
    assert (await ledger.verify()).ok
    assert await ledger.reconcile_holds(now=later) == 1
    assert await ledger.reconcile_holds(now=later) == 0
    expired = await ledger.get_hold(user, short.hold_id)
    assert (expired.status, expired.captured, expired.released) == ("expired", 50, 150)
    assert (await ledger.get_hold(user, long.hold_id)).status == "open"
    balances = await ledger.balances(user)
    assert (balances.balance, balances.held) == (350, 100)
    await trio.sleep(1.1)
    with pytest.raises(HoldClosed):  # past its expiry nothing more is captured
        await ledger.capture(short.hold_id, 1, key="late")


async def test_another_users_hold_is_not_found(ledger: Ledger) -> None:
    owner, stranger = await funded(ledger, 500), await funded(ledger, 500)
    hold = await ledger.hold(owner, 100, key="h")
    for attempt in (
        ledger.get_hold(stranger, hold.hold_id),
        ledger.capture(hold.hold_id, 10, key="x", user_id=stranger),
        ledger.release(hold.hold_id, key="x", user_id=stranger),
    ):
        with pytest.raises(NotFound):
            await attempt
    # The stranger's key stored nothing: the owner's own request with it runs.
    done = await ledger.capture(hold.hold_id, 10, key="x", user_id=owner)
    assert done.captured == 10
    assert [e.account for e in (await ledger.entries(stranger)).items] == ["balance"]


async def test_entries_are_paged_newest_first(ledger: Ledger) -> None:
    user = uid()
    for n in range(7):
        await ledger.deposit(user, n + 1, key=f"d{n}", provider="sandbox", provider_ref=f"r{n}")
    seen: list[int] = []
    cursor = None
    while True:
        page = await ledger.entries(user, cursor=cursor, limit=3)
        seen += [entry.amount for entry in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [7, 6, 5, 4, 3, 2, 1]


# ----------------------------------------------------------------------------- idempotency


async def test_a_key_replays_its_first_answer_and_refuses_another_request(ledger: Ledger) -> None:
    user = uid()
    first = await ledger.deposit(user, 100, key="k", provider="sandbox", provider_ref="a")
    again = await ledger.deposit(user, 100, key="k", provider="sandbox", provider_ref="a")
    assert again == first
    with pytest.raises(IdempotencyKeyReused):
        await ledger.deposit(user, 101, key="k", provider="sandbox", provider_ref="a")
    assert (await ledger.balances(user)).balance == 100
    # Another user's identical key is another request.
    other = await ledger.deposit(uid(), 100, key="k", provider="sandbox", provider_ref="a")
    assert other.transaction_id != first.transaction_id
    # A failed request stored nothing: the same key runs again once it can succeed.
    with pytest.raises(InsufficientFunds):
        await ledger.hold(user, 150, key="h")
    await ledger.deposit(user, 100, key="k2", provider="sandbox", provider_ref="b")
    assert (await ledger.hold(user, 150, key="h")).amount == 150


async def test_expired_keys_are_purged(ledger: Ledger) -> None:
    user = uid()
    await ledger.deposit(user, 100, key="k", provider="sandbox", provider_ref="a")
    assert await purge_idempotency_keys(ledger.db) == 0
    lifetime_ms = ledger.config.idempotency_ttl_s * 1000
    assert await purge_idempotency_keys(ledger.db, now=now_ms() + lifetime_ms - 60_000) == 0
    assert await purge_idempotency_keys(ledger.db, now=now_ms() + lifetime_ms + 1000) == 1
    # After purging, the key is new again (a day later a client may reuse it).
    await ledger.deposit(user, 100, key="k", provider="sandbox", provider_ref="a")
    assert (await ledger.balances(user)).balance == 200


async def test_a_hundred_parallel_captures_of_one_hold_capture_once(ledger: Ledger) -> None:
    user = await funded(ledger, 500)
    hold = await ledger.hold(user, 500, key="h")
    outcomes: list[str] = []

    async def capture(n: int) -> None:
        try:
            await ledger.capture(hold.hold_id, 500, key=f"c{n}")
            outcomes.append("captured")
        except (ExceedsHold, HoldClosed) as refused:
            outcomes.append(refused.code)

    async with trio.open_nursery() as nursery:
        for n in range(100):
            nursery.start_soon(capture, n)
    assert outcomes.count("captured") == 1
    assert len(outcomes) == 100
    assert (await ledger.get_hold(user, hold.hold_id)).captured == 500
    assert (await ledger.balances(user)).held == 0
    assert (await ledger.verify()).ok


async def test_a_hundred_parallel_duplicates_execute_once(ledger: Ledger) -> None:
    user = await funded(ledger, 500)
    hold = await ledger.hold(user, 500, key="h")
    answers: list[Capture] = []

    async def capture() -> None:
        answers.append(await ledger.capture(hold.hold_id, 120, key="same"))

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(capture)
    assert len(answers) == 100
    assert len({a.transaction_id for a in answers}) == 1
    assert all(a == answers[0] for a in answers)
    assert (await ledger.get_hold(user, hold.hold_id)).captured == 120
    assert (await ledger.verify()).ok


# ----------------------------------------------------------------------------- the state machine

AMOUNTS = st.integers(min_value=1, max_value=3000)


async def test_the_ledger_state_machine(ledger: Ledger) -> None:
    """Random sequences of deposits, holds, captures, releases, refunds, payouts and netting:
    after every step the accounts add up to zero, no account is on a forbidden side of zero,
    every balance equals the sum of its entries, the users' balances are what the model says,
    and a replayed key returns the first answer."""
    token = trio.lowlevel.current_trio_token()

    def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(run, trio_token=token)

    class LedgerMachine(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.users = [uid() for _ in range(3)]
            self.model = {u: {"balance": 0, "held": 0} for u in self.users}
            self.holds: list[dict[str, Any]] = []
            self.captures: list[dict[str, Any]] = []
            self.done: list[tuple[Any, tuple[Any, ...], dict[str, Any], Any]] = []
            self.keys = 0
            call(ledger.set_netting, self.users[2], True)

        def key(self) -> str:
            self.keys += 1
            return f"k{self.keys}"

        def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["key"] = self.key()
            answer = call(fn, *args, **kwargs)
            self.done.append((fn, args, kwargs, answer))
            return answer

        @rule(user=st.integers(0, 2), amount=AMOUNTS)
        def deposit(self, user: int, amount: int) -> None:
            u = self.users[user]
            self.run(ledger.deposit, u, amount, provider="sandbox", provider_ref="ref")
            self.model[u]["balance"] += amount

        @rule(user=st.integers(0, 2), amount=AMOUNTS)
        def hold(self, user: int, amount: int) -> None:
            u = self.users[user]
            if amount > self.model[u]["balance"]:
                with pytest.raises(InsufficientFunds):
                    self.run(ledger.hold, u, amount)
                return
            hold = self.run(ledger.hold, u, amount)
            self.model[u]["balance"] -= amount
            self.model[u]["held"] += amount
            self.holds.append({"id": hold.hold_id, "user": u, "left": amount, "open": True})

        @precondition(lambda self: self.holds)
        @rule(data=st.data(), amount=AMOUNTS, provider=st.integers(0, 2))
        def capture(self, data: st.DataObject, amount: int, provider: int) -> None:
            hold = data.draw(st.sampled_from(self.holds))
            if not hold["open"]:
                with pytest.raises(HoldClosed):
                    self.run(ledger.capture, hold["id"], amount)
                return
            if amount > hold["left"]:
                with pytest.raises(ExceedsHold):
                    self.run(ledger.capture, hold["id"], amount)
                return
            taken, earned = split(amount, 1000)
            legs = [Posting(company_account("fees"), taken)] if taken else []
            if earned:
                legs.append(Posting(user_account(self.users[provider], "earnings"), earned))
            done = self.run(ledger.capture, hold["id"], amount, to=legs)
            hold["left"] -= amount
            hold["open"] = hold["left"] > 0
            self.model[hold["user"]]["held"] -= amount
            self.captures.append({"txn": done.transaction_id, "user": hold["user"], "left": amount})

        @precondition(lambda self: self.holds)
        @rule(data=st.data())
        def release(self, data: st.DataObject) -> None:
            hold = data.draw(st.sampled_from(self.holds))
            if not hold["open"]:
                with pytest.raises(HoldClosed):
                    self.run(ledger.release, hold["id"])
                return
            self.run(ledger.release, hold["id"])
            self.model[hold["user"]]["held"] -= hold["left"]
            self.model[hold["user"]]["balance"] += hold["left"]
            hold["open"], hold["left"] = False, 0

        @precondition(lambda self: self.captures)
        @rule(data=st.data(), amount=AMOUNTS)
        def refund(self, data: st.DataObject, amount: int) -> None:
            captured = data.draw(st.sampled_from(self.captures))
            if amount > captured["left"]:
                with pytest.raises(ExceedsRefundable):
                    self.run(ledger.refund, captured["txn"], amount)
                return
            self.run(ledger.refund, captured["txn"], amount)
            captured["left"] -= amount
            self.model[captured["user"]]["balance"] += amount

        @rule(user=st.integers(0, 2), amount=AMOUNTS)
        def payout(self, user: int, amount: int) -> None:
            u = self.users[user]
            have = call(ledger.balances, u)
            if amount > have.earnings + have.payable - have.receivable:
                with pytest.raises(InsufficientFunds):
                    self.run(ledger.payout, u, amount)
                return
            self.run(ledger.payout, u, amount)
            after = call(ledger.balances, u)
            assert after.receivable == 0
            assert after.earnings + after.payable == have.earnings + have.payable - (
                amount + have.receivable
            )

        @rule(user=st.integers(0, 2))
        def net(self, user: int) -> None:
            u = self.users[user]
            if user != 2:
                with pytest.raises(NettingOff):
                    self.run(ledger.net, u)
                return
            have = call(ledger.balances, u)
            netting = self.run(ledger.net, u)
            assert netting.settled == min(have.receivable, have.earnings + have.payable)

        @precondition(lambda self: self.done)
        @rule(data=st.data())
        def replay(self, data: st.DataObject) -> None:
            fn, args, kwargs, answer = data.draw(st.sampled_from(self.done))
            assert call(fn, *args, **kwargs) == answer

        @invariant()
        def books_balance(self) -> None:
            if not hasattr(self, "users"):
                return
            check = call(ledger.verify)
            assert check.ok, check
            for u in self.users:
                have = call(ledger.balances, u)
                assert (have.balance, have.held) == (
                    self.model[u]["balance"],
                    self.model[u]["held"],
                )
                assert min(have.balance, have.held, have.earnings, have.receivable) >= 0

    await trio.to_thread.run_sync(
        lambda: run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=25,
                stateful_step_count=20,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            ),
        )
    )


async def test_a_credit_moves_company_credits_onto_the_balance_once_per_key(
    ledger: Ledger,
) -> None:
    user = uid()
    first = await ledger.credit(user, 250, key="proration-1", memo={"why": "downgrade"})
    again = await ledger.credit(user, 250, key="proration-1", memo={"why": "downgrade"})
    assert again == first
    assert (await ledger.balances(user)).balance == 250
    with pytest.raises(IdempotencyKeyReused):
        await ledger.credit(user, 300, key="proration-1", memo={"why": "downgrade"})
    # The subscriptions' charger credits through it: the same key books once.
    charger = LedgerCharger(ledger, SandboxCollector())
    for _ in range(2):
        assert (await charger.credit(user, 100, key="p2", description="pro")).ok
    assert (await ledger.balances(user)).balance == 350
    check = await ledger.verify()
    assert check.ok, check
