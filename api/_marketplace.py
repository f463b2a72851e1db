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
    Marketplace,
    Provider,
    ProviderSpec,
    RequestFailed,
)

from ._auth import Guard, errors
from ._billing_models import IdempotencyHeader
from ._marketplace_models import (
    ChatChoice,
    ChatChoiceMessage,
    ChatIn,
    ChatOut,
    ChatUsage,
    ModelList,
    ModelOut,
    ProviderIn,
    ProviderList,
    ProviderUpdate,
    RequestIn,
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
    @errors(404, 409, 413, 422, 503)
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
    @errors(404, 413, 422, 503)
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
    @errors(404, 503)
    async def get_market_request(request_id: str, query_args: StreamQuery) -> Any:
        """A request of yours: its state, the routing decision (candidates and scores), the
        attempts, the answer, usage and cost. With ``stream``: as server-sent events."""
        user_id = guard.principal().user_id
        if _wants_stream(query_args.stream):
            await service().get(user_id, request_id)
            return _sse(sse_events(user_id, request_id))
        return msgspec.to_builtins(await service().get(user_id, request_id)), 200

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
