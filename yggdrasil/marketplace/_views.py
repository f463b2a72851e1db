"""What the marketplace answers: providers (their owner's view), requests, transactions,
disputes and analytics. A requester's views name a provider only by its opaque id."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

RequestState = Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED", "REFUNDED"]

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class Hardware(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    gpu: Annotated[str, msgspec.Meta(max_length=100)] = ""
    vram_gb: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0
    cpu: Annotated[str, msgspec.Meta(max_length=100)] = ""
    ram_gb: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0


class Window(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Available on ``days`` (0 Monday .. 6 Sunday) from ``start`` to ``end`` (minutes of the
    day, UTC; ``end`` after ``start``)."""

    days: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=6)]], msgspec.Meta(max_length=7)]
    start_minute: Annotated[int, msgspec.Meta(ge=0, le=1439)] = 0
    end_minute: Annotated[int, msgspec.Meta(ge=1, le=1440)] = 1440


class QualitySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    """The most tokens this provider answers one request with."""
    context_tokens: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 0
    """Its models' context window (0: not said)."""


class Provider(msgspec.Struct, frozen=True):
    """A provider as its owner sees it."""

    provider_id: str
    network_id: str
    device_id: str
    models: list[str]
    hardware: Hardware
    price_per_1k: int
    max_concurrent: int
    tokens_per_minute: int
    schedule: list[Window]
    quality: QualitySettings
    status: Literal["active", "paused"]
    test_latency_ms: int
    test_tokens_per_s: int
    created_at: int
    updated_at: int


class Score(msgspec.Struct, frozen=True):
    provider_id: str
    total: float
    price: float
    quality: float
    latency: float
    availability: float
    fairness: float
    excluded: str | None = None


class RoutingDecision(msgspec.Struct, frozen=True):
    order: list[str]
    """The providers in the order they were (or would have been) tried."""
    candidates: list[Score]
    at: int


class Attempt(msgspec.Struct, frozen=True):
    provider_id: str
    outcome: Literal["served", "failed", "timeout", "unreachable", "cancelled"]
    error: str | None = None
    ttft_ms: int | None = None


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ComputeRequest(msgspec.Struct, frozen=True):
    request_id: str
    state: RequestState
    model: str
    max_cost: int
    max_tokens: int
    provider_id: str | None
    decision: RoutingDecision | None
    attempts: list[Attempt]
    answer: str
    finish_reason: str | None
    usage: Usage
    cost: int
    refunded: int
    error: str | None
    created_at: int
    completed_at: int | None


class Transaction(msgspec.Struct, frozen=True):
    """One settled request, from the caller's side: ``role`` requester (paid ``cost``) or
    provider (earned ``provider_earnings``)."""

    transaction_id: str
    request_id: str
    role: Literal["requester", "provider"]
    provider_id: str
    model: str
    tokens: int
    price_per_1k: int
    cost: int
    company_fee: int
    provider_earnings: int
    refunded: int
    status: RequestState
    created_at: int


class TransactionPage(msgspec.Struct, frozen=True):
    items: list[Transaction]
    next_cursor: str | None = None


class Dispute(msgspec.Struct, frozen=True):
    dispute_id: str
    transaction_id: str
    request_id: str
    role: Literal["requester", "provider"]
    reason: str
    status: Literal["open", "resolved"]
    refund: int
    created_at: int
    resolved_at: int | None


class HourUsage(msgspec.Struct, frozen=True):
    hour: int
    """The hour's start, milliseconds since the epoch (UTC)."""
    requests: int
    tokens: int
    amount: int


class ProviderAnalytics(msgspec.Struct, frozen=True):
    requests: int
    completed: int
    failed: int
    tokens: int
    earnings: int
    refunded: int
    success_rate: float
    by_hour: list[HourUsage]


class ProviderUsed(msgspec.Struct, frozen=True):
    provider_id: str
    requests: int
    completed: int
    success_rate: float


class RequesterAnalytics(msgspec.Struct, frozen=True):
    requests: int
    completed: int
    failed: int
    tokens: int
    cost: int
    refunded: int
    providers: list[ProviderUsed]
    by_hour: list[HourUsage]


__all__ = ["RequestState", "_Name"]
