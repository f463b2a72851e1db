"""The compute marketplace over HTTP: providers, requests (JSON or server-sent events),
transactions, disputes, analytics; and the OpenAI-compatible front door (``/openai/v1``), where
a Yggdrasil access token is the API key.

Every route acts for the caller only: another user's provider, request, transaction or dispute
answers 404 exactly like a missing one; a requester sees providers only by their opaque id.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from quart import Quart, Response, request
from quart_schema import (
    document_response,
    tag,
    validate_headers,
    validate_querystring,
    validate_request,
    validate_response,
)

from yggdrasil import Unavailable
from yggdrasil.billing import check_cents, check_key
from yggdrasil.marketplace import (
    ChatMessage,
    ComputeRequest,
    Dispute,
    Marketplace,
    Provider,
    ProviderAnalytics,
    ProviderSpec,
    RequesterAnalytics,
    RequestFailed,
    Transaction,
    TransactionPage,
)

from ._auth import Guard, errors
from ._billing_models import IdempotencyHeader
from ._marketplace_models import (
    ChatChoice,
    ChatChoiceMessage,
    ChatIn,
    ChatOut,
    ChatUsage,
    DisputeIn,
    DisputeList,
    FeedbackIn,
    ModelList,
    ModelOut,
    PageQuery,
    ProviderIn,
    ProviderList,
    ProviderUpdate,
    RequestIn,
    ResolveIn,
    StreamQuery,
)
from ._openapi import no_content
from ._resources import _device_scope


async def _raw_cents(*names: str) -> None:
    """The body's amounts as they were sent: whole numbers, never floats or strings."""
    body: Any = await request.get_json(silent=True)
    if isinstance(body, dict):
        for name in names:
            if name in body:
                check_cents(body[name], field=name, zero=name == "price_per_1k")


def _spec(data: ProviderIn | ProviderUpdate) -> ProviderSpec:
    return ProviderSpec(
        models=list(data.models),
        price_per_1k=data.price_per_1k,
        max_concurrent=data.max_concurrent,
        tokens_per_minute=data.tokens_per_minute,
        hardware=data.hardware,
        schedule=list(data.schedule),
        quality=data.quality,
    )


def _wants_stream(flag: bool) -> bool:
    return flag or "text/event-stream" in request.headers.get("Accept", "")


