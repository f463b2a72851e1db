"""Plans (from ``[subscriptions]``), calendar-month periods and the proration rule.

Pure arithmetic: no database, no clock. Times are integer milliseconds since the Unix epoch, in
UTC; amounts are integer cents.

**Periods** are calendar months anchored on the day the subscription started: period ``n``
runs from ``anchor + n months`` to ``anchor + n + 1 months``, at the anchor's time of day. A
month without the anchor's day ends on its last day (anchored on 31 January: 28 or 29 February,
31 March, 30 April...), and the next month comes back to the anchor's day, so the periods never
drift.

**Proration**, on a plan change at ``at`` inside a period ``[start, end)``: the unused part of
the old plan is credited and the rest of the period on the new plan is charged, each
``price * (end - at) / (end - start)`` truncated to whole cents (rounded down: a credit is never
more, and a charge never more, than the exact share). What is due now is ``charge - credit`` when
that is positive (charged to the payment method); a negative difference is credited to the
user's balance.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

import msgspec

from .._config import PlanConfig, SubscriptionsConfig
from .._errors import Invalid, NotFound

FREE = "free"


class Plan(msgspec.Struct, frozen=True):
    id: str
    name: str
    price_cents: int
    """The fee per period."""
    tokens: int
    """Cloud-LLM tokens included per period (not a limit for a metered plan)."""
    token_price_cents: int
    """Per 1,000 tokens, for a metered (pay-per-token) plan; 0 otherwise."""
    features: tuple[str, ...]
    """Every feature it grants, the core features included."""
    currency: str

    @property
    def metered(self) -> bool:
        """Pay-per-token: tokens are counted and charged at the period's end, never refused."""
        return self.token_price_cents > 0

    def grants(self, feature: str) -> bool:
        return feature in self.features

    def usage_cents(self, tokens: int) -> int:
        """What ``tokens`` metered tokens cost: ``ceil(tokens * price / 1000)``."""
        return -(-tokens * self.token_price_cents // 1000)


class UnknownPlan(NotFound):
    code = "unknown_plan"
    default_message = "there is no such plan"


class Plans:
    """The configured plans, by id, in the configured order."""

    def __init__(self, config: SubscriptionsConfig) -> None:
        self.currency = config.currency
        core = tuple(config.core_features)
        self._plans = {plan.id: _plan(plan, core, config.currency) for plan in config.plans}

    def all(self) -> list[Plan]:
        return list(self._plans.values())

    def get(self, plan_id: str) -> Plan:
        """The plan ``plan_id``; :class:`UnknownPlan` (404) if none is configured."""
        plan = self._plans.get(plan_id)
        if plan is None:
            raise UnknownPlan(f"there is no plan {plan_id!r}")
        return plan

    def known(self, plan_id: str) -> Plan:
        """For stored rows: a plan removed from the configuration since counts as ``free``
        (its subscription keeps its price until it ends; see :meth:`get` for requests)."""
        return self._plans.get(plan_id) or self._plans[FREE]

    @property
    def free(self) -> Plan:
        return self._plans[FREE]


def _plan(config: PlanConfig, core: tuple[str, ...], currency: str) -> Plan:
    features = core + tuple(f for f in config.features if f not in core)
    return Plan(
        id=config.id,
        name=config.name,
        price_cents=config.price_cents,
        tokens=config.tokens,
        token_price_cents=config.token_price_cents,
        features=features,
        currency=currency,
    )


# --------------------------------------------------------------------- periods


def add_months(anchor_ms: int, months: int) -> int:
    """``anchor_ms`` plus ``months`` calendar months, on the anchor's day (or the month's last
    day when it is shorter), at the anchor's time of day, in UTC."""
    anchor = datetime.fromtimestamp(anchor_ms / 1000, UTC)
    total = anchor.month - 1 + months
    year, month = anchor.year + total // 12, total % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    moved = anchor.replace(year=year, month=month, day=day)
    millis = anchor_ms % 1000
    return int(moved.replace(microsecond=0).timestamp()) * 1000 + millis


def period_bounds(anchor_ms: int, index: int) -> tuple[int, int]:
    """Start and end of period ``index`` of a subscription anchored at ``anchor_ms``."""
    return add_months(anchor_ms, index), add_months(anchor_ms, index + 1)


# --------------------------------------------------------------------- proration


class Proration(msgspec.Struct, frozen=True):
    """The amounts of a plan change at ``at`` in the period ``[period_start, period_end)``."""

    at: int
    period_start: int
    period_end: int
    credit_cents: int
    """The unused part of the old plan's fee."""
    charge_cents: int
    """The new plan's fee for the rest of the period."""
    due_cents: int
    """``charge - credit`` when positive: charged now."""
    credited_cents: int
    """``credit - charge`` when positive: credited to the user's balance."""


def prorate(old_price: int, new_price: int, start: int, end: int, at: int) -> Proration:
    """The proration rule of the module docstring. ``at`` before ``start`` counts as ``start``,
    after ``end`` as ``end`` (nothing is left of the period)."""
    if end <= start:
        raise Invalid("a period must have a positive length")
    if old_price < 0 or new_price < 0:
        raise Invalid("prices are never negative")
    at_ = min(max(at, start), end)
    remaining, length = end - at_, end - start
    credit = old_price * remaining // length
    charge = new_price * remaining // length
    return Proration(
        at=at_,
        period_start=start,
        period_end=end,
        credit_cents=credit,
        charge_cents=charge,
        due_cents=max(charge - credit, 0),
        credited_cents=max(credit - charge, 0),
    )
