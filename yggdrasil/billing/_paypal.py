"""PayPal, through its REST API over :class:`httpx.AsyncClient` (PayPal's own SDK is sync only).

An OAuth2 client-credentials token, cached until shortly before it expires; Orders v2 for
payments (``AUTHORIZE`` then capture or void, or ``CAPTURE`` at once), refunds of captures,
Payouts, the Vault's payment tokens for the account check, and the webhook signature check
(``POST /v1/notifications/verify-webhook-signature``). Every POST carries our idempotency key as
``PayPal-Request-Id``; a call that failed on the network or with a 5xx is repeated with the same
key, at most ``retries`` times, within ``deadline_s`` in all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import trio

from ._providers import (
    ChargeStatus,
    MethodCheck,
    MethodKind,
    PaymentDeclined,
    PaymentInvalid,
    PaymentProviderUnavailable,
    ProviderCharge,
    ProviderName,
    ProviderPayout,
    ProviderRefund,
    check_amount,
    check_key,
    decimal_amount,
    parse_decimal_amount,
)

log = logging.getLogger(__name__)

_TOKEN_MARGIN_S = 60.0
"""A cached access token is renewed this long before PayPal says it expires."""
_DECLINES = {"INSTRUMENT_DECLINED", "PAYER_ACTION_REQUIRED", "TRANSACTION_REFUSED", "DECLINED"}
_AUTHORIZATION_STATUS: dict[str, ChargeStatus] = {
    "CREATED": "authorized",
    "PENDING": "pending",
    "CAPTURED": "succeeded",
    "PARTIALLY_CAPTURED": "succeeded",
    "VOIDED": "canceled",
    "EXPIRED": "canceled",
    "DENIED": "failed",
}
WEBHOOK_HEADERS = {
    "auth_algo": "paypal-auth-algo",
    "cert_url": "paypal-cert-url",
    "transmission_id": "paypal-transmission-id",
    "transmission_sig": "paypal-transmission-sig",
    "transmission_time": "paypal-transmission-time",
}
"""The fields of the signature check and the webhook request headers that carry them."""


class PayPalProvider:
    """PayPal with the REST app ``client_id``/``client_secret`` at ``api_base``.

    ``transport``: an httpx transport for tests; ``backoff_s``: the first pause between retries
    (doubling). :meth:`aclose` closes the HTTP client.
    """

    kinds: frozenset[MethodKind] = frozenset({"paypal"})

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        api_base: str = "https://api-m.paypal.com",
        timeout_s: float = 20.0,
        deadline_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=api_base.rstrip("/"), timeout=timeout_s, transport=transport
        )
        self._credentials = (client_id, client_secret)
        self._deadline_s = deadline_s
        self._retries = retries
        self._backoff_s = backoff_s
        self._token: tuple[str, float] | None = None
        self._token_lock = trio.Lock()
        self._test_mode = "sandbox" in api_base

    @property
    def name(self) -> ProviderName:
        return "paypal"

    @property
    def test_mode(self) -> bool:
        return self._test_mode

    # ----------------------------------------------------------------- the wire

    async def _access_token(self, *, renew: bool = False) -> str:
        async with self._token_lock:
            cached = self._token
            if cached is not None and not renew and trio.current_time() < cached[1]:
                return cached[0]
            response = await self._send(
                "POST",
                "/v1/oauth2/token",
                content=b"grant_type=client_credentials",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                auth=self._credentials,
            )
            if response.status_code != 200:
                log.error("paypal: the token request was refused (%d)", response.status_code)
                raise PaymentProviderUnavailable("the payment provider is misconfigured")
            body = response.json()
            expires_in = float(body.get("expires_in", 0))
            self._token = (
                body["access_token"],
                trio.current_time() + max(0.0, expires_in - _TOKEN_MARGIN_S),
            )
            return str(body["access_token"])

    async def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> httpx.Response:
        """One request, repeated (same headers, same key) after a network error, a timeout or a
        5xx; :class:`PaymentProviderUnavailable` when the attempts run out."""
        pause = self._backoff_s
        for attempt in range(self._retries + 1):
            if attempt:
                await trio.sleep(pause)
                pause = min(pause * 2, 5.0)
            try:
                response = await self._http.request(
                    method, path, content=content, headers=headers, auth=auth
                )
            except httpx.TransportError as exc:
                log.warning("paypal: %s %s failed: %s", method, path, type(exc).__name__)
                continue
            if response.status_code < 500:
                return response
            log.warning("paypal: %s %s answered %d", method, path, response.status_code)
        raise PaymentProviderUnavailable()

    async def _call(
        self, method: str, path: str, body: Any = None, *, key: str | None = None
    ) -> dict[str, Any]:
        """An authenticated call within the deadline; PayPal's errors as ours."""
        try:
            with trio.fail_after(self._deadline_s):
                return await self._authenticated(method, path, body, key)
        except trio.TooSlowError:
            raise PaymentProviderUnavailable("PayPal did not answer in time") from None

    async def _authenticated(
        self, method: str, path: str, body: Any, key: str | None
    ) -> dict[str, Any]:
        content = body if isinstance(body, bytes) else None
        if body is not None and content is None:
            content = json.dumps(body).encode()
        for renew in (False, True):
            headers = {
                "Authorization": f"Bearer {await self._access_token(renew=renew)}",
                "Content-Type": "application/json",
                "Prefer": "return=representation",
            }
            if key is not None:
                headers["PayPal-Request-Id"] = key
            response = await self._send(method, path, content=content, headers=headers)
            if response.status_code != 401:
                break
        if response.status_code == 204:
            return {}
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            answer = {}
        if response.status_code < 300:
            return answer
        issues = {str(d.get("issue")) for d in answer.get("details", []) if isinstance(d, dict)}
        if response.status_code == 402 or issues & _DECLINES:
            raise PaymentDeclined(f"PayPal declined it ({', '.join(sorted(issues & _DECLINES))})")
        if response.status_code in (401, 403):
            log.error("paypal: %s %s was refused (%d)", method, path, response.status_code)
            raise PaymentProviderUnavailable("the payment provider is misconfigured")
        name = answer.get("name") or "INVALID_REQUEST"
        raise PaymentInvalid(f"PayPal refused the request ({name})")

    # ----------------------------------------------------------------- payment methods

    async def verify_method(self, kind: MethodKind, token: str, *, key: str) -> MethodCheck:
        check_key(key)
        if kind != "paypal":
            raise PaymentInvalid(f"PayPal does not take {kind}")
        found = await self._call("GET", f"/v3/vault/payment-tokens/{_segment(token)}")
        account = (found.get("payment_source") or {}).get("paypal") or {}
        verified = account.get("account_status") == "VERIFIED"
        return MethodCheck(
            status="verified" if verified else "failed",
            reference=found.get("id"),
            email=account.get("email_address"),
            reason=None if verified else "account_not_verified",
            test_mode=self._test_mode,
        )

    async def confirm_micro_deposits(
        self, reference: str, amounts_cents: tuple[int, int], *, key: str
    ) -> MethodCheck:
        raise PaymentInvalid("PayPal accounts are not verified by micro-deposits")

    # ----------------------------------------------------------------- payments

    async def authorize(
        self, token: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderCharge:
        order = await self._order("AUTHORIZE", token, amount_cents, currency, key=key)
        if order.get("status") != "COMPLETED":
            order = await self._call(
                "POST", f"/v2/checkout/orders/{_segment(order['id'])}/authorize", {}, key=key + "-1"
            )
        found = _payments(order).get("authorizations") or []
        if not found:
            raise PaymentDeclined("PayPal did not authorize the payment")
        authorization = found[0]
        status = _AUTHORIZATION_STATUS.get(authorization.get("status", ""), "failed")
        if status == "failed":
            raise PaymentDeclined("PayPal denied the authorization")
        return ProviderCharge(
            reference=authorization["id"],
            refund_reference="",
            status=status,
            amount_cents=amount_cents,
            captured_cents=0,
            currency=currency,
            test_mode=self._test_mode,
        )

    async def charge(
        self, token: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderCharge:
        order = await self._order("CAPTURE", token, amount_cents, currency, key=key)
        if order.get("status") != "COMPLETED":
            order = await self._call(
                "POST", f"/v2/checkout/orders/{_segment(order['id'])}/capture", {}, key=key + "-1"
            )
        found = _payments(order).get("captures") or []
        if not found or found[0].get("status") not in ("COMPLETED", "PENDING"):
            raise PaymentDeclined("PayPal did not capture the payment")
        capture = found[0]
        return ProviderCharge(
            reference=order["id"],
            refund_reference=capture["id"],
            status="succeeded" if capture["status"] == "COMPLETED" else "pending",
            amount_cents=amount_cents,
            captured_cents=amount_cents,
            currency=currency,
            test_mode=self._test_mode,
        )

    async def _order(
        self, intent: str, token: str, amount_cents: int, currency: str, *, key: str
    ) -> dict[str, Any]:
        check_amount(amount_cents)
        check_key(key)
        body = {
            "intent": intent,
            "purchase_units": [
                {
                    "amount": {
                        "currency_code": currency.upper(),
                        "value": decimal_amount(amount_cents),
                    }
                }
            ],
            "payment_source": {"token": {"id": token, "type": "PAYMENT_METHOD_TOKEN"}},
        }
        return await self._call("POST", "/v2/checkout/orders", body, key=key)

    async def _authorization(self, reference: str) -> tuple[dict[str, Any], int, str]:
        found = await self._call("GET", f"/v2/payments/authorizations/{_segment(reference)}")
        amount = found.get("amount") or {}
        return (
            found,
            parse_decimal_amount(amount.get("value", "0")),
            amount.get("currency_code", ""),
        )

    async def capture(self, reference: str, amount_cents: int, *, key: str) -> ProviderCharge:
        check_amount(amount_cents)
        check_key(key)
        _, authorized, currency = await self._authorization(reference)
        if amount_cents > authorized:
            raise PaymentInvalid("cannot capture more than was authorized")
        capture = await self._call(
            "POST",
            f"/v2/payments/authorizations/{_segment(reference)}/capture",
            {
                "amount": {"currency_code": currency, "value": decimal_amount(amount_cents)},
                "final_capture": True,
            },
            key=key,
        )
        return ProviderCharge(
            reference=reference,
            refund_reference=capture["id"],
            status="succeeded" if capture.get("status") == "COMPLETED" else "pending",
            amount_cents=authorized,
            captured_cents=amount_cents,
            currency=currency.lower(),
            test_mode=self._test_mode,
        )

    async def cancel(self, reference: str, *, key: str) -> ProviderCharge:
        check_key(key)
        found, authorized, currency = await self._authorization(reference)
        if found.get("status") not in ("VOIDED", "EXPIRED"):
            await self._call(
                "POST", f"/v2/payments/authorizations/{_segment(reference)}/void", {}, key=key
            )
        return ProviderCharge(
            reference=reference,
            refund_reference="",
            status="canceled",
            amount_cents=authorized,
            captured_cents=0,
            currency=currency.lower(),
            test_mode=self._test_mode,
        )

    async def refund(self, reference: str, amount_cents: int, *, key: str) -> ProviderRefund:
        check_amount(amount_cents)
        check_key(key)
        found = await self._call("GET", f"/v2/payments/captures/{_segment(reference)}")
        currency = (found.get("amount") or {}).get("currency_code", "")
        refund = await self._call(
            "POST",
            f"/v2/payments/captures/{_segment(reference)}/refund",
            {"amount": {"currency_code": currency, "value": decimal_amount(amount_cents)}},
            key=key,
        )
        status = {"COMPLETED": "succeeded", "PENDING": "pending"}.get(refund.get("status", ""))
        return ProviderRefund(
            reference=refund["id"],
            status=status or "failed",  # type: ignore[arg-type]
            amount_cents=amount_cents,
            currency=currency.lower(),
            test_mode=self._test_mode,
        )

    async def payout(
        self, destination: str, amount_cents: int, currency: str, *, key: str
    ) -> ProviderPayout:
        check_amount(amount_cents)
        check_key(key)
        batch = await self._call(
            "POST",
            "/v1/payments/payouts",
            {
                "sender_batch_header": {"sender_batch_id": key},
                "items": [
                    {
                        "recipient_type": "PAYPAL_ID",
                        "receiver": destination,
                        "sender_item_id": key,
                        "amount": {
                            "currency": currency.upper(),
                            "value": decimal_amount(amount_cents),
                        },
                    }
                ],
            },
            key=key,
        )
        header = batch.get("batch_header") or {}
        status = {"SUCCESS": "paid", "DENIED": "failed", "CANCELED": "failed"}.get(
            header.get("batch_status", ""), "pending"
        )
        return ProviderPayout(
            reference=header.get("payout_batch_id", ""),
            status=status,  # type: ignore[arg-type]
            amount_cents=amount_cents,
            currency=currency,
            test_mode=self._test_mode,
        )

    # ----------------------------------------------------------------- webhooks

    async def verify_webhook(
        self, headers: Mapping[str, str], raw_body: bytes, webhook_id: str
    ) -> bool:
        """Whether PayPal vouches for a webhook: its signature headers and the raw body, sent
        back unchanged (PayPal signs the bytes it sent) with our endpoint's ``webhook_id``."""
        fields = {name: headers.get(header, "") for name, header in WEBHOOK_HEADERS.items()}
        if not all(fields.values()):
            return False
        fields["webhook_id"] = webhook_id
        head = json.dumps(fields).encode()
        body = head[:-1] + b', "webhook_event": ' + raw_body + b"}"
        answer = await self._call("POST", "/v1/notifications/verify-webhook-signature", body)
        return answer.get("verification_status") == "SUCCESS"

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self._http.aclose()


def _payments(order: dict[str, Any]) -> dict[str, Any]:
    units = order.get("purchase_units") or [{}]
    payments: dict[str, Any] = units[0].get("payments") or {}
    return payments


def _segment(value: str) -> str:
    """An id as one path segment: PayPal's ids are letters, digits and dashes."""
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise PaymentInvalid("not a PayPal id")
    return value