def _sse(events: AsyncIterator[bytes]) -> Response:
    response = Response(events, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.timeout = None
    return response


def install(app: Quart, guard: Guard, marketplace: Marketplace | None) -> None:
    def service() -> Marketplace:
        if marketplace is None:
            raise Unavailable("the marketplace is not served here")
        return marketplace

    # ------------------------------------------------------------------- providers

    @app.post("/api/v1/marketplace/providers/register")
    @tag(["marketplace"])
    @validate_request(ProviderIn)
    @validate_response(Provider, 201)
    @errors(400, 404, 409, 413, 422, 503)
    async def register_market_provider(data: ProviderIn) -> tuple[Provider, int]:
        """Sell one of your devices' compute. Needs a verified payout method (409
        ``payout_method_required``) and KYC where your region requires it (409
        ``kyc_required``); the device must run the provider agent (409 ``device_offline``),
        which then gets a test job: only a provider that answers it right (422
        ``provider_test_failed`` otherwise) is stored, active."""
        await _raw_cents("price_per_1k")
        principal, _domain, network_id = await _device_scope(guard, data.network_id)
        provider = await service().register(
            principal.user_id, network_id, data.device_id, _spec(data)
        )
        return provider, 201

    @app.get("/api/v1/marketplace/providers")
    @tag(["marketplace"])
    @validate_response(ProviderList, 200)
    @errors(503)
    async def list_market_providers() -> ProviderList:
        """Your own providers."""
        return ProviderList(await service().providers(guard.principal().user_id))

    @app.get("/api/v1/marketplace/providers/<provider_id>")
    @tag(["marketplace"])
    @validate_response(Provider, 200)
    @errors(404, 503)
    async def get_market_provider(provider_id: str) -> Provider:
        return await service().provider(guard.principal().user_id, provider_id)

    @app.put("/api/v1/marketplace/providers/<provider_id>")
    @tag(["marketplace"])
    @validate_request(ProviderUpdate)
    @validate_response(Provider, 200)
    @errors(400, 404, 413, 422, 503)
    async def update_market_provider(provider_id: str, data: ProviderUpdate) -> Provider:
        """Change a provider's models, price, capacity, schedule or quality settings, or pause
        it (``status``: ``paused``; it gets no requests until ``active`` again)."""
        await _raw_cents("price_per_1k")
        return await service().update(
            guard.principal().user_id, provider_id, _spec(data), data.status
        )

    @app.delete("/api/v1/marketplace/providers/<provider_id>")
    @tag(["marketplace"])
    @no_content
    @errors(404, 503)
    async def delete_market_provider(provider_id: str) -> tuple[str, int]:
        await service().remove(guard.principal().user_id, provider_id)
        return "", 204

    # ------------------------------------------------------------------- requests

    async def sse_events(user_id: str, request_id: str) -> AsyncIterator[bytes]:
        async for kind, value in service().follow(user_id, request_id):
            if kind == "chunk":
                yield b"event: chunk\ndata: " + json.dumps({"text": value}).encode() + b"\n\n"
            else:
                yield b"event: done\ndata: " + msgspec.json.encode(value) + b"\n\n"

    @app.post("/api/v1/marketplace/requests")
    @tag(["marketplace"])
    @validate_headers(IdempotencyHeader)
    @validate_querystring(StreamQuery)
    @validate_request(RequestIn)
    @document_response(ComputeRequest, 202)
    @errors(400, 402, 409, 413, 422, 503)
    async def create_market_request(
        data: RequestIn, headers: IdempotencyHeader, query_args: StreamQuery
    ) -> Any:
        """Run a chat request on the marketplace: the max cost is held from your balance, a
        provider is chosen (``decision`` shows how), the answer streams from its device and the
        real cost is captured, the rest released. 202 with the request; with ``stream`` (or
        ``Accept: text/event-stream``) the answer as server-sent events (``chunk`` events, then
        ``done`` with the request as it ended)."""
        await _raw_cents("max_cost")
        key = check_key(headers.idempotency_key)
        user_id = guard.principal().user_id
        found, _created = await service().submit(
            user_id,
            model=data.model,
            messages=[ChatMessage(m.role, m.content) for m in data.messages],
            max_cost=data.max_cost,
            max_tokens=data.max_tokens,
            key=key,
        )
        if _wants_stream(data.stream or query_args.stream):
            return _sse(sse_events(user_id, found.request_id))
        return msgspec.to_builtins(found), 202

    @app.get("/api/v1/marketplace/requests/<request_id>")
    @tag(["marketplace"])
    @validate_querystring(StreamQuery)
    @document_response(ComputeRequest, 200)
    @errors(404, 422, 503)
    async def get_market_request(request_id: str, query_args: StreamQuery) -> Any:
        """A request of yours: its state, the routing decision (candidates and scores), the
        attempts, the answer, usage and cost. With ``stream``: as server-sent events."""
        user_id = guard.principal().user_id
        if _wants_stream(query_args.stream):
            await service().get(user_id, request_id)
            return _sse(sse_events(user_id, request_id))
        return msgspec.to_builtins(await service().get(user_id, request_id)), 200

    @app.post("/api/v1/marketplace/requests/<request_id>/cancel")
    @tag(["marketplace"])
    @validate_response(ComputeRequest, 200)
    @errors(404, 409, 503)
    async def cancel_market_request(request_id: str) -> ComputeRequest:
        """Stop a running request of yours: ``CANCELLED``, its hold released in full, the
        provider told to stop. 409 ``request_ended`` once it has ended, ``not_running_here``
        while another instance runs it."""
        return await service().cancel(guard.principal().user_id, request_id)

    @app.post("/api/v1/marketplace/requests/<request_id>/feedback")
    @tag(["marketplace"])
    @validate_request(FeedbackIn)
    @no_content
    @errors(400, 404, 409, 413, 422, 503)
    async def rate_market_request(request_id: str, data: FeedbackIn) -> tuple[str, int]:
        """Rate a completed request of yours, 1 (bad) to 5 (good): the provider's quality in
        routing takes it in."""
        await service().feedback(guard.principal().user_id, request_id, data.rating)
        return "", 204

    # ------------------------------------------------------------------- transactions

    @app.get("/api/v1/marketplace/transactions")
    @tag(["marketplace"])
    @validate_querystring(PageQuery)
    @validate_response(TransactionPage, 200)
    @errors(422, 503)
    async def list_market_transactions(query_args: PageQuery) -> TransactionPage:
        """Your settled requests, newest first: as requester (``cost`` paid) and as provider
        (``provider_earnings``). ``next_cursor`` pages on."""
        return await service().transactions(
            guard.principal().user_id, cursor=query_args.cursor, limit=query_args.limit
        )

    @app.get("/api/v1/marketplace/transactions/<transaction_id>")
    @tag(["marketplace"])
    @validate_response(Transaction, 200)
    @errors(404, 503)
    async def get_market_transaction(transaction_id: str) -> Transaction:
        return await service().transaction(guard.principal().user_id, transaction_id)

    @app.post("/api/v1/marketplace/transactions/<transaction_id>/dispute")
    @tag(["marketplace"])
    @validate_request(DisputeIn)
    @validate_response(Dispute, 201)
    @errors(400, 404, 409, 413, 422, 503)
    async def dispute_market_transaction(
        transaction_id: str, data: DisputeIn
    ) -> tuple[Dispute, int]:
        """Dispute a transaction you paid (one dispute each; 409 ``dispute_refused`` for the
        provider's side or a transaction refunded in full). An operator resolves it."""
        found = await service().dispute(guard.principal().user_id, transaction_id, data.reason)
        return found, 201

    @app.get("/api/v1/marketplace/disputes")
    @tag(["marketplace"])
    @validate_response(DisputeList, 200)
    @errors(503)
    async def list_market_disputes() -> DisputeList:
        """The disputes of your transactions, either side (the latest 100)."""
        return DisputeList(await service().disputes(guard.principal().user_id))

    @app.post("/api/admin/marketplace/disputes/<dispute_id>/resolve")
    @tag(["admin"])
    @validate_request(ResolveIn)
    @validate_response(Dispute, 200)
    @errors(400, 403, 404, 409, 413, 422, 503)
    async def resolve_market_dispute(dispute_id: str, data: ResolveIn) -> Dispute:
        """Close a dispute with a refund of 0 up to what is left of the cost (full or
        partial), taken back from the provider's earnings and the company's fee in
        proportion; refunded in full, the request is ``REFUNDED``."""
        await _raw_cents("refund")
        return await service().resolve(guard.principal().user_id, dispute_id, data.refund)

    @app.get("/api/v1/marketplace/analytics/provider")
    @tag(["marketplace"])
    @validate_response(ProviderAnalytics, 200)
    @errors(503)
    async def market_provider_analytics() -> ProviderAnalytics:
        """Your providers' requests, earnings, refunds, success rate and usage by hour."""
        return await service().provider_analytics(guard.principal().user_id)

    @app.get("/api/v1/marketplace/analytics/requester")
    @tag(["marketplace"])
    @validate_response(RequesterAnalytics, 200)
    @errors(503)
    async def market_requester_analytics() -> RequesterAnalytics:
        """Your requests: history counts, tokens, cost, refunds, the providers used (by
        opaque id) and how they did, usage by hour."""
        return await service().requester_analytics(guard.principal().user_id)

    # ------------------------------------------------------------------- OpenAI front door

    def openai_chat(found: ComputeRequest, model: str) -> ChatOut:
        return ChatOut(
            id=found.request_id,
            object="chat.completion",
            created=found.created_at // 1000,
            model=model,
            choices=[
                ChatChoice(
                    0,
                    ChatChoiceMessage("assistant", found.answer),
                    _finish(found.finish_reason),
                )
            ],
            usage=ChatUsage(
                found.usage.prompt_tokens, found.usage.completion_tokens, found.usage.total_tokens
            ),
        )

    async def openai_events(user_id: str, request_id: str, model: str) -> AsyncIterator[bytes]:
        created = int(time.time())

        def chunk(delta: dict[str, str], finish: str | None) -> bytes:
            body = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        yield chunk({"role": "assistant", "content": ""}, None)
        async for kind, value in service().follow(user_id, request_id):
            if kind == "chunk":
                assert isinstance(value, str)
                yield chunk({"content": value}, None)
            else:
                assert isinstance(value, ComputeRequest)
                if value.state != "COMPLETED":
                    error = {"error": {"message": value.error or "failed", "type": "server_error"}}
                    yield b"data: " + json.dumps(error).encode() + b"\n\n"
                else:
                    yield chunk({}, _finish(value.finish_reason))
        yield b"data: [DONE]\n\n"

    @app.post("/openai/v1/chat/completions")
    @tag(["openai"])
    @validate_request(ChatIn)
    @document_response(ChatOut, 200)
    @errors(400, 402, 409, 413, 422, 502, 503)
    async def chat_completions(data: ChatIn) -> Any:
        """OpenAI's chat completions, served by the marketplace (stream and not); the API key is
        a Yggdrasil access token. ``max_cost_cents`` caps the cost (default 100); an
        ``Idempotency-Key`` header is optional (a fresh one otherwise)."""
        user_id = guard.principal().user_id
        key = check_key(request.headers.get("Idempotency-Key") or f"openai-{secrets.token_hex(16)}")
        found, _created = await service().submit(
            user_id,
            model=data.model,
            messages=[ChatMessage(m.role, m.content) for m in data.messages],
            max_cost=data.max_cost_cents,
            max_tokens=data.max_completion_tokens or data.max_tokens or 1024,
            key=key,
        )
        if data.stream:
            return _sse(openai_events(user_id, found.request_id, data.model))
        final = found
        async for kind, value in service().follow(user_id, found.request_id):
            if kind == "done":
                assert isinstance(value, ComputeRequest)
                final = value
        if final.state != "COMPLETED":
            raise RequestFailed(final.error or "the request failed")
        return msgspec.to_builtins(openai_chat(final, data.model)), 200

    @app.get("/openai/v1/models")
    @tag(["openai"])
    @validate_response(ModelList, 200)
    @errors(503)
    async def openai_models() -> ModelList:
        """The models that active providers serve now (OpenAI's list shape)."""
        names = await service().models()
        return ModelList(
            "list", [ModelOut(name, "model", 0, "yggdrasil-marketplace") for name in names]
        )


def _finish(reason: str | None) -> str:
    return "length" if reason in ("length", "max_cost") else "stop"
