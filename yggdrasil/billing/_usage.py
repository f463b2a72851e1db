"""Feature access and token quotas: the one domain API the rest of the server calls.

- :meth:`UsageMeter.may_use`: may this user use feature X now (their plan's features, the core
  features included)?
- :meth:`UsageMeter.consume_tokens`: count N cloud-LLM tokens against the user's current period,
  atomically: past the plan's quota the whole call is refused (:class:`QuotaExceeded`) and
  nothing is counted. On a pay-per-token plan nothing is refused: the tokens are counted and
  charged at the period's end. A call names itself with a key: repeated, it counts once.

The quota check is one conditional ``UPDATE`` (``... WHERE tokens_used + n <= quota``): on
SQLite writes run one at a time, on PostgreSQL a concurrent update waits for the row and
re-checks the condition on the committed value, so parallel consumers never overdraw.

Tokens count towards the subscription's current period until its renewal has run (the renewal
starts the next one).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .._errors import Forbidden, Invalid
from .._ids import now_ms
from ..store import Database, Row, Tx
from ._plans import Plan, Plans
from ._subscription_leases import current_row
from ._subscription_requests import IdempotencyKeyReused, check_key

CLOUD_LLM = "cloud_llm"
MAX_TOKENS_PER_CALL = 10**9
HISTORY_PERIODS = 12


class FeatureNotInPlan(Forbidden):
    code = "feature_not_in_plan"
    default_message = "your plan does not include this feature"


class QuotaExceeded(Forbidden):
    code = "quota_exceeded"
    default_message = "this would exceed your plan's token quota for this period"


class Usage(msgspec.Struct, frozen=True):
    """The current period's cloud-LLM tokens of one user."""

    plan: str
    metered: bool
    """Pay-per-token: nothing is refused; ``metered_tokens`` are charged at the period's end."""
    period_start: int | None
    period_end: int | None
    tokens_included: int
    tokens_used: int
    tokens_remaining: int | None
    """``None`` on a pay-per-token plan (no limit)."""
    metered_tokens: int
    metered_cents: int
    """What the metered tokens cost so far (rounded up to a whole cent)."""
    token_price_cents: int
    """Per 1,000 tokens on a pay-per-token plan."""


class PeriodUsage(msgspec.Struct, frozen=True):
    subscription_id: str
    period_start: int
    period_end: int
    tokens_used: int
    metered_tokens: int


class UsageReport(msgspec.Struct, frozen=True):
    current: Usage
    periods: list[PeriodUsage]
    """The last periods with usage, newest first (at most 12)."""


Tokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS_PER_CALL)]


def _usage(plan: Plan, sub: Row | None, counted: Row | None) -> Usage:
    used = counted["tokens_used"] if counted else 0
    metered = counted["metered_tokens"] if counted else 0
    return Usage(
        plan=plan.id,
        metered=plan.metered,
        period_start=sub["period_start"] if sub else None,
        period_end=sub["period_end"] if sub else None,
        tokens_included=plan.tokens,
        tokens_used=used,
        tokens_remaining=None if plan.metered else max(plan.tokens - used, 0),
        metered_tokens=metered,
        metered_cents=plan.usage_cents(metered),
        token_price_cents=plan.token_price_cents,
    )


async def _counted(tx: Tx, sub: Row) -> Row | None:
    return await tx.fetchrow(
        "SELECT tokens_used, metered_tokens FROM subscription_usage"
        " WHERE subscription_id = $1 AND period_index = $2",
        sub["subscription_id"],
        sub["period_index"],
    )


async def metered_tokens(tx: Tx, subscription_id: str, period_index: int) -> int:
    """The metered tokens of one period (the renewal charges them)."""
    value = await tx.fetchval(
        "SELECT metered_tokens FROM subscription_usage"
        " WHERE subscription_id = $1 AND period_index = $2",
        subscription_id,
        period_index,
    )
    return int(value or 0)


