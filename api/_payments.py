"""Payments: the caller's payment methods, the enabled providers, and the providers' webhooks.

Method routes are the account's own (a device's token may not call them; another user's method
id answers 404 like a missing one). Their bodies are decoded strictly (no number as text, no
float for an integer) and refused whole when they contain a card number or an IBAN anywhere:
only the provider's tokens come here. The webhooks are public routes: the provider's signature
over the raw body is their authentication, and their bodies are bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import msgspec
from quart import Quart, Response, request
from quart_schema import DataSource, tag, validate_response
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from yggdrasil import Invalid, NotFound
from yggdrasil.billing import MAX_WEBHOOK_BYTES, NewMethod, Payments, card_data_in

from ._auth import Guard, errors
from ._models import convert
from ._openapi import no_content
from ._payments_models import (
    DefaultIn,
    PaymentMethodIn,
    PaymentMethodList,
    PaymentMethodOut,
    ProviderList,
    ProviderOut,
    VerifyMethodIn,
    WebhookAnswer,
)

F = TypeVar("F", bound=Callable[..., Any])
_MAX_DEPTH = 32


class CardDataRefused(Invalid):
    code = "card_data_refused"
    default_message = "send the payment provider's token, never card numbers or IBANs"


class BodyInvalid(Invalid):
    code = "validation_error"


def _card_data(value: Any, depth: int = 0) -> str | None:
    """A card number or IBAN anywhere in a decoded JSON value (keys, strings, numbers)."""
    if depth > _MAX_DEPTH:
        raise BodyInvalid("the request body is nested too deeply")
    if isinstance(value, str):
        return card_data_in(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return card_data_in(str(value))
    if isinstance(value, dict):
        for key, item in value.items():
            found = card_data_in(key) or _card_data(item, depth + 1)
            if found:
                return found
    if isinstance(value, list):
        for item in value:
            found = _card_data(item, depth + 1)
            if found:
                return found
    return None


def strict_body(model: type[msgspec.Struct]) -> Callable[[F], F]:
    """Decode the JSON body into ``model`` strictly and pass it as ``data``; an empty body is
    the model's defaults. A body with card data is 422 ``card_data_refused``, whatever else is
    wrong with it; a body of the wrong shape 422 ``validation_error``; not JSON, 400."""

    def decorate(handler: F) -> F:
        setattr(handler, QUART_SCHEMA_REQUEST_ATTRIBUTE, (model, DataSource.JSON))

        @wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            raw = await request.get_data(True, False, False)
            if not raw.strip():
                try:
                    data = model()
                except TypeError:
                    raise BodyInvalid("a JSON body is required") from None
                return await handler(*args, data=data, **kwargs)
            try:
                value = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                raise BadRequest("the request body is not valid JSON") from None
            found = _card_data(value)
            if found is not None:
                raise CardDataRefused(
                    f"the request contains {found}: send the payment provider's token instead;"
                    " nothing was stored"
                )
            try:
                data = msgspec.convert(value, model, strict=True)
            except msgspec.ValidationError as exc:
                raise BodyInvalid(str(exc)) from None
            return await handler(*args, data=data, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


async def _webhook_body() -> bytes:
    length = request.content_length
    if length is not None and length > MAX_WEBHOOK_BYTES:
        raise RequestEntityTooLarge(f"a webhook body is limited to {MAX_WEBHOOK_BYTES} bytes")
    raw = await request.get_data(True, False, False)
    if len(raw) > MAX_WEBHOOK_BYTES:
        raise RequestEntityTooLarge(f"a webhook body is limited to {MAX_WEBHOOK_BYTES} bytes")
    return raw


def install(app: Quart, guard: Guard) -> None:
    def payments() -> Payments:
        return guard.domain().payments

    @app.get("/api/v1/payments/providers")
    @tag(["payments"])
    @validate_response(ProviderList, 200)
    @errors(503)
    async def list_providers() -> ProviderList:
        """The enabled payment providers, and whether they are in test mode (the embedded
        sandbox always is: no money moves)."""
        providers = payments().providers
        items = [
            ProviderOut(name, provider.test_mode, sorted(provider.kinds))
            for name, provider in providers.items()
        ]
        return ProviderList(items, all(item.test_mode for item in items))

    @app.get("/api/v1/payments/methods")
    @tag(["payments"])
    @validate_response(PaymentMethodList, 200)
    @errors(503)
    async def list_methods() -> PaymentMethodList:
        """The caller's payment methods, oldest first: display data only (never the token)."""
        methods = await payments().methods.list(guard.principal().scope)
        return PaymentMethodList([convert(m, PaymentMethodOut) for m in methods])

    @app.post("/api/v1/payments/methods")
    @tag(["payments"])
    @strict_body(PaymentMethodIn)
    @validate_response(PaymentMethodOut, 201)
    @errors(400, 409, 413, 422, 503)
    async def add_method(data: PaymentMethodIn) -> tuple[PaymentMethodOut, int]:
        """Add a payment method by its provider's token; the provider verifies it at once.

        ``status`` ``verified`` (a card or PayPal account that passed the provider's check),
        ``failed`` (declined), or ``pending``: a SEPA account waits for its holder to confirm
        the two micro-deposits (``needs: confirm_micro_deposits``), and a method whose
        provider did not answer can be verified again (``needs: verify_again``). The first
        verified method for a purpose becomes the default. 409 when the token is stored
        already; 422 ``card_data_refused`` for a card number or IBAN anywhere in the body.
        """
        new = NewMethod(
            kind=data.kind,
            token=data.token,
            payer="payer" in data.purposes,
            payout="payout" in data.purposes,
            provider=data.provider,
            label=data.label,
        )
        method = await payments().methods.add(guard.principal().scope, new)
        return convert(method, PaymentMethodOut), 201

    @app.get("/api/v1/payments/methods/<method_id>")
    @tag(["payments"])
    @validate_response(PaymentMethodOut, 200)
    @errors(404, 503)
    async def get_method(method_id: str) -> PaymentMethodOut:
        method = await payments().methods.get(guard.principal().scope, method_id)
        return convert(method, PaymentMethodOut)  # type: ignore[no-any-return]

    @app.delete("/api/v1/payments/methods/<method_id>")
    @tag(["payments"])
    @no_content
    @errors(404, 503)
    async def delete_method(method_id: str) -> Response:
        """Forget a payment method and its token; it is no longer a default."""
        await payments().methods.delete(guard.principal().scope, method_id)
        return Response(b"", status=204)

    @app.post("/api/v1/payments/methods/<method_id>/default")
    @tag(["payments"])
    @strict_body(DefaultIn)
    @validate_response(PaymentMethodOut, 200)
    @errors(400, 404, 409, 413, 422, 503)
    async def set_default(method_id: str, data: DefaultIn) -> PaymentMethodOut:
        """Make a verified method the default for paying (``purpose: payer``, the default) or
        for payouts; 409 ``not_verified`` for a method that is not verified."""
        method = await payments().methods.set_default(
            guard.principal().scope, method_id, data.purpose
        )
        return convert(method, PaymentMethodOut)  # type: ignore[no-any-return]

    @app.post("/api/v1/payments/methods/<method_id>/verify")
    @tag(["payments"])
    @strict_body(VerifyMethodIn)
    @validate_response(PaymentMethodOut, 200)
    @errors(400, 402, 404, 413, 422, 503)
    async def verify_method(method_id: str, data: VerifyMethodIn) -> PaymentMethodOut:
        """Verify a method again, or confirm a SEPA account's micro-deposits with
        ``amounts_cents``. Wrong amounts answer 422 ``micro_deposits_mismatch`` with the
        attempts left; after the last one the method is ``failed``."""
        amounts = data.amounts_cents
        method = await payments().methods.verify(
            guard.principal().scope,
            method_id,
            None if amounts is None else (amounts[0], amounts[1]),
        )
        return convert(method, PaymentMethodOut)  # type: ignore[no-any-return]

    @app.post("/api/v1/payments/webhooks/stripe")
    @tag(["payments"])
    @validate_response(WebhookAnswer, 200)
    @errors(400, 404, 413, 503)
    async def stripe_webhook() -> WebhookAnswer:
        """Stripe's events (configure this URL and ``payments.stripe_webhook_secret``).

        Authenticated by the ``Stripe-Signature`` header over the raw body, signed within
        ``payments.webhook_tolerance_s`` of now in either direction; 400 ``webhook_refused``
        otherwise, 404 when no secret is configured. An event delivered again answers
        ``duplicate`` and changes nothing."""
        webhooks = payments().webhooks
        if not webhooks.stripe_enabled:
            raise NotFound()
        raw = await _webhook_body()
        outcome = await webhooks.receive_stripe(raw, request.headers.get("Stripe-Signature"))
        return WebhookAnswer(outcome.event_id, outcome.result)

    @app.post("/api/v1/payments/webhooks/paypal")
    @tag(["payments"])
    @validate_response(WebhookAnswer, 200)
    @errors(400, 404, 413, 503)
    async def paypal_webhook() -> WebhookAnswer:
        """PayPal's events (configure this URL; its id goes in ``payments.paypal_webhook_id``).

        Authenticated by PayPal's signature headers, checked by PayPal over the raw body, sent
        within ``payments.webhook_tolerance_s`` of now; 400 ``webhook_refused`` otherwise, 404
        when PayPal is not configured."""
        webhooks = payments().webhooks
        if not webhooks.paypal_enabled:
            raise NotFound()
        raw = await _webhook_body()
        headers = {name.lower(): value for name, value in request.headers.items()}
        outcome = await webhooks.receive_paypal(raw, headers)
        return WebhookAnswer(outcome.event_id, outcome.result)
