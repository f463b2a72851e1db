"""A small local fake of the Stripe API endpoints Yggdrasil uses (there is no stripe-mock here):
PaymentIntents (manual capture, capture, cancel), refunds, SetupIntents with micro-deposits,
PaymentMethods, Connect transfers; Stripe-shaped JSON, replay by ``Idempotency-Key``, faults.

Test payment methods: ``pm_card_visa`` (verifies, pays), ``pm_card_chargeDeclined`` (declined
with a 402 ``card_error``), ``pm_sepa_debit`` (a SetupIntent that waits for micro-deposits of
32 and 45 cents). Connected accounts are ``acct_...``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from typing import Any

from tests.fake_http import FakeServer, Reply, Request

MICRO_DEPOSITS = (32, 45)
_METHODS: dict[str, dict[str, Any]] = {
    "pm_card_visa": {
        "type": "card",
        "card": {"brand": "visa", "last4": "4242", "exp_month": 8, "exp_year": 2031},
    },
    "pm_card_chargeDeclined": {
        "type": "card",
        "card": {"brand": "visa", "last4": "0002", "exp_month": 8, "exp_year": 2031},
    },
    "pm_sepa_debit": {"type": "sepa_debit", "sepa_debit": {"country": "AT", "last4": "3201"}},
}


def _invalid(message: str, code: str = "resource_missing", status: int = 400) -> Reply:
    return Reply(
        status, {"error": {"type": "invalid_request_error", "code": code, "message": message}}
    )


def _declined() -> Reply:
    return Reply(
        402,
        {
            "error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
                "message": "Your card was declined.",
            }
        },
    )


class FakeStripe(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.ids = itertools.count(1)
        self.intents: dict[str, dict[str, Any]] = {}
        self.setup_intents: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.transfers: dict[str, dict[str, Any]] = {}

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids)}"

    def handle(self, request: Request) -> Reply:
        parts = request.path.strip("/").split("/")
        form = request.form()
        if request.method == "GET" and parts[:2] == ["v1", "payment_methods"] and len(parts) == 3:
            found = _METHODS.get(parts[2])
            if found is None:
                return _invalid(f"No such PaymentMethod: '{parts[2]}'")
            return Reply(200, {"id": parts[2], "object": "payment_method", **found})
        if request.method != "POST":
            return _invalid(f"Unrecognized request URL ({request.method}: {request.path})")
        if parts == ["v1", "setup_intents"]:
            return self._setup(form)
        if len(parts) == 4 and parts[1] == "setup_intents" and parts[3] == "verify_microdeposits":
            return self._microdeposits(parts[2], form)
        if parts == ["v1", "payment_intents"]:
            return self._payment(form)
        if len(parts) == 4 and parts[1] == "payment_intents":
            return self._intent_action(parts[2], parts[3], form)
        if parts == ["v1", "refunds"]:
            return self._refund(form)
        if parts == ["v1", "transfers"]:
            return self._transfer(form)
        return _invalid(f"Unrecognized request URL (POST: {request.path})")

    def _setup(self, form: dict[str, str]) -> Reply:
        method = form.get("payment_method", "")
        if method not in _METHODS:
            return _invalid(f"No such PaymentMethod: '{method}'")
        intent: dict[str, Any] = {
            "id": self._id("seti"),
            "object": "setup_intent",
            "payment_method": method,
            "status": "succeeded",
            "next_action": None,
            "last_setup_error": None,
        }
        if method == "pm_card_chargeDeclined":  # confirm=true: the decline is the answer
            intent["status"] = "requires_payment_method"
            intent["last_setup_error"] = {"type": "card_error", "code": "card_declined"}
            self.setup_intents[intent["id"]] = intent
            return _declined()
        if method == "pm_sepa_debit":
            intent["status"] = "requires_action"
            intent["next_action"] = {
                "type": "verify_with_microdeposits",
                "verify_with_microdeposits": {"microdeposit_type": "amounts"},
            }
        self.setup_intents[intent["id"]] = intent
        return Reply(200, intent)

    def _microdeposits(self, intent_id: str, form: dict[str, str]) -> Reply:
        intent = self.setup_intents.get(intent_id)
        if intent is None:
            return _invalid(f"No such setupintent: '{intent_id}'")
        amounts = sorted(int(v) for k, v in form.items() if k.startswith("amounts["))
        if amounts != sorted(MICRO_DEPOSITS):
            return _invalid(
                "The amounts provided do not match the amounts that were sent to the account.",
                code="payment_method_microdeposit_verification_amounts_mismatch",
            )
        intent.update(status="succeeded", next_action=None)
        return Reply(200, intent)

    def _payment(self, form: dict[str, str]) -> Reply:
        method = form.get("payment_method", "")
        if method not in _METHODS:
            return _invalid(f"No such PaymentMethod: '{method}'")
        if method == "pm_card_chargeDeclined":
            return _declined()
        amount, manual = int(form["amount"]), form.get("capture_method") == "manual"
        intent: dict[str, Any] = {
            "id": self._id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "currency": form["currency"],
            "capture_method": "manual" if manual else "automatic",
            "status": "requires_capture" if manual else "succeeded",
            "amount_capturable": amount if manual else 0,
            "amount_received": 0 if manual else amount,
            "latest_charge": self._id("ch"),
            "payment_method": method,
        }
        self.intents[intent["id"]] = intent
        return Reply(200, intent)

    def _intent_action(self, intent_id: str, action: str, form: dict[str, str]) -> Reply:
        intent = self.intents.get(intent_id)
        if intent is None:
            return _invalid(f"No such payment_intent: '{intent_id}'")
        if intent["status"] != "requires_capture":
            return _invalid(
                f"This PaymentIntent could not be {action}d: it is {intent['status']}.",
                code="payment_intent_unexpected_state",
            )
        if action == "capture":
            amount = int(form.get("amount_to_capture", intent["amount_capturable"]))
            if amount > intent["amount_capturable"]:
                return _invalid("amount_to_capture is too large", code="amount_too_large")
            intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
            return Reply(200, intent)
        if action == "cancel":
            intent.update(status="canceled", amount_capturable=0)
            return Reply(200, intent)
        return _invalid(f"Unrecognized request URL (POST: {action})")

    def _refund(self, form: dict[str, str]) -> Reply:
        intent = self.intents.get(form.get("payment_intent", ""))
        if intent is None:
            return _invalid("No such payment_intent")
        refunded = sum(
            r["amount"] for r in self.refunds.values() if r["payment_intent"] == intent["id"]
        )
        amount = int(form.get("amount", intent["amount_received"] - refunded))
        if refunded + amount > intent["amount_received"]:
            return _invalid(
                "Refund amount is greater than unrefunded amount", code="amount_too_large"
            )
        refund = {
            "id": self._id("re"),
            "object": "refund",
            "status": "succeeded",
            "amount": amount,
            "currency": intent["currency"],
            "payment_intent": intent["id"],
            "charge": intent["latest_charge"],
        }
        self.refunds[refund["id"]] = refund
        return Reply(200, refund)

    def _transfer(self, form: dict[str, str]) -> Reply:
        destination = form.get("destination", "")
        if not destination.startswith("acct_"):
            return _invalid(f"No such destination: '{destination}'")
        transfer: dict[str, Any] = {
            "id": self._id("tr"),
            "object": "transfer",
            "amount": int(form["amount"]),
            "currency": form["currency"],
            "destination": destination,
            "reversed": False,
        }
        self.transfers[transfer["id"]] = transfer
        return Reply(200, transfer)


def stripe_event(
    event_type: str, obj: dict[str, Any], *, event_id: str, created: int | None = None
) -> bytes:
    """A Stripe event's body, as Stripe sends it."""
    event = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "api_version": "2026-10-28.endive",
        "data": {"object": obj},
    }
    return json.dumps(event).encode()


def stripe_signature(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload`` (HMAC-SHA256 of
    ``<t>.<payload>``)."""
    t = int(time.time()) if timestamp is None else timestamp
    signed = f"{t}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"
