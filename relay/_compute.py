"""The marketplace's requester side on the device wire: a device asks ``service/geri``.

A session turns the device's ``compute_request`` frame into :class:`GeriAsk` (stamped with the
device's user, checked first) and dispatches it to ``service/geri``: every instance serves that
address (:class:`Geri`, an actor placed per instance), and the bus hands each ask to exactly one
of them, which becomes the instance that settles the request. Geri calls the marketplace's own
request API (:meth:`Marketplace.submit`, :meth:`Marketplace.follow`: the same hold, routing,
stream and settlement as the HTTP API) and sends the answer to the asking session as
:class:`GeriChunk` and one :class:`GeriDone` (or :class:`GeriFail`), which the session writes
as ``compute_chunk``, ``compute_done`` and ``compute_fail`` frames - only for asks it made.

The device learns the provider's opaque id and nothing else about it. A request goes on when
its device leaves (like an HTTP request whose client leaves): it settles, and
``GET /api/v1/marketplace/requests/{id}`` shows it.
"""

from __future__ import annotations

import contextlib
import logging

import msgspec
import trio

from actors import Actor, Address, ChildSpec, Envelope, Overloaded, Router, Unreachable, actor_spec
from yggdrasil import service_address
from yggdrasil.billing import check_cents, check_key
from yggdrasil.marketplace import ChatMessage, ComputeRequest, Marketplace

from .protocol import ComputeChunk, ComputeDone, ComputeFail
from .protocol import ComputeRequest as AskFrame

log = logging.getLogger(__name__)

GERI = service_address("geri")

ROLES = frozenset({"system", "user", "assistant"})
MAX_MESSAGES = 256
MAX_CONTENT = 200_000
MAX_TOKENS = 1_000_000
SEND_PATIENCE_S = 10.0
"""How long Geri waits for room in a slow asker's queue before it stops streaming to it (the
request itself goes on and settles)."""


class GeriAsk(msgspec.Struct, frozen=True, tag="geri.ask"):
    """A device's compute request, checked and stamped by its session (``user_id`` is the
    device's user, from its token, never from the device)."""

    ask_id: int
    user_id: str
    model: str
    messages: list[ChatMessage]
    max_cost: int
    max_tokens: int
    key: str


class GeriChunk(msgspec.Struct, frozen=True, tag="geri.chunk"):
    ask_id: int
    text: str


class GeriDone(msgspec.Struct, frozen=True, tag="geri.done"):
    ask_id: int
    request_id: str
    state: str
    provider_id: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: int
    error: str | None


class GeriFail(msgspec.Struct, frozen=True, tag="geri.fail"):
    ask_id: int
    code: str
    message: str


GeriAnswer = GeriChunk | GeriDone | GeriFail

COMPUTE_MESSAGES: tuple[type[msgspec.Struct], ...] = (GeriAsk, GeriChunk, GeriDone, GeriFail)


# ----------------------------------------------------------------------------- session side


