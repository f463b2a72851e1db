"""Webhooks from the payment providers: verified, deduplicated, applied in any order, dispatched.

Verification is over the raw request body, before anything is parsed: Stripe's ``Stripe-Signature``
(HMAC-SHA256 of ``<t>.<body>``, checked by ``stripe.Webhook.construct_event``) and PayPal's
signature headers (checked by PayPal's own verify-webhook-signature call). The signed time must
be within the tolerance of now in *both* directions (the ``stripe`` package checks only the past).

Each event is processed in one transaction that first inserts its id: the primary key is the
lock, so an event delivered twice, to one instance or to several at once, is processed once (a
concurrent duplicate waits for the first transaction and then finds the id). Events carry the
state of their object (a PaymentIntent, a SetupIntent, an authorization); the latest known state
of each object is kept, and an event changes it only if it is newer and the state is not final:
a ``payment_intent.succeeded`` that arrives after the ``canceled`` one is recorded, not applied.
Handlers registered with :meth:`Webhooks.on` run inside that transaction only for an applied
event: its effects commit with the event id, or neither does.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

import msgspec
import stripe

from .._errors import YggdrasilError
from .._ids import now_ms
from ..store import Database, Tx

log = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 256 * 1024
"""A provider's event is a few kilobytes; a larger body is refused before it is parsed."""

_FINAL = {
    "succeeded",
    "canceled",
    "VOIDED",
    "EXPIRED",
    "DENIED",
    "DECLINED",
    "FAILED",
    "REFUNDED",
    "CAPTURED",
}
"""Object states no later event changes (Stripe's lower case, PayPal's upper case)."""

_STRIPE_KINDS = {
    "setup_intent.succeeded": "payment_method.verified",
    "setup_intent.setup_failed": "payment_method.failed",
    "setup_intent.canceled": "payment_method.failed",
    "payment_intent.amount_capturable_updated": "payment.authorized",
    "payment_intent.succeeded": "payment.succeeded",
    "payment_intent.canceled": "payment.canceled",
    "payment_intent.payment_failed": "payment.failed",
    "charge.refunded": "refund.succeeded",
    "payout.paid": "payout.paid",
    "payout.failed": "payout.failed",
}
_PAYPAL_KINDS = {
    "VAULT.PAYMENT-TOKEN.CREATED": "payment_method.verified",
    "PAYMENT.AUTHORIZATION.CREATED": "payment.authorized",
    "PAYMENT.AUTHORIZATION.VOIDED": "payment.canceled",
    "PAYMENT.CAPTURE.COMPLETED": "payment.succeeded",
    "PAYMENT.CAPTURE.DENIED": "payment.failed",
    "PAYMENT.CAPTURE.REFUNDED": "refund.succeeded",
    "PAYMENT.PAYOUTSBATCH.SUCCESS": "payout.paid",
    "PAYMENT.PAYOUTSBATCH.DENIED": "payout.failed",
}


class WebhookRefused(YggdrasilError):
    """Not a genuine event of the provider (signature, time or shape): nothing was recorded."""

    status = 400
    code = "webhook_refused"
    default_message = "the webhook's signature does not verify"


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One provider event, as the handlers see it."""

    provider: str
    event_id: str
    type: str
    """The provider's own type (``payment_intent.succeeded``, ``PAYMENT.CAPTURE.COMPLETED``)."""
    kind: str | None
    """Ours, the same for every provider (``payment_method.verified``, ``payment.succeeded``,
    ...), or ``None`` for a type we do not name."""
    created: int
    """When the provider made the event (seconds since the epoch)."""
    object_type: str
    object_id: str
    state: str
    """The object's status as the event carries it (empty when it has none)."""
    data: dict[str, Any]
    """The object, as sent."""
    test_mode: bool


class WebhookOutcome(msgspec.Struct, frozen=True):
    event_id: str
    result: Literal["processed", "duplicate", "stale"]
    """``stale``: recorded, but the object was already in a newer or final state."""


Handler = Callable[[Tx, WebhookEvent], Awaitable[None]]
"""Runs inside the event's transaction: it may only await the ``Tx`` (a unit of work)."""


class SignatureCheck(Protocol):
    async def verify_webhook(
        self, headers: Mapping[str, str], raw_body: bytes, webhook_id: str
    ) -> bool: ...


