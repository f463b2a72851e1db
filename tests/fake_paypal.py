"""A small local fake of the PayPal REST endpoints Yggdrasil uses: the OAuth2 token, the Vault's
payment tokens, Orders v2 (authorize, capture), authorizations (capture, void), captures
(refund), Payouts and the webhook signature check; replay by ``PayPal-Request-Id``, faults.

Vault tokens: ``PAYPAL-VERIFIED`` (a verified account), ``PAYPAL-UNVERIFIED``, ``PAYPAL-DECLINED``
(a verified account whose payments are declined). Webhook signatures: PayPal signs
``<transmission id>|<time>|<webhook id>|<CRC32 of the body>`` with its certificate; the fake
uses an HMAC with :data:`SIGNING_KEY` over the same text (see :func:`paypal_headers`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import itertools
import json
import zlib
from typing import Any

from tests.fake_http import FakeServer, Reply, Request

CLIENT_ID, CLIENT_SECRET = "fake-client", "fake-secret"
SIGNING_KEY = b"fake-paypal-signing-key"
_ACCOUNTS = {
    "PAYPAL-VERIFIED": ("buyer@example.com", "VERIFIED"),
    "PAYPAL-UNVERIFIED": ("newbie@example.com", "UNVERIFIED"),
    "PAYPAL-DECLINED": ("broke@example.com", "VERIFIED"),
}


def _error(status: int, name: str, issue: str | None = None) -> Reply:
    body: dict[str, Any] = {"name": name, "message": name.replace("_", " ").lower()}
    if issue is not None:
        body["details"] = [{"issue": issue}]
    return Reply(status, body)


def _signed_text(transmission_id: str, sent: str, webhook_id: str, body: bytes) -> bytes:
    return f"{transmission_id}|{sent}|{webhook_id}|{zlib.crc32(body)}".encode()


def paypal_headers(
    body: bytes, webhook_id: str, *, sent: datetime.datetime | None = None, transmission_id: str
) -> dict[str, str]:
    """The signature headers PayPal would send with ``body`` for the endpoint ``webhook_id``."""
    when = (sent or datetime.datetime.now(datetime.UTC)).isoformat()
    digest = hmac.new(
        SIGNING_KEY, _signed_text(transmission_id, when, webhook_id, body), hashlib.sha256
    )
    return {
        "PayPal-Auth-Algo": "SHA256withRSA",
        "PayPal-Cert-Url": "https://api.paypal.com/v1/notifications/certs/CERT-fake",
        "PayPal-Transmission-Id": transmission_id,
        "PayPal-Transmission-Sig": base64.b64encode(digest.digest()).decode(),
        "PayPal-Transmission-Time": when,
    }


class FakePayPal(FakeServer):
    idempotency_header = "paypal-request-id"
    replay_header = "paypal-replayed"

    def __init__(self, *, token_ttl_s: int = 32400) -> None:
        super().__init__()
        self.ids = itertools.count(1)
        self.token_ttl_s = token_ttl_s
        self.tokens: list[str] = []
        self.revoked: set[str] = set()
        self.orders: dict[str, dict[str, Any]] = {}
        self.authorizations: dict[str, dict[str, Any]] = {}
        self.captures: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.payouts: dict[str, dict[str, Any]] = {}

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids):06d}"

    def error(self, status: int) -> Reply:
        return _error(status, "INTERNAL_SERVER_ERROR")

    def handle(self, request: Request) -> Reply:
        if request.path == "/v1/oauth2/token":
            return self._token(request)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if bearer not in self.tokens or bearer in self.revoked:
            return Reply(401, {"error": "invalid_token", "error_description": "expired"})
        parts = request.path.strip("/").split("/")
        body = request.json()
        if request.method == "GET" and parts[:3] == ["v3", "vault", "payment-tokens"]:
            return self._vault(parts[3])
        if request.method == "GET" and parts[:3] == ["v2", "payments", "authorizations"]:
            found = self.authorizations.get(parts[3])
            return Reply(200, found) if found else _error(404, "RESOURCE_NOT_FOUND")
        if request.method == "GET" and parts[:3] == ["v2", "payments", "captures"]:
            found = self.captures.get(parts[3])
            return Reply(200, found) if found else _error(404, "RESOURCE_NOT_FOUND")
        if request.method != "POST":
            return _error(404, "NOT_FOUND")
        if parts == ["v2", "checkout", "orders"]:
            return self._order(body)
        if parts[:3] == ["v2", "checkout", "orders"] and len(parts) == 5:
            return self._complete(parts[3], parts[4])
        if parts[:3] == ["v2", "payments", "authorizations"] and len(parts) == 5:
            return self._authorization_action(parts[3], parts[4], body)
        if parts[:3] == ["v2", "payments", "captures"] and parts[4:] == ["refund"]:
            return self._refund(parts[3], body)
        if parts == ["v1", "payments", "payouts"]:
            return self._payout(body)
        if parts == ["v1", "notifications", "verify-webhook-signature"]:
            return self._verify(request.body)
        return _error(404, "NOT_FOUND")

    def _token(self, request: Request) -> Reply:
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return Reply(401, {"error": "invalid_client"})
        if request.form().get("grant_type") != "client_credentials":
            return Reply(400, {"error": "unsupported_grant_type"})
        token = self._id("A21AA")
        self.tokens.append(token)
        return Reply(
            200,
            {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl_s},
        )

    def _vault(self, token: str) -> Reply:
        account = _ACCOUNTS.get(token)
        if account is None:
            return _error(404, "RESOURCE_NOT_FOUND")
        email, status = account
        return Reply(
            200,
            {
                "id": token,
                "payment_source": {"paypal": {"email_address": email, "account_status": status}},
            },
        )

    def _order(self, body: dict[str, Any]) -> Reply:
        token = body.get("payment_source", {}).get("token", {}).get("id")
        if token not in _ACCOUNTS:
            return _error(422, "UNPROCESSABLE_ENTITY", "INVALID_PAYMENT_SOURCE")
        if token == "PAYPAL-DECLINED":
            return _error(422, "UNPROCESSABLE_ENTITY", "INSTRUMENT_DECLINED")
        order = {
            "id": self._id("ORDER"),
            "intent": body["intent"],
            "status": "APPROVED",
            "purchase_units": [{"amount": body["purchase_units"][0]["amount"]}],
        }
        self.orders[order["id"]] = order
        return Reply(201, order)

    def _complete(self, order_id: str, action: str) -> Reply:
        order = self.orders.get(order_id)
        if order is None:
            return _error(404, "RESOURCE_NOT_FOUND")
        if order["status"] != "APPROVED":
            return _error(422, "UNPROCESSABLE_ENTITY", "ORDER_ALREADY_COMPLETED")
        amount = order["purchase_units"][0]["amount"]
        if action == "authorize" and order["intent"] == "AUTHORIZE":
            made = {"id": self._id("AUTH"), "status": "CREATED", "amount": amount}
            self.authorizations[made["id"]] = made
            order["purchase_units"][0]["payments"] = {"authorizations": [made]}
        elif action == "capture" and order["intent"] == "CAPTURE":
            made = {"id": self._id("CAPTURE"), "status": "COMPLETED", "amount": amount}
            self.captures[made["id"]] = made
            order["purchase_units"][0]["payments"] = {"captures": [made]}
        else:
            return _error(422, "UNPROCESSABLE_ENTITY", "ACTION_DOES_NOT_MATCH_INTENT")
        order["status"] = "COMPLETED"
        return Reply(201, order)

    def _authorization_action(
        self, authorization_id: str, action: str, body: dict[str, Any]
    ) -> Reply:
        found = self.authorizations.get(authorization_id)
        if found is None:
            return _error(404, "RESOURCE_NOT_FOUND")
        if found["status"] != "CREATED":
            return _error(422, "UNPROCESSABLE_ENTITY", "AUTHORIZATION_ALREADY_COMPLETED")
        if action == "void":
            found["status"] = "VOIDED"
            return Reply(204)
        if action == "capture":
            amount = body.get("amount") or found["amount"]
            if _cents(amount["value"]) > _cents(found["amount"]["value"]):
                return _error(422, "UNPROCESSABLE_ENTITY", "MAX_CAPTURE_AMOUNT_EXCEEDED")
            capture = {"id": self._id("CAPTURE"), "status": "COMPLETED", "amount": amount}
            self.captures[capture["id"]] = capture
            found["status"] = "CAPTURED"
            return Reply(201, capture)
        return _error(404, "NOT_FOUND")

    def _refund(self, capture_id: str, body: dict[str, Any]) -> Reply:
        capture = self.captures.get(capture_id)
        if capture is None:
            return _error(404, "RESOURCE_NOT_FOUND")
        amount = body.get("amount") or capture["amount"]
        done = sum(
            _cents(r["amount"]["value"])
            for r in self.refunds.values()
            if r["capture"] == capture_id
        )
        if done + _cents(amount["value"]) > _cents(capture["amount"]["value"]):
            return _error(422, "UNPROCESSABLE_ENTITY", "REFUND_AMOUNT_EXCEEDED")
        refund = {
            "id": self._id("REFUND"),
            "status": "COMPLETED",
            "amount": amount,
            "capture": capture_id,
        }
        self.refunds[refund["id"]] = refund
        return Reply(201, refund)

    def _payout(self, body: dict[str, Any]) -> Reply:
        batch = {
            "batch_header": {
                "payout_batch_id": self._id("BATCH"),
                "batch_status": "PENDING",
                "sender_batch_header": body["sender_batch_header"],
            },
            "items": body["items"],
        }
        self.payouts[batch["batch_header"]["payout_batch_id"]] = batch
        return Reply(201, batch)

    def _verify(self, raw: bytes) -> Reply:
        # The event's raw bytes, exactly as the webhook carried them, follow "webhook_event": .
        head, marker, rest = raw.partition(b'"webhook_event": ')
        if not marker or not rest.endswith(b"}"):
            return _error(400, "INVALID_REQUEST")
        fields = json.loads(head.rstrip(b", ") + b"}")
        event = rest[:-1]
        expected = hmac.new(
            SIGNING_KEY,
            _signed_text(
                fields["transmission_id"], fields["transmission_time"], fields["webhook_id"], event
            ),
            hashlib.sha256,
        )
        good = hmac.compare_digest(
            base64.b64encode(expected.digest()).decode(), fields["transmission_sig"]
        )
        return Reply(200, {"verification_status": "SUCCESS" if good else "FAILURE"})


def _cents(value: str) -> int:
    whole, _, fraction = value.partition(".")
    return int(whole) * 100 + int(fraction.ljust(2, "0"))
