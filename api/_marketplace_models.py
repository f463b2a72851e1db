"""Request and response bodies of the marketplace's routes (``api/_marketplace.py``) and of the
OpenAI-compatible front door. Amounts are integer cents (checked again on the raw JSON: a float
or a string is 422 ``invalid_amount``)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from yggdrasil.billing import Cents
from yggdrasil.marketplace import (
    ComputeRequest,
    Dispute,
    Hardware,
    Provider,
    ProviderAnalytics,
    QualitySettings,
    RequesterAnalytics,
    Transaction,
    TransactionPage,
    Window,
)

Model = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Price = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Tokens = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class ProviderIn(_In, frozen=True):
    """A device of the caller's that sells its compute: its models, its price per 1,000 tokens
    (integer cents), its capacity, when it is available (UTC windows; none: always), and its
    quality settings."""

    device_id: Id
    models: Annotated[list[Model], msgspec.Meta(min_length=1, max_length=50)]
    price_per_1k: Price
    network_id: Id | None = None
    """The device's network (default: the caller's home network)."""
    max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    tokens_per_minute: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] = 6000
    hardware: Hardware = Hardware()
    schedule: Annotated[list[Window], msgspec.Meta(max_length=50)] = []
    quality: QualitySettings = QualitySettings()


class ProviderUpdate(_In, frozen=True):
    models: Annotated[list[Model], msgspec.Meta(min_length=1, max_length=50)]
    price_per_1k: Price
    max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    tokens_per_minute: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] = 6000
    hardware: Hardware = Hardware()
    schedule: Annotated[list[Window], msgspec.Meta(max_length=50)] = []
    quality: QualitySettings = QualitySettings()
    status: Literal["active", "paused"] = "active"


class ProviderList(msgspec.Struct, frozen=True):
    items: list[Provider]


class Message(_In, frozen=True):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, msgspec.Meta(max_length=200_000)]


class RequestIn(_In, frozen=True):
    model: Model
    messages: Annotated[list[Message], msgspec.Meta(min_length=1, max_length=256)]
    max_cost: Cents
    """The most this request may cost, in cents: held first, and the stream stops before it."""
    max_tokens: Tokens = 1024
    stream: bool = False


class StreamQuery(msgspec.Struct, frozen=True):
    stream: bool = False


class PageQuery(msgspec.Struct, frozen=True):
    cursor: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 50


class DisputeIn(_In, frozen=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class ResolveIn(_In, frozen=True):
    refund: Annotated[int, msgspec.Meta(ge=0, le=100_000_000_000)]
    """Cents given back to the requester: 0 (none) up to what is left of the cost (full)."""


class FeedbackIn(_In, frozen=True):
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)]
    """1 (bad) to 5 (good)."""


class DisputeList(msgspec.Struct, frozen=True):
    items: list[Dispute]


# ----------------------------------------------------------------------------- OpenAI's shapes


class ChatIn(msgspec.Struct, frozen=True):
    """OpenAI's chat completion request (the fields the marketplace uses; others are ignored).
    ``max_cost_cents`` is ours (default: ``marketplace`` default); OpenAI clients send it in
    ``extra_body``."""

    model: Model
    messages: Annotated[list[Message], msgspec.Meta(min_length=1, max_length=256)]
    stream: bool = False
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    max_cost_cents: Cents = 100


class ChatChoiceMessage(msgspec.Struct, frozen=True):
    role: str
    content: str


class ChatChoice(msgspec.Struct, frozen=True):
    index: int
    message: ChatChoiceMessage
    finish_reason: str


class ChatUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatOut(msgspec.Struct, frozen=True):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage


class ModelOut(msgspec.Struct, frozen=True):
    id: str
    object: str
    created: int
    owned_by: str


class ModelList(msgspec.Struct, frozen=True):
    object: str
    data: list[ModelOut]


__all__ = [
    "ComputeRequest",
    "Dispute",
    "ProviderAnalytics",
    "RequesterAnalytics",
    "Transaction",
    "TransactionPage",
]
