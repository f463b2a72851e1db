"""The marketplace: providers (registered after a live test job), compute requests (hold,
route, dispatch, stream, settle), transactions, disputes and analytics. One per instance; the
request flows it starts run in its own nursery, so a request goes on when its HTTP client leaves.
See ``docs/marketplace.md``."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec
import trio

from actors import Router

from .._addresses import device_address
from .._config import MarketplaceConfig
from .._errors import Invalid, NotFound, Unavailable, UniqueViolation, YggdrasilError
from .._ids import new_id, now_ms
from ..billing import (
    IdempotencyKeyReused,
    NoPaymentMethod,
    Posting,
    check_cents,
    company_account,
    compute_cost,
    fee,
    user_account,
)
from ..store import Scope, to_json
from ._jobs import run_job
from ._messages import ChatMessage
from ._pick import Candidate, Decision, Outcome, ProviderRouter, RouteRequest
from ._store import MarketStore, request_of
from ._views import (
    Attempt,
    ComputeRequest,
    Hardware,
    Provider,
    QualitySettings,
    RoutingDecision,
    Score,
    Window,
)


class DomainSource(Protocol):
    """The instance's domain handle (``_domain.DomainHandle``): ``get()`` the current domain
    services (the store, the ledger, payments, KYC), or ``StoreUnavailable``."""

    def get(self) -> Any: ...


log = logging.getLogger(__name__)

ECHO = "echo"
"""The reference agent's built-in model: it answers the last user message, word by word."""


class PayoutMethodRequired(YggdrasilError):
    status = 409
    code = "payout_method_required"
    default_message = "add and verify a payout method first (POST /api/v1/payments/methods)"


class ProviderTestFailed(YggdrasilError):
    status = 422
    code = "provider_test_failed"
    default_message = "the provider did not pass its test job"


class RequestFailed(YggdrasilError):
    status = 502
    code = "request_failed"
    default_message = "no provider could serve the request"


class DeviceOffline(YggdrasilError):
    status = 409
    code = "device_offline"
    default_message = "the device has no live session: start the provider agent first"


def count_tokens(messages: list[ChatMessage]) -> int:
    """The prompt's tokens as the marketplace bills them: its whitespace-separated words."""
    return sum(len(message.content.split()) for message in messages)


def in_schedule(schedule: list[Window], at_ms: int) -> bool:
    if not schedule:
        return True
    moment = time.gmtime(at_ms / 1000)
    minute = moment.tm_hour * 60 + moment.tm_min
    return any(
        moment.tm_wday in w.days and w.start_minute <= minute < w.end_minute for w in schedule
    )


class ProviderSpec(msgspec.Struct, frozen=True):
    """What a provider's owner says about it (registration and updates)."""

    models: list[str]
    price_per_1k: int
    max_concurrent: int = 1
    tokens_per_minute: int = 6000
    hardware: Hardware = Hardware()
    schedule: list[Window] = []
    quality: QualitySettings = QualitySettings()


@dataclass
class _Live:
    """A request running on this instance: its answer so far, for those who follow it."""

    parts: list[str] = field(default_factory=list)
    done: bool = False
    changed: trio.Event = field(default_factory=trio.Event)

    def push(self, text: str) -> None:
        self.parts.append(text)
        self.changed.set()
        self.changed = trio.Event()

    def finish(self) -> None:
        self.done = True
        self.changed.set()


@dataclass
class _Meter:
    """Counts the tokens of one attempt and stops it at the request's caps."""

    price: int
    prompt: int
    max_cost: int
    max_tokens: int
    live: _Live
    completion: int = 0
    finish: str = "stop"
    parts: list[str] = field(default_factory=list)

    def accept(self, text: str, tokens: int) -> bool:
        if self.completion + tokens > self.max_tokens:
            self.finish = "length"
            return False
        if compute_cost(self.prompt + self.completion + tokens, self.price) > self.max_cost:
            self.finish = "max_cost"
            return False
        self.completion += tokens
        self.parts.append(text)
        self.live.push(text)
        return True


StreamEvent = tuple[Literal["chunk"], str] | tuple[Literal["done"], ComputeRequest]


