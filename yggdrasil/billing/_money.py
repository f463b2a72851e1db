"""Money at the boundary: integer cents, checked once where they come in, and the two pieces of
arithmetic the ledger's callers share (ARCHITECTURE.md, "Money").

Every amount in the billing room is an ``int`` of cents. A float, a bool, a negative amount, zero
where something must move, or more than :data:`MAX_AMOUNT` is refused with :class:`InvalidAmount`
(422) before anything is written. Sums stay far inside PostgreSQL's ``BIGINT``: one amount is at
most 10^11 cents, and 2^63 is about 9 * 10^18.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from .._errors import Invalid

MAX_AMOUNT = 100_000_000_000
"""The largest single amount, in cents (one billion of the currency's units)."""

BASIS_POINTS = 10_000
"""A share of 10 % is 1000 basis points."""

Cents = Annotated[int, msgspec.Meta(ge=1, le=MAX_AMOUNT)]
"""A positive amount of cents, as a request body field (quart-schema refuses anything else)."""


class InvalidAmount(Invalid):
    code = "invalid_amount"
    default_message = "an amount is a positive whole number of cents"


def check_cents(value: Any, *, field: str = "amount", zero: bool = False) -> int:
    """``value`` if it is a whole number of cents in range, else :class:`InvalidAmount` naming
    ``field``. ``zero``: 0 is allowed too. Floats are refused even when whole (``10.0``): an
    amount that went through a float may have been rounded on the way."""
    if isinstance(value, bool) or not isinstance(value, int):
        kind = type(value).__name__
        raise InvalidAmount(f"{field} must be an integer number of cents, not {kind}")
    low = 0 if zero else 1
    if value < low:
        raise InvalidAmount(f"{field} must be at least {low} cent{'s' if low != 1 else ''}")
    if value > MAX_AMOUNT:
        raise InvalidAmount(f"{field} must be at most {MAX_AMOUNT} cents")
    return value


def fee(amount: int, share_bp: int) -> int:
    """The company's fee on ``amount``: ``share_bp`` basis points of it, rounded half up (an
    exact half cent goes to the company)."""
    check_cents(amount, zero=True)
    if not 0 <= share_bp <= BASIS_POINTS:
        raise ValueError(f"a share is 0..{BASIS_POINTS} basis points, not {share_bp}")
    return (amount * share_bp * 2 + BASIS_POINTS) // (2 * BASIS_POINTS)


def split(amount: int, share_bp: int) -> tuple[int, int]:
    """``(fee, earnings)`` of ``amount``: they add up to ``amount`` exactly."""
    taken = fee(amount, share_bp)
    return taken, amount - taken


def compute_cost(tokens: int, price_per_1000: int) -> int:
    """The cost of ``tokens`` at ``price_per_1000`` cents per 1000 tokens, rounded up to a whole
    cent: ``ceil(tokens * price_per_1000 / 1000)``, in integers only."""
    for name, value in (("tokens", tokens), ("price_per_1000", price_per_1000)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidAmount(f"{name} must be a non-negative integer")
    return -(-tokens * price_per_1000 // 1000)