class Asks:
    """The compute requests one session made and has not had answered: at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: set[int] = set()

    def ask(self, user_id: str, frame: AskFrame) -> GeriAsk | ComputeFail:
        """The ask to dispatch, or the frame that refuses it (nothing was sent anywhere)."""
        if frame.id in self.open:
            return ComputeFail(id=frame.id, code="invalid", message="this id is in use already")
        if len(self.open) >= self.limit:
            return ComputeFail(
                id=frame.id, code="overloaded", message="too many compute requests open"
            )
        problem = _check(frame)
        if problem is not None:
            return ComputeFail(id=frame.id, code="invalid", message=problem)
        self.open.add(frame.id)
        return GeriAsk(
            frame.id,
            user_id,
            frame.model,
            [ChatMessage(m.role, m.content) for m in frame.messages],
            frame.max_cost,
            frame.max_tokens,
            frame.key,
        )

    def forget(self, ask_id: int) -> None:
        self.open.discard(ask_id)

    def answer(self, body: GeriAnswer) -> ComputeChunk | ComputeDone | ComputeFail | None:
        """The frame for the device, or ``None`` for an ask this session did not make (or that
        ended already)."""
        if body.ask_id not in self.open:
            return None
        match body:
            case GeriChunk(ask_id=ask_id, text=text):
                return ComputeChunk(id=ask_id, text=text)
            case GeriDone():
                self.open.discard(body.ask_id)
                return ComputeDone(
                    id=body.ask_id,
                    request_id=body.request_id,
                    state=body.state,
                    provider_id=body.provider_id,
                    finish_reason=body.finish_reason,
                    prompt_tokens=body.prompt_tokens,
                    completion_tokens=body.completion_tokens,
                    cost=body.cost,
                    error=body.error,
                )
            case GeriFail(ask_id=ask_id, code=code, message=message):
                self.open.discard(ask_id)
                return ComputeFail(id=ask_id, code=code, message=message)


def _check(frame: AskFrame) -> str | None:
    """What is wrong with a compute request (the HTTP API's rules), or ``None``."""
    if not 1 <= len(frame.model) <= 100:
        return "model: 1 to 100 characters"
    if not 1 <= len(frame.messages) <= MAX_MESSAGES:
        return f"messages: 1 to {MAX_MESSAGES}"
    for message in frame.messages:
        if message.role not in ROLES:
            return "a message's role is system, user or assistant"
        if len(message.content) > MAX_CONTENT:
            return f"a message's content has at most {MAX_CONTENT} characters"
    if not 1 <= frame.max_tokens <= MAX_TOKENS:
        return f"max_tokens: 1 to {MAX_TOKENS}"
    try:
        check_cents(frame.max_cost, field="max_cost")
        check_key(frame.key)
    except Exception as exc:  # InvalidAmount, IdempotencyKeyRequired: their message says it
        return str(exc)
    return None


# ----------------------------------------------------------------------------- service/geri


class Geri(Actor):
    """``service/geri`` on one instance: runs the asks the bus hands it through this instance's
    marketplace, which settles them."""

    mailbox_capacity = 1024

    def __init__(self, marketplace: Marketplace) -> None:
        super().__init__(GERI)
        self.marketplace = marketplace
        self.served = 0
        """Asks this instance took (for tests and metrics)."""

    async def claim(self, router: Router) -> None:
        await router.serve_work(self.address, self.mailbox)

    async def handle(self, envelope: Envelope) -> None:
        if isinstance(envelope.body, GeriAsk):
            self.served += 1
            self.nursery.start_soon(self._answer, envelope.src, envelope.body)

    async def _answer(self, asker: Address, ask: GeriAsk) -> None:
        try:
            found, _created = await self.marketplace.submit(
                ask.user_id,
                model=ask.model,
                messages=ask.messages,
                max_cost=ask.max_cost,
                max_tokens=ask.max_tokens,
                key=ask.key,
            )
        except Exception as exc:
            code = getattr(exc, "code", "internal")
            message = str(exc) if hasattr(exc, "code") else "internal error"
            if not hasattr(exc, "code"):
                log.exception("geri: a compute request failed to start")
            await self._tell(asker, GeriFail(ask.ask_id, code, message[:300]))
            return
        log.info(
            "geri: request=%s asked by a device, settled by this instance",
            found.request_id,
            extra={"request": found.request_id},
        )
        async for kind, value in self.marketplace.follow(ask.user_id, found.request_id):
            if kind == "chunk":
                assert isinstance(value, str)
                if not await self._tell(asker, GeriChunk(ask.ask_id, value)):
                    return  # the asker is gone or stuck: the request goes on without it
            else:
                assert isinstance(value, ComputeRequest)
                await self._tell(asker, _done(ask.ask_id, value))

    async def _tell(self, asker: Address, body: GeriAnswer) -> bool:
        """Send to the asking session, waiting a while for room in its queue; ``False`` when
        it is gone or stayed full."""
        delay = 0.005
        with trio.move_on_after(SEND_PATIENCE_S):
            while True:
                try:
                    await self.router.send(Envelope(self.address, asker, body), activate=False)
                    return True
                except Unreachable:
                    return False
                except Overloaded:
                    await trio.sleep(delay)
                    delay = min(delay * 2, 0.5)
        with contextlib.suppress(Unreachable, Overloaded):
            failed = GeriFail(body.ask_id, "overloaded", "the device did not take the answer")
            await self.router.send(Envelope(self.address, asker, failed), activate=False)
        return False


def _done(ask_id: int, request: ComputeRequest) -> GeriDone:
    return GeriDone(
        ask_id,
        request.request_id,
        request.state,
        request.provider_id,
        request.finish_reason,
        request.usage.prompt_tokens,
        request.usage.completion_tokens,
        request.cost,
        request.error,
    )


def geri_child(marketplace: Marketplace, router: Router) -> ChildSpec:
    """The ``geri`` child: this instance's share of ``service/geri`` (a fresh actor each run)."""
    return actor_spec("geri", lambda: Geri(marketplace), router, shutdown_s=2.0)
