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
from ..store import Scope, from_json, to_json
from ._breaker import BreakerSettings
from ._jobs import run_job
from ._messages import ChatMessage
from ._pick import Candidate, Decision, Outcome, ProviderRouter, RouteRequest
from ._store import MarketStore, dispute_of, request_of, transaction_of
from ._views import (
    Attempt,
    ComputeRequest,
    Dispute,
    Hardware,
    HourUsage,
    Provider,
    ProviderAnalytics,
    ProviderUsed,
    QualitySettings,
    RequesterAnalytics,
    RoutingDecision,
    Score,
    Transaction,
    TransactionPage,
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


class RequestEnded(YggdrasilError):
    status = 409
    code = "request_ended"
    default_message = "the request has ended"


class NotRunningHere(YggdrasilError):
    status = 409
    code = "not_running_here"
    default_message = "the request runs on another instance: ask that one, or wait for it"


class DisputeRefused(YggdrasilError):
    status = 409
    code = "dispute_refused"
    default_message = "this transaction cannot be disputed"


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
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)
    """Set once the request has ended and is stored so."""
    stopped: tuple[str, str] | None = None
    """Why it was stopped from outside: (state, error) - cancelled, or the instance stops."""
    attempts: list[Attempt] = field(default_factory=list)
    provider: str | None = None
    """The provider whose job runs now."""

    def stop(self, state: str, error: str) -> None:
        if self.stopped is None:
            self.stopped = (state, error)
            self.scope.cancel()

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
        cooldown = max(1, int(config.breaker_cooldown_s * 1000))
        self.engine = ProviderRouter(
            breaker=BreakerSettings(
                consecutive_failures=config.breaker_failures,
                min_outcomes=min(10, config.breaker_failures * 2),
                cooldown_ms=cooldown,
                max_cooldown_ms=max(cooldown, 600_000),
                probe_timeout_ms=max(1000, int(config.test_timeout_s * 2000)),
            ),
            idle_probe_ms=max(1, int(config.idle_probe_s * 1000)),
        )
        self._nursery: trio.Nursery | None = None
        self._live: dict[str, _Live] = {}
        self._busy: dict[str, int] = {}

    def _store(self) -> tuple[Any, MarketStore]:
        domain = self.domain.get()
        return domain, MarketStore(domain.store.db)

    async def serve(self, *, stopping: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        """Runs the requests this instance settles, and the providers' probes, until
        ``stopping``; then stops the requests still running: each ends ``FAILED`` with its hold
        released at once (its provider told to stop), not left to the hold's expiry."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._probes)
            task_status.started()
            await stopping.wait()
            self._nursery = None  # no new requests here
            running = list(self._live.values())
            for live in running:
                live.stop("FAILED", "the instance stopped while the request ran")
            with trio.move_on_after(10):
                for live in running:
                    await live.ended.wait()
            nursery.cancel_scope.cancel()

    # ----------------------------------------------------------------- probes

    async def _probes(self) -> None:
        """Every ``probe_interval_s``: probe the providers the routing engine says are due (a
        half-open breaker's one probe; providers idle for ``idle_probe_s``)."""
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(self.config.probe_interval_s)
                try:
                    active = {p.provider_id: p for p, _owner in await self._store()[1].active()}
                except Exception as exc:  # the store may be down for a while: try again later
                    log.warning("marketplace probes: %s", exc)
                    continue
                at = now_ms()
                # Ranking for no model changes nothing but makes the engine know every active
                # provider, so that idle ones are probed after a restart too.
                self.engine.rank(
                    RouteRequest("", 0, 1),
                    [
                        Candidate(p.provider_id, p.price_per_1k, 1, p.tokens_per_minute, True, ())
                        for p in active.values()
                    ],
                    now_ms=at,
                )
                for pid in self.engine.probe_due(at):
                    provider = active.get(pid)
                    if provider is None:
                        self.engine.forget(pid)  # paused or gone
                    else:
                        nursery.start_soon(self._probe, provider)

    async def _probe(self, provider: Provider) -> None:
        """One probe: the registration's known-answer test job, reported as a probe."""
        pid = provider.provider_id
        self.engine.started(pid, probe=True)
        outcome = Outcome(False)
        try:
            latency, throughput = await self._test(
                provider.network_id, provider.device_id, provider.models
            )
            outcome = Outcome(True, latency, throughput)
        except (DeviceOffline, ProviderTestFailed) as exc:
            log.info("provider=%s probe failed: %s", pid, exc.message, extra={"provider": pid})
        except Exception:
            log.exception("provider=%s probe", pid, extra={"provider": pid})
        finally:
            self.engine.finished(pid, outcome, probe=True)

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

    # ----------------------------------------------------------------- transactions

    async def transactions(
        self, user_id: str, *, cursor: str | None, limit: int
    ) -> TransactionPage:
        """The caller's settled requests, newest first, as requester or as provider."""
        items, after = await self._store()[1].transactions(user_id, before=cursor, limit=limit)
        return TransactionPage(items, after)

    async def transaction(self, user_id: str, transaction_id: str) -> Transaction:
        row = await self._store()[1].transaction_row(user_id, transaction_id)
        return transaction_of(row, user_id)

    async def dispute(self, user_id: str, transaction_id: str, reason: str) -> Dispute:
        """The requester disputes a transaction (one dispute per transaction); an operator
        resolves it. The provider's side of it is 409 ``dispute_refused``."""
        reason = reason.strip()
        if not reason:
            raise Invalid("reason: say what went wrong")
        store = self._store()[1]
        row = await store.transaction_row(user_id, transaction_id)
        if row["user_id"] != user_id:
            raise DisputeRefused("only the requester disputes a transaction")
        if int(row["refunded"]) >= int(row["cost"]):
            raise DisputeRefused("the transaction is refunded in full already")
        try:
            added = await store.add_dispute(
                {
                    "dispute_id": new_id("md"),
                    "request_id": row["request_id"],
                    "user_id": user_id,
                    "provider_user_id": row["provider_user_id"],
                    "reason": reason,
                    "created_at": now_ms(),
                }
            )
        except UniqueViolation:
            raise UniqueViolation("this transaction is disputed already") from None
        return dispute_of(added, transaction_id, user_id)

    async def disputes(self, user_id: str) -> list[Dispute]:
        """The disputes of the caller's transactions (either side)."""
        store = self._store()[1]
        found = []
        for row in await store.disputes(user_id):
            request = await store.request_any(row["request_id"])
            found.append(dispute_of(row, request["capture_txn"], user_id))
        return found

    async def resolve(self, operator_id: str, dispute_id: str, refund: int) -> Dispute:
        """An operator closes a dispute with a refund of 0 up to what is left of the cost:
        through the ledger's refund, which takes it back from the provider's earnings and the
        company's fee in proportion. A full refund makes the request ``REFUNDED``."""
        check_cents(refund, field="refund", zero=True)
        domain, store = self._store()
        row = await store.dispute_any(dispute_id)
        if row["status"] != "open":
            raise DisputeRefused("the dispute is resolved already")
        request = await store.request_any(row["request_id"])
        left = int(request["cost"]) - int(request["refunded"])
        if refund > left:
            raise Invalid(f"refund: at most {left} cents are left to refund")
        if refund:
            # Keyed by the dispute: a retry (or a racing resolution) never refunds twice.
            await domain.ledger.refund(
                request["capture_txn"], refund, key=f"mkt:{dispute_id}:refund"
            )
        resolved = await store.resolve_dispute(dispute_id, refund)
        if resolved is None:
            raise DisputeRefused("the dispute is resolved already")
        if refund:
            await store.add_refund(row["request_id"], refund)
        log.info(
            "dispute=%s resolved by %s: refund %d",
            dispute_id,
            operator_id,
            refund,
            extra={"dispute": dispute_id},
        )
        return dispute_of(resolved, request["capture_txn"], row["user_id"])

    # ----------------------------------------------------------------- analytics

    async def provider_analytics(self, user_id: str) -> ProviderAnalytics:
        """The caller's providers: requests served, earnings, refunds, quality, usage by hour."""
        rows = await self._store()[1].rows_for("provider_user_id", user_id)
        completed = [r for r in rows if r["state"] in ("COMPLETED", "REFUNDED")]
        failed = len(rows) - len(completed)
        return ProviderAnalytics(
            requests=len(rows),
            completed=len(completed),
            failed=failed,
            tokens=sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in rows),
            earnings=sum(int(r["earnings"]) for r in rows),
            refunded=sum(int(r["refunded"]) for r in rows),
            success_rate=len(completed) / len(rows) if rows else 0.0,
            by_hour=_by_hour(rows, "earnings"),
        )

    async def requester_analytics(self, user_id: str) -> RequesterAnalytics:
        """The caller's requests: how many, how they ended, tokens, cost, refunds, and the
        quality of the providers used (by opaque id), usage by hour."""
        rows = await self._store()[1].rows_for("user_id", user_id)
        ok = ("COMPLETED", "REFUNDED")
        used: dict[str, list[int]] = {}
        for row in rows:
            for attempt in from_json(row["attempts"]):
                counts = used.setdefault(attempt["provider_id"], [0, 0])
                counts[0] += 1
                counts[1] += attempt["outcome"] == "served"
        return RequesterAnalytics(
            requests=len(rows),
            completed=sum(r["state"] in ok for r in rows),
            failed=sum(r["state"] == "FAILED" for r in rows),
            tokens=sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in rows),
            cost=sum(int(r["cost"]) for r in rows),
            refunded=sum(int(r["refunded"]) for r in rows),
            providers=[
                ProviderUsed(pid, n, good, good / n) for pid, (n, good) in sorted(used.items())
            ],
            by_hour=_by_hour(rows, "cost"),
        )

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

    async def cancel(self, user_id: str, request_id: str) -> ComputeRequest:
        """Stop a running request of the caller's: ``CANCELLED``, the hold released in full,
        the provider told to stop (``job_cancel``). 409 ``request_ended`` for one that has
        ended; 409 ``not_running_here`` for one another instance runs."""
        found = await self.get(user_id, request_id)  # 404 for another user's
        if found.state not in ("PENDING", "PROCESSING"):
            raise RequestEnded(f"the request is {found.state} already")
        live = self._live.get(request_id)
        if live is None:
            raise NotRunningHere()
        live.stop("CANCELLED", "cancelled by the requester")
        with trio.fail_after(15):
            await live.ended.wait()
        return await self.get(user_id, request_id)

    async def feedback(self, user_id: str, request_id: str, rating: int) -> None:
        """The requester rates a completed request 1 (bad) to 5 (good): it feeds the routing
        engine's quality of the provider that served it (as 0 to 1)."""
        if not 1 <= rating <= 5:
            raise Invalid("rating: 1 to 5")
        found = await self.get(user_id, request_id)
        if found.state != "COMPLETED" or found.provider_id is None:
            raise RequestEnded("only a completed request can be rated")
        self.engine.rate(found.provider_id, (rating - 1) / 4)

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
            with live.scope:
                await self._process(
                    user_id, request_id, hold_id, model, messages, max_cost, max_tokens, live
                )
            if live.stopped is not None:
                state, error = live.stopped
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._fail(
                        request_id, hold_id, error, live.attempts, "".join(live.parts), state
                    )
        except Exception:
            log.exception("request=%s failed", request_id, extra={"request": request_id})
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._fail(request_id, hold_id, "internal error", [], "".join(live.parts))
        finally:
            live.finish()
            self._live.pop(request_id, None)
            live.ended.set()

    async def _fail(
        self,
        request_id: str,
        hold_id: str,
        error: str,
        attempts: list[Attempt],
        answer: str,
        state: str = "FAILED",
    ) -> None:
        domain, store = self._store()
        await domain.ledger.release(hold_id, key=f"mkt:{request_id}:release")
        await store.set_request(
            request_id,
            {
                "state": state,
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
        attempts = live.attempts
        for pid in decision.order[: self.config.max_attempts]:
            provider, owner = known[pid]
            meter = _Meter(provider.price_per_1k, prompt, max_cost, max_tokens, live)
            self.engine.started(pid)
            self._busy[pid] = self._busy.get(pid, 0) + 1
            try:
                live.provider = pid
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
            except trio.Cancelled:
                # Stopped from outside (cancelled, or the instance stops): not the provider's
                # fault, so it counts as answered; its job was told to stop (run_job).
                self.engine.finished(pid, Outcome(True, None, None, None))
                attempts.append(
                    Attempt(pid, "cancelled", None if live.stopped is None else live.stopped[1])
                )
                raise
            finally:
                live.provider = None
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
                with trio.CancelScope(shield=True):  # a settlement is never left half done
                    await self._settle(
                        request_id, hold_id, provider, owner, prompt, meter, attempts
                    )
                live.stopped = None  # it ended before the stop
                return
            if meter.completion:
                break  # it failed after its first token: the requester saw part of an answer
        error = "no provider could serve this request" if attempts else "no provider fits"
        with trio.CancelScope(shield=True):
            await self._fail(request_id, hold_id, error, attempts, "".join(live.parts))
        live.stopped = None

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


def _by_hour(rows: list[Any], amount: str) -> list[HourUsage]:
    hours: dict[int, list[int]] = {}
    for row in rows:
        hour = int(row["created_at"]) // 3_600_000 * 3_600_000
        bucket = hours.setdefault(hour, [0, 0, 0])
        bucket[0] += 1
        bucket[1] += int(row["prompt_tokens"]) + int(row["completion_tokens"])
        bucket[2] += int(row[amount])
    return [HourUsage(h, *hours[h]) for h in sorted(hours)]


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