class Webhooks:
    """Receives the providers' webhooks over a :class:`Database`.

    ``stripe_secret``: the endpoint's signing secret (empty: Stripe's webhook is off);
    ``paypal``/``paypal_webhook_id``: who checks PayPal's signatures, and the endpoint's id
    (either missing: PayPal's webhook is off).
    """

    def __init__(
        self,
        db: Database,
        *,
        stripe_secret: str = "",
        paypal: SignatureCheck | None = None,
        paypal_webhook_id: str = "",
        tolerance_s: int = 300,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.db = db
        self._stripe_secret = stripe_secret
        self._paypal = paypal
        self._paypal_webhook_id = paypal_webhook_id
        self._tolerance_s = tolerance_s
        self._clock = clock or (lambda: now_ms() / 1000)
        self._handlers: dict[str, list[Handler]] = {}

    @property
    def stripe_enabled(self) -> bool:
        return bool(self._stripe_secret)

    @property
    def paypal_enabled(self) -> bool:
        return self._paypal is not None and bool(self._paypal_webhook_id)

    def on(self, kind: str, handler: Handler) -> None:
        """Run ``handler`` for every applied event of ``kind``: one of ours
        (``payment_method.verified``) or a provider's own type (``charge.dispute.created``)."""
        self._handlers.setdefault(kind, []).append(handler)

    def _check_time(self, signed_at: float) -> None:
        if abs(self._clock() - signed_at) > self._tolerance_s:
            raise WebhookRefused("the webhook's timestamp is outside the tolerance")

    # ----------------------------------------------------------------- Stripe

    async def receive_stripe(self, raw_body: bytes, signature: str | None) -> WebhookOutcome:
        """Verify and process one Stripe delivery; :class:`WebhookRefused` if it is not one."""
        if not signature:
            raise WebhookRefused("the Stripe-Signature header is missing")
        if len(raw_body) > MAX_WEBHOOK_BYTES:
            raise WebhookRefused("the webhook body is too large")
        stamps = [part[2:] for part in signature.split(",") if part.strip().startswith("t=")]
        if len(stamps) != 1 or not stamps[0].strip().isdigit():
            raise WebhookRefused("the Stripe-Signature header has no timestamp")
        self._check_time(int(stamps[0]))  # the package's check looks only into the past
        try:
            payload = raw_body.decode()
            event = stripe.Webhook.construct_event(
                payload, signature, self._stripe_secret, tolerance=self._tolerance_s
            )
        except (stripe.SignatureVerificationError, ValueError, UnicodeDecodeError):
            raise WebhookRefused() from None
        return await self.process(_stripe_event(event.to_dict()))

    # ----------------------------------------------------------------- PayPal

    async def receive_paypal(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookOutcome:
        """Verify (through PayPal) and process one PayPal delivery; :class:`WebhookRefused` if
        it is not one. ``headers``: the request's, with lower-case names."""
        if self._paypal is None or not self._paypal_webhook_id:
            raise WebhookRefused("PayPal webhooks are not configured")
        if len(raw_body) > MAX_WEBHOOK_BYTES:
            raise WebhookRefused("the webhook body is too large")
        try:
            sent = datetime.datetime.fromisoformat(headers.get("paypal-transmission-time", ""))
        except ValueError:
            raise WebhookRefused("the PayPal-Transmission-Time header is missing") from None
        if sent.tzinfo is None:
            raise WebhookRefused("the PayPal-Transmission-Time header has no time zone")
        self._check_time(sent.timestamp())
        try:
            body = json.loads(raw_body)
        except ValueError:
            raise WebhookRefused("the webhook body is not JSON") from None
        if not isinstance(body, dict):
            raise WebhookRefused("the webhook body is not an event")
        if not await self._paypal.verify_webhook(headers, raw_body, self._paypal_webhook_id):
            raise WebhookRefused()
        return await self.process(_paypal_event(body))

    # ----------------------------------------------------------------- processing

    async def process(self, event: WebhookEvent) -> WebhookOutcome:
        """Record ``event`` once and, if it moves its object forward, run its handlers, all in
        one transaction (see the module)."""
        handlers = [*self._handlers.get(event.type, ())]
        if event.kind is not None and event.kind != event.type:
            handlers += self._handlers.get(event.kind, ())
        lock = " FOR UPDATE" if self.db.dialect == "postgres" else ""

        async def work(tx: Tx) -> WebhookOutcome:
            inserted = await tx.execute(
                "INSERT INTO payment_webhook_events (provider, event_id, event_type, object_id,"
                " applied, received_at) VALUES ($1, $2, $3, $4, 0, $5)"
                " ON CONFLICT (provider, event_id) DO NOTHING",
                event.provider,
                event.event_id,
                event.type,
                event.object_id,
                now_ms(),
            )
            if inserted != 1:
                return WebhookOutcome(event.event_id, "duplicate")
            if not await _advance(tx, event, lock):
                return WebhookOutcome(event.event_id, "stale")
            await tx.execute(
                "UPDATE payment_webhook_events SET applied = 1"
                " WHERE provider = $1 AND event_id = $2",
                event.provider,
                event.event_id,
            )
            for handler in handlers:
                await handler(tx, event)
            return WebhookOutcome(event.event_id, "processed")

        outcome = await self.db.write(work)
        log.info(
            "webhook %s %s (%s): %s", event.provider, event.event_id, event.type, outcome.result
        )
        return outcome


async def _advance(tx: Tx, event: WebhookEvent, lock: str) -> bool:
    """Move the event's object to the event's state, unless the object is in a final state or
    the event is older than the one that set its state; whether it moved."""
    if not event.object_id or not event.state:
        return True
    select = (
        "SELECT state, event_created FROM payment_provider_objects"
        f" WHERE provider = $1 AND object_id = $2{lock}"
    )
    current = await tx.fetchrow(select, event.provider, event.object_id)
    if current is None:
        inserted = await tx.execute(
            "INSERT INTO payment_provider_objects (provider, object_id, object_type, state,"
            " event_created, updated_at) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (provider, object_id) DO NOTHING",
            event.provider,
            event.object_id,
            event.object_type,
            event.state,
            event.created,
            now_ms(),
        )
        if inserted == 1:
            return True
        current = await tx.fetchrow(select, event.provider, event.object_id)
        assert current is not None
    if current["state"] in _FINAL or event.created < current["event_created"]:
        return False
    if event.state == current["state"]:
        return False
    await tx.execute(
        "UPDATE payment_provider_objects SET state = $3, event_created = $4, updated_at = $5"
        " WHERE provider = $1 AND object_id = $2",
        event.provider,
        event.object_id,
        event.state,
        event.created,
        now_ms(),
    )
    return True


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _stripe_event(event: dict[str, Any]) -> WebhookEvent:
    data = (event.get("data") or {}).get("object") or {}
    if not isinstance(data, dict) or not _text(event.get("id")) or not _text(event.get("type")):
        raise WebhookRefused("the webhook body is not a Stripe event")
    created = event.get("created")
    return WebhookEvent(
        provider="stripe",
        event_id=event["id"],
        type=event["type"],
        kind=_STRIPE_KINDS.get(event["type"]),
        created=created if isinstance(created, int) else 0,
        object_type=_text(data.get("object")),
        object_id=_text(data.get("id")),
        state=_text(data.get("status")),
        data=data,
        test_mode=not event.get("livemode", False),
    )


def _paypal_event(event: dict[str, Any]) -> WebhookEvent:
    resource = event.get("resource") or {}
    kind = _text(event.get("event_type"))
    if not isinstance(resource, dict) or not _text(event.get("id")) or not kind:
        raise WebhookRefused("the webhook body is not a PayPal event")
    try:
        created = int(datetime.datetime.fromisoformat(_text(event.get("create_time"))).timestamp())
    except ValueError:
        created = 0
    state = _text(resource.get("status"))
    if not state and kind == "VAULT.PAYMENT-TOKEN.CREATED":
        state = "CREATED"
    return WebhookEvent(
        provider="paypal",
        event_id=event["id"],
        type=kind,
        kind=_PAYPAL_KINDS.get(kind),
        created=created,
        object_type=_text(event.get("resource_type")),
        object_id=_text(resource.get("id")),
        state=state,
        data=resource,
        test_mode=False,
    )