class Marketplace:
    def __init__(
        self, router: Router, domain: DomainSource, config: MarketplaceConfig, *, fee_bp: int
    ) -> None:
        self.router = router
        self.domain = domain
        self.config = config
        self.fee_bp = fee_bp
        self.engine = ProviderRouter()
        self._nursery: trio.Nursery | None = None
        self._live: dict[str, _Live] = {}
        self._busy: dict[str, int] = {}

    def _store(self) -> tuple[Any, MarketStore]:
        domain = self.domain.get()
        return domain, MarketStore(domain.store.db)

    async def serve(self, *, stopping: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        """Runs the requests this instance settles until ``stopping``; then cancels those still
        running (their holds expire and are released by the ledger's reconciliation)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await stopping.wait()
            nursery.cancel_scope.cancel()
        self._nursery = None

    # ----------------------------------------------------------------- providers

    async def register(
        self, user_id: str, network_id: str, device_id: str, spec: ProviderSpec
    ) -> Provider:
        """Check the device is the user's, the payout method and KYC, test the provider over
        its live session, and store it (active) only if it passed."""
        domain, store = self._store()
        _check_spec(spec)
        await domain.store.get_device(Scope(user_id), network_id, device_id)
        try:
            await domain.payments.methods.chargeable(user_id, "payout")
        except NotFound:
            raise PayoutMethodRequired() from None
        kyc = await domain.kyc.get(user_id)
        if kyc.blocks_payouts:
            from ..billing import KycRequired

            raise KycRequired("providers need a verified KYC in your region first")
        for mine in await store.providers(user_id):
            if mine.network_id == network_id and mine.device_id == device_id:
                raise UniqueViolation("this device is a provider already")
        latency, throughput = await self._test(network_id, device_id, spec.models)
        at = now_ms()
        values: dict[str, Any] = {
            "provider_id": new_id("pv"),
            "user_id": user_id,
            "network_id": network_id,
            "device_id": device_id,
            **_spec_columns(spec),
            "status": "active",
            "test_latency_ms": latency,
            "test_tokens_per_s": throughput,
            "created_at": at,
            "updated_at": at,
        }
        provider = await store.add_provider(values)
        log.info(
            "provider=%s registered", provider.provider_id, extra={"provider": provider.provider_id}
        )
        return provider

    async def _test(self, network_id: str, device_id: str, models: list[str]) -> tuple[int, int]:
        """The test job: latency to the first token, tokens per second, and a known answer
        (the echo model must echo the prompt exactly; another model must answer something)."""
        model = ECHO if ECHO in models else models[0]
        prompt = f"yggdrasil test {secrets.token_hex(4)} one two three four five"
        parts: list[str] = []

        def accept(text: str, tokens: int) -> bool:
            parts.append(text)
            return sum(len(p) for p in parts) < 65_536

        result = await run_job(
            self.router,
            device_address(network_id, device_id),
            model,
            [ChatMessage("user", prompt)],
            64,
            accept=accept,
            first_timeout_s=self.config.test_timeout_s,
            total_timeout_s=self.config.test_timeout_s,
            queue=self.config.stream_queue,
        )
        if result.outcome == "unreachable":
            raise DeviceOffline()
        if result.outcome != "served":
            raise ProviderTestFailed(f"the test job {result.outcome}: {result.error or ''}".strip())
        answer = "".join(parts)
        if (model == ECHO and answer.strip() != prompt) or not answer.strip():
            raise ProviderTestFailed("the test job's answer was wrong")
        seconds = max(result.duration_ms, 1) / 1000
        return result.ttft_ms or 0, max(1, int(len(answer.split()) / seconds))

    async def providers(self, user_id: str) -> list[Provider]:
        return await self._store()[1].providers(user_id)

    async def provider(self, user_id: str, provider_id: str) -> Provider:
        return await self._store()[1].provider(user_id, provider_id)

    async def update(
        self, user_id: str, provider_id: str, spec: ProviderSpec, status: str
    ) -> Provider:
        _check_spec(spec)
        values = {**_spec_columns(spec), "status": status}
        return await self._store()[1].update_provider(user_id, provider_id, values)

    async def models(self) -> list[str]:
        """The models active providers serve (no provider is named)."""
        names: set[str] = set()
        for provider, _owner in await self._store()[1].active():
            names.update(provider.models)
        return sorted(names)

    async def remove(self, user_id: str, provider_id: str) -> None:
        await self._store()[1].delete_provider(user_id, provider_id)

    # ----------------------------------------------------------------- requests

    async def submit(
        self,
        user_id: str,
        *,
        model: str,
        messages: list[ChatMessage],
        max_cost: int,
        max_tokens: int,
        key: str,
    ) -> tuple[ComputeRequest, bool]:
        """Start a request (or find the one this key started): ``(request, created)``. The max
        cost is held from the caller's balance first; nothing is written when that fails."""
        check_cents(max_cost, field="max_cost")
        domain, store = self._store()
        fp = to_json(
            {
                "model": model,
                "messages": msgspec.to_builtins(messages),
                "max_cost": max_cost,
                "max_tokens": max_tokens,
            }
        )
        existing = await store.by_key(user_id, key)
        if existing is not None:
            return self._replay(existing, fp), False
        try:
            await domain.payments.methods.chargeable(user_id, "payer")
        except NotFound:
            raise NoPaymentMethod() from None
        if self._nursery is None or len(self._live) >= self.config.max_running:
            raise Unavailable("the marketplace is busy here, try again")
        request_id = new_id("mr")
        try:
            await store.add_request(
                {
                    "request_id": request_id,
                    "user_id": user_id,
                    "idempotency_key": key,
                    "fingerprint": fp,
                    "model": model,
                    "messages": to_json(msgspec.to_builtins(messages)),
                    "max_cost": max_cost,
                    "max_tokens": max_tokens,
                    "state": "PENDING",
                    "attempts": "[]",
                    "answer": "",
                    "created_at": now_ms(),
                }
            )
        except UniqueViolation:
            found = await store.by_key(user_id, key)
            if found is None:
                raise
            return self._replay(found, fp), False
        try:
            hold = await domain.ledger.hold(
                user_id, max_cost, key=f"mkt:{request_id}:hold", purpose="marketplace"
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.delete_request(request_id)
            raise
        await store.set_request(request_id, {"hold_id": hold.hold_id})
        live = self._live[request_id] = _Live()
        self._nursery.start_soon(
            self._run,
            user_id,
            request_id,
            hold.hold_id,
            model,
            messages,
            max_cost,
            max_tokens,
            live,
        )
        return request_of(await store.request_row(user_id, request_id)), True

    def _replay(self, row: Any, fp: str) -> ComputeRequest:
        if row["fingerprint"] != fp:
            raise IdempotencyKeyReused()
        return request_of(row)

    async def get(self, user_id: str, request_id: str) -> ComputeRequest:
        found = request_of(await self._store()[1].request_row(user_id, request_id))
        live = self._live.get(request_id)
        if live is not None and not found.answer:
            found = msgspec.structs.replace(found, answer="".join(live.parts))
        return found

    async def follow(self, user_id: str, request_id: str) -> AsyncIterator[StreamEvent]:
        """The answer as it streams (what was streamed already first), then the request as it
        ended. A request that runs on another instance, or has ended, gives its stored answer
        whole once it ends."""
        await self.get(user_id, request_id)  # 404 for another user's
        live = self._live.get(request_id)
        sent = 0
        if live is not None:
            while True:
                changed = live.changed
                while sent < len(live.parts):
                    yield ("chunk", live.parts[sent])
                    sent += 1
                if live.done:
                    break
                await changed.wait()
        while True:
            final = await self.get(user_id, request_id)
            if final.state not in ("PENDING", "PROCESSING"):
                break
            await trio.sleep(0.05)
        if live is None and final.answer:
            yield ("chunk", final.answer)
        yield ("done", final)

    async def _run(
        self,
        user_id: str,
        request_id: str,
        hold_id: str,
        model: str,
        messages: list[ChatMessage],
        max_cost: int,
        max_tokens: int,
        live: _Live,
    ) -> None:
        try:
            await self._process(
                user_id, request_id, hold_id, model, messages, max_cost, max_tokens, live
            )
        except Exception:
            log.exception("request=%s failed", request_id, extra={"request": request_id})
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._fail(request_id, hold_id, "internal error", [], "".join(live.parts))
        finally:
            live.finish()
            self._live.pop(request_id, None)

    async def _fail(
        self, request_id: str, hold_id: str, error: str, attempts: list[Attempt], answer: str
    ) -> None:
        domain, store = self._store()
        await domain.ledger.release(hold_id, key=f"mkt:{request_id}:release")
        await store.set_request(
            request_id,
            {
                "state": "FAILED",
                "error": error,
                "attempts": to_json(msgspec.to_builtins(attempts)),
                "answer": answer,
                "completed_at": now_ms(),
            },
        )

    async def _process(
        self,
        user_id: str,
        request_id: str,
        hold_id: str,
        model: str,
        messages: list[ChatMessage],
        max_cost: int,
        max_tokens: int,
        live: _Live,
    ) -> None:
        _domain, store = self._store()
        prompt = count_tokens(messages)
        at = now_ms()
        known: dict[str, tuple[Provider, str]] = {}
        candidates: list[Candidate] = []
        too_dear: list[Score] = []
        for provider, owner in await store.active():
            pid = provider.provider_id
            if compute_cost(prompt + 1, provider.price_per_1k) > max_cost:
                too_dear.append(Score(pid, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "price"))
                continue
            known[pid] = (provider, owner)
            candidates.append(
                Candidate(
                    provider_id=pid,
                    price_per_1k=provider.price_per_1k,
                    free_slots=provider.max_concurrent - self._busy.get(pid, 0),
                    tokens_per_minute=provider.tokens_per_minute,
                    available=in_schedule(provider.schedule, at),
                    models=tuple(provider.models),
                )
            )
        # A provider fits when it can serve at least the prompt and one token within the max
        # cost; the meter stops the stream before the cost would pass it.
        decision = self.engine.rank(
            RouteRequest(model, max_cost, prompt + 1), candidates, now_ms=at
        )
        view = _decision_view(decision, too_dear)
        await store.set_request(
            request_id,
            {"state": "PROCESSING", "decision": to_json(msgspec.to_builtins(view))},
        )
        attempts: list[Attempt] = []
        for pid in decision.order[: self.config.max_attempts]:
            provider, owner = known[pid]
            meter = _Meter(provider.price_per_1k, prompt, max_cost, max_tokens, live)
            self.engine.started(pid)
            self._busy[pid] = self._busy.get(pid, 0) + 1
            try:
                result = await run_job(
                    self.router,
                    device_address(provider.network_id, provider.device_id),
                    model,
                    messages,
                    min(max_tokens, provider.quality.max_tokens),
                    accept=meter.accept,
                    first_timeout_s=self.config.first_token_timeout_s,
                    total_timeout_s=self.config.job_timeout_s,
                    queue=self.config.stream_queue,
                )
            finally:
                self._busy[pid] -= 1
                if not self._busy[pid]:
                    del self._busy[pid]
            seconds = max(result.duration_ms, 1) / 1000
            self.engine.finished(
                pid,
                Outcome(
                    result.outcome == "served",
                    result.ttft_ms,
                    meter.completion / seconds if meter.completion else None,
                    None,
                ),
            )
            attempts.append(Attempt(pid, result.outcome, result.error, result.ttft_ms))
            if result.outcome == "served":
                await self._settle(request_id, hold_id, provider, owner, prompt, meter, attempts)
                return
            if meter.completion:
                break  # it failed after its first token: the requester saw part of an answer
        error = "no provider could serve this request" if attempts else "no provider fits"
        await self._fail(request_id, hold_id, error, attempts, "".join(live.parts))

    async def _settle(
        self,
        request_id: str,
        hold_id: str,
        provider: Provider,
        owner: str,
        prompt: int,
        meter: _Meter,
        attempts: list[Attempt],
    ) -> None:
        """Capture the cost (the provider's earnings and the company's fee) and release the rest
        of the hold; each step has its own idempotency key, so a retry never pays twice."""
        domain, store = self._store()
        cost = compute_cost(prompt + meter.completion, provider.price_per_1k)
        taken = fee(cost, self.fee_bp)
        earned = cost - taken
        capture_txn = None
        if cost:
            legs = []
            if earned:
                legs.append(Posting(user_account(owner, "earnings"), earned))
            if taken:
                legs.append(Posting(company_account("fees"), taken))
            capture = await domain.ledger.capture(
                hold_id,
                cost,
                key=f"mkt:{request_id}:capture",
                to=legs,
                memo={"request_id": request_id},
            )
            capture_txn = capture.transaction_id
            if capture.remaining:
                await domain.ledger.release(hold_id, key=f"mkt:{request_id}:release")
        else:
            await domain.ledger.release(hold_id, key=f"mkt:{request_id}:release")
        await store.set_request(
            request_id,
            {
                "state": "COMPLETED",
                "provider_id": provider.provider_id,
                "provider_user_id": owner,
                "price_per_1k": provider.price_per_1k,
                "attempts": to_json(msgspec.to_builtins(attempts)),
                "answer": "".join(meter.parts),
                "finish_reason": meter.finish,
                "prompt_tokens": prompt,
                "completion_tokens": meter.completion,
                "cost": cost,
                "fee": taken,
                "earnings": earned,
                "capture_txn": capture_txn,
                "completed_at": now_ms(),
            },
        )


def _decision_view(decision: Decision, extra: list[Score]) -> RoutingDecision:
    scores = [
        Score(
            s.provider_id,
            s.total,
            s.price,
            s.quality,
            s.latency,
            s.availability,
            s.fairness,
            s.excluded,
        )
        for s in decision.scored
    ]
    return RoutingDecision(list(decision.order), scores + extra, decision.at)


def _check_spec(spec: ProviderSpec) -> None:
    if not spec.models or len(spec.models) > 50:
        raise Invalid("models: one to 50 model names")
    if any(not 1 <= len(m) <= 100 for m in spec.models):
        raise Invalid("a model name has 1 to 100 characters")
    for w in spec.schedule:
        if w.end_minute <= w.start_minute:
            raise Invalid("a schedule window ends after it starts")


def _spec_columns(spec: ProviderSpec) -> dict[str, Any]:
    return {
        "models": to_json(sorted(set(spec.models))),
        "hardware": to_json(msgspec.to_builtins(spec.hardware)),
        "price_per_1k": spec.price_per_1k,
        "max_concurrent": spec.max_concurrent,
        "tokens_per_minute": spec.tokens_per_minute,
        "schedule": to_json(msgspec.to_builtins(spec.schedule)),
        "quality": to_json(msgspec.to_builtins(spec.quality)),
    }
