"""Request and response bodies of the ledger's routes (``api/_billing.py``).

Amounts are integer cents. quart-schema converts bodies leniently (``10.0`` and ``"10"`` would
pass as 10), so the routes check the raw JSON amount again with ``check_cents``: a float or a
string is refused with 422 ``invalid_amount``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from yggdrasil.billing import Balances, Capture, Cents, Deposit, Entry, Hold

Purpose = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class IdempotencyHeader(msgspec.Struct, frozen=True):
    """Every money-moving request names itself: the same key and body replay the first answer,
    the same key with another body is 422 ``idempotency_key_reused``, a missing key is 400
    ``idempotency_key_required``. Keys are kept for at least 24 hours."""

    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None


class HoldIn(_In, frozen=True):
    amount: Cents
    purpose: Purpose = "general"
    """What the money is for: a capture goes to the company's revenue stream of that name."""


class CaptureIn(_In, frozen=True):
    amount: Cents


class ProcessIn(_In, frozen=True):
    amount: Cents
    currency: Currency | None = None
    """The server's currency (``ledger.currency``); another one is refused."""


class EntryQuery(_In, frozen=True):
    cursor: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 50


class EntryPage(msgspec.Struct):
    items: list[Entry]
    next_cursor: str | None


BalancesOut = Balances
HoldOut = Hold
CaptureOut = Capture
PaymentOut = Deposit