class UsageMeter:
    def __init__(self, db: Database, plans: Plans, *, key_ttl_ms: int = 48 * 3600 * 1000) -> None:
        self._db = db
        self._plans = plans
        self._key_ttl_ms = key_ttl_ms

    def _plan(self, sub: Row | None) -> Plan:
        return self._plans.free if sub is None else self._plans.known(sub["plan"])

    async def may_use(self, user_id: str, feature: str) -> bool:
        """Whether ``user_id``'s plan grants ``feature`` (a past-due subscription still does,
        during its grace period; an unknown feature is never granted)."""
        sub = await self._db.read(lambda tx: current_row(tx, user_id))
        return self._plan(sub).grants(feature)

    async def usage(self, user_id: str) -> UsageReport:
        async def read(tx: Tx) -> UsageReport:
            sub = await current_row(tx, user_id)
            counted = None if sub is None else await _counted(tx, sub)
            rows = await tx.fetch(
                "SELECT subscription_id, period_start, period_end, tokens_used, metered_tokens"
                " FROM subscription_usage WHERE user_id = $1"
                " ORDER BY period_start DESC LIMIT $2",
                user_id,
                HISTORY_PERIODS,
            )
            periods = [msgspec.convert(row, PeriodUsage) for row in rows]
            return UsageReport(_usage(self._plan(sub), sub, counted), periods)

        return await self._db.read(read)

    async def consume_tokens(self, user_id: str, n: int, *, key: str) -> Usage:
        """Count ``n`` (1 to 10^9) cloud-LLM tokens for ``user_id``, all or nothing; the usage
        after it. :class:`FeatureNotInPlan` without ``cloud_llm``, :class:`QuotaExceeded` past
        the quota (nothing counted). ``key`` names the call: the same key again counts nothing
        more and answers the usage as it is now; with another ``n`` it is
        ``IdempotencyKeyReused``."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TOKENS_PER_CALL:
            raise Invalid(f"tokens must be a whole number from 1 to {MAX_TOKENS_PER_CALL}")
        check_key(key)

        async def consume(tx: Tx) -> Usage:
            inserted = await tx.execute(
                "INSERT INTO token_consumptions (user_id, idempotency_key, tokens, created_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, idempotency_key) DO NOTHING",
                user_id,
                key,
                n,
                now_ms(),
            )
            sub = await current_row(tx, user_id)
            plan = self._plan(sub)
            if inserted != 1:
                earlier = await tx.fetchval(
                    "SELECT tokens FROM token_consumptions"
                    " WHERE user_id = $1 AND idempotency_key = $2",
                    user_id,
                    key,
                )
                if earlier != n:
                    raise IdempotencyKeyReused()
                return _usage(plan, sub, None if sub is None else await _counted(tx, sub))
            if not plan.grants(CLOUD_LLM):
                raise FeatureNotInPlan()
            if sub is None:
                raise QuotaExceeded()
            await tx.execute(
                "INSERT INTO subscription_usage (subscription_id, period_index, user_id,"
                " period_start, period_end) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (subscription_id, period_index) DO NOTHING",
                sub["subscription_id"],
                sub["period_index"],
                user_id,
                sub["period_start"],
                sub["period_end"],
            )
            if plan.metered:
                counted = await tx.fetchrow(
                    "UPDATE subscription_usage SET tokens_used = tokens_used + $3,"
                    " metered_tokens = metered_tokens + $3"
                    " WHERE subscription_id = $1 AND period_index = $2"
                    " RETURNING tokens_used, metered_tokens",
                    sub["subscription_id"],
                    sub["period_index"],
                    n,
                )
            else:
                counted = await tx.fetchrow(
                    "UPDATE subscription_usage SET tokens_used = tokens_used + $3"
                    " WHERE subscription_id = $1 AND period_index = $2"
                    " AND tokens_used + $3 <= $4 RETURNING tokens_used, metered_tokens",
                    sub["subscription_id"],
                    sub["period_index"],
                    n,
                    plan.tokens,
                )
                if counted is None:
                    raise QuotaExceeded()
            return _usage(plan, sub, counted)

        return await self._db.write(consume)

    async def purge(self, now: int) -> int:
        """Forget the keys of calls older than the key TTL; how many."""
        cutoff = now - self._key_ttl_ms
        return await self._db.write(
            lambda tx: tx.execute("DELETE FROM token_consumptions WHERE created_at < $1", cutoff)
        )
