"""The Stripe provider (the real ``stripe`` package over httpx) and the PayPal provider (httpx)
against local fakes on loopback: every operation, the idempotency key on every call, retries
with the same key after timeouts and 5xx, and errors that surface as ours."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import stripe
import trio
import trio.lowlevel

from benchmarks._harness import yggdrasil_command
from tests.fake_http import Fault
from tests.fake_paypal import CLIENT_ID, CLIENT_SECRET, FakePayPal
from tests.fake_stripe import FakeStripe
from yggdrasil.billing import (
    PaymentDeclined,
    PaymentInvalid,
    PaymentProviderUnavailable,
    PayPalProvider,
    SandboxProvider,
    StripeProvider,
)


class NoBackoff(stripe.HTTPXClient):
    """Retries without the client's pause (at least 0.5 s each), which only costs test time."""

    async def sleep_async(self, secs: float) -> None:
        await trio.lowlevel.checkpoint()


@pytest.fixture
async def fake_stripe(nursery: trio.Nursery) -> FakeStripe:
    fake = FakeStripe()
    await nursery.start(fake.serve)
    return fake


@pytest.fixture
async def fake_paypal(nursery: trio.Nursery) -> FakePayPal:
    fake = FakePayPal()
    await nursery.start(fake.serve)
    return fake


def make_stripe(
    fake: FakeStripe, *, timeout_s: float = 5.0, deadline_s: float = 20.0, retries: int = 2
) -> StripeProvider:
    return StripeProvider(
        "sk_test_fake",
        api_base=fake.url,
        deadline_s=deadline_s,
        retries=retries,
        http_client=NoBackoff(timeout=timeout_s),
    )


@pytest.fixture
async def stripe_provider(fake_stripe: FakeStripe) -> AsyncIterator[StripeProvider]:
    provider = make_stripe(fake_stripe)
    try:
        yield provider
    finally:
        await provider.aclose()


def make_paypal(
    fake: FakePayPal, *, timeout_s: float = 5.0, deadline_s: float = 20.0, retries: int = 2
) -> PayPalProvider:
    return PayPalProvider(
        CLIENT_ID,
        CLIENT_SECRET,
        api_base=fake.url,
        timeout_s=timeout_s,
        deadline_s=deadline_s,
        retries=retries,
        backoff_s=0.0,
    )


@pytest.fixture
async def paypal_provider(fake_paypal: FakePayPal) -> AsyncIterator[PayPalProvider]:
    provider = make_paypal(fake_paypal)
    try:
        yield provider
    finally:
        await provider.aclose()


# ------------------------------------------------------------------------------------- Stripe


async def test_stripe_authorize_capture_refund_cancel_charge_payout(
    stripe_provider: StripeProvider, fake_stripe: FakeStripe
) -> None:
    held = await stripe_provider.authorize("pm_card_visa", 5000, "eur", key="hold-1")
    assert (held.status, held.amount_cents, held.captured_cents) == ("authorized", 5000, 0)
    assert held.test_mode is True
    assert fake_stripe.intents[held.reference]["capture_method"] == "manual"

    captured = await stripe_provider.capture(held.reference, 3000, key="hold-1-capture")
    assert (captured.status, captured.captured_cents) == ("succeeded", 3000)
    refund = await stripe_provider.refund(captured.refund_reference, 1000, key="hold-1-refund-1")
    assert (refund.status, refund.amount_cents, refund.currency) == ("succeeded", 1000, "eur")
    with pytest.raises(PaymentInvalid):  # never more than was captured
        await stripe_provider.refund(captured.refund_reference, 2001, key="hold-1-refund-2")

    other = await stripe_provider.authorize("pm_card_visa", 700, "eur", key="hold-2")
    canceled = await stripe_provider.cancel(other.reference, key="hold-2-cancel")
    assert canceled.status == "canceled"
    with pytest.raises(PaymentInvalid):
        await stripe_provider.capture(other.reference, 700, key="hold-2-capture")

    charged = await stripe_provider.charge("pm_card_visa", 1234, "eur", key="charge-1")
    assert (charged.status, charged.captured_cents) == ("succeeded", 1234)
    paid = await stripe_provider.payout("acct_provider", 4500, "eur", key="payout-1")
    assert (paid.status, paid.amount_cents) == ("paid", 4500)
    assert fake_stripe.transfers[paid.reference]["destination"] == "acct_provider"

    # Every call carried our key, derived from our operation.
    assert fake_stripe.keyed("/v1/payment_intents") == ["hold-1", "hold-2", "charge-1"]
    assert fake_stripe.keyed(f"/v1/payment_intents/{held.reference}/capture") == ["hold-1-capture"]
    assert fake_stripe.keyed("/v1/refunds") == ["hold-1-refund-1", "hold-1-refund-2"]
    assert fake_stripe.keyed("/v1/transfers") == ["payout-1"]


async def test_stripe_declines_and_verifies_methods(
    stripe_provider: StripeProvider, fake_stripe: FakeStripe
) -> None:
    with pytest.raises(PaymentDeclined):
        await stripe_provider.authorize("pm_card_chargeDeclined", 100, "eur", key="declined")
    card = await stripe_provider.verify_method("card", "pm_card_visa", key="pm-1-verify")
    assert (card.status, card.brand, card.last4, card.exp_month, card.exp_year) == (
        "verified",
        "visa",
        "4242",
        8,
        2031,
    )
    bad = await stripe_provider.verify_method("card", "pm_card_chargeDeclined", key="pm-2-verify")
    assert (bad.status, bad.reason) == ("failed", "card_declined")
    sepa = await stripe_provider.verify_method("sepa_debit", "pm_sepa_debit", key="pm-3-verify")
    assert (sepa.status, sepa.country, sepa.last4) == ("pending", "AT", "3201")
    assert sepa.reference is not None
    assert sepa.reference.startswith("seti_")
    form = fake_stripe.log[-2].form()  # the SetupIntent, before the PaymentMethod lookup
    assert form["mandate_data[customer_acceptance][type]"] == "offline"
    wrong = await stripe_provider.confirm_micro_deposits(sepa.reference, (1, 2), key="pm-3-md-0")
    assert (wrong.status, wrong.reason) == ("failed", "amounts_mismatch")
    right = await stripe_provider.confirm_micro_deposits(sepa.reference, (45, 32), key="pm-3-md-1")
    assert right.status == "verified"
    with pytest.raises(PaymentInvalid):
        await stripe_provider.verify_method("card", "pm_unknown", key="pm-4-verify")


async def test_stripe_timeout_is_retried_with_the_same_key_and_makes_one_object(
    fake_stripe: FakeStripe,
) -> None:
    provider = make_stripe(fake_stripe, timeout_s=0.5)
    try:
        # The fake makes the PaymentIntent, then answers too late: the client gives up on that
        # attempt and asks again with the same key, and the fake replays its first answer.
        fake_stripe.faults.append(Fault(delay_s=2.0))
        held = await provider.authorize("pm_card_visa", 2500, "eur", key="hold-7")
    finally:
        await provider.aclose()
    assert held.status == "authorized"
    assert len(fake_stripe.intents) == 1
    assert fake_stripe.keyed("/v1/payment_intents") == ["hold-7", "hold-7"]


async def test_stripe_5xx_is_retried_and_a_retry_by_us_finds_the_same_object(
    stripe_provider: StripeProvider, fake_stripe: FakeStripe
) -> None:
    fake_stripe.faults += [Fault(status=500), Fault(status=503)]
    held = await stripe_provider.authorize("pm_card_visa", 900, "eur", key="hold-8")
    assert fake_stripe.keyed("/v1/payment_intents") == ["hold-8"] * 3
    # Our own retry (after a crash, say) with the same key: the same PaymentIntent, no new one.
    again = await stripe_provider.authorize("pm_card_visa", 900, "eur", key="hold-8")
    assert again.reference == held.reference
    assert len(fake_stripe.intents) == 1


async def test_stripe_should_retry_false_surfaces_at_once(
    stripe_provider: StripeProvider, fake_stripe: FakeStripe
) -> None:
    fake_stripe.faults.append(
        Fault(status=500, saved=True, headers=[("Stripe-Should-Retry", "false")])
    )
    with pytest.raises(PaymentProviderUnavailable):
        await stripe_provider.authorize("pm_card_visa", 900, "eur", key="hold-9")
    assert fake_stripe.keyed("/v1/payment_intents") == ["hold-9"]  # one attempt only
    # Stripe saved that answer under the key: asking again answers the same error.
    with pytest.raises(PaymentProviderUnavailable):
        await stripe_provider.authorize("pm_card_visa", 900, "eur", key="hold-9")
    assert fake_stripe.intents == {}


async def test_stripe_retries_run_out_and_the_deadline_holds(fake_stripe: FakeStripe) -> None:
    provider = make_stripe(fake_stripe, retries=1)
    try:
        fake_stripe.faults += [Fault(status=500), Fault(status=500)]
        with pytest.raises(PaymentProviderUnavailable):
            await provider.charge("pm_card_visa", 100, "eur", key="charge-2")
        assert fake_stripe.keyed("/v1/payment_intents") == ["charge-2"] * 2
    finally:
        await provider.aclose()
    slow = make_stripe(fake_stripe, timeout_s=5.0, deadline_s=0.5, retries=0)
    try:
        fake_stripe.faults.append(Fault(delay_s=3.0))
        started = trio.current_time()
        with pytest.raises(PaymentProviderUnavailable):
            await slow.charge("pm_card_visa", 100, "eur", key="charge-3")
        assert trio.current_time() - started < 2.0
    finally:
        await slow.aclose()


# ------------------------------------------------------------------------------------- PayPal


async def test_paypal_authorize_capture_refund_void_charge_payout(
    paypal_provider: PayPalProvider, fake_paypal: FakePayPal
) -> None:
    held = await paypal_provider.authorize("PAYPAL-VERIFIED", 5000, "eur", key="hold-1")
    assert (held.status, held.amount_cents) == ("authorized", 5000)
    captured = await paypal_provider.capture(held.reference, 3050, key="hold-1-capture")
    assert (captured.status, captured.captured_cents, captured.currency) == (
        "succeeded",
        3050,
        "eur",
    )
    assert fake_paypal.captures[captured.refund_reference]["amount"]["value"] == "30.50"
    refund = await paypal_provider.refund(captured.refund_reference, 1000, key="hold-1-refund-1")
    assert (refund.status, refund.amount_cents) == ("succeeded", 1000)
    with pytest.raises(PaymentInvalid):
        await paypal_provider.refund(captured.refund_reference, 2051, key="hold-1-refund-2")

    other = await paypal_provider.authorize("PAYPAL-VERIFIED", 700, "eur", key="hold-2")
    canceled = await paypal_provider.cancel(other.reference, key="hold-2-cancel")
    assert canceled.status == "canceled"
    assert fake_paypal.authorizations[other.reference]["status"] == "VOIDED"

    charged = await paypal_provider.charge("PAYPAL-VERIFIED", 1999, "eur", key="charge-1")
    assert (charged.status, charged.captured_cents) == ("succeeded", 1999)
    paid = await paypal_provider.payout("PAYERID123", 4500, "eur", key="payout-1")
    assert paid.status == "pending"
    batch = fake_paypal.payouts[paid.reference]
    assert batch["items"][0]["amount"] == {"currency": "EUR", "value": "45.00"}

    assert fake_paypal.keyed("/v2/checkout/orders") == ["hold-1", "hold-2", "charge-1"]
    assert fake_paypal.keyed(f"/v2/payments/authorizations/{held.reference}/capture") == [
        "hold-1-capture"
    ]
    assert fake_paypal.keyed("/v1/payments/payouts") == ["payout-1"]
    assert len(fake_paypal.tokens) == 1  # one OAuth2 token, cached across every call


async def test_paypal_accounts_and_declines(paypal_provider: PayPalProvider) -> None:
    verified = await paypal_provider.verify_method("paypal", "PAYPAL-VERIFIED", key="pm-1")
    assert (verified.status, verified.email) == ("verified", "buyer@example.com")
    unverified = await paypal_provider.verify_method("paypal", "PAYPAL-UNVERIFIED", key="pm-2")
    assert (unverified.status, unverified.reason) == ("failed", "account_not_verified")
    with pytest.raises(PaymentInvalid):
        await paypal_provider.verify_method("paypal", "PAYPAL-NOBODY", key="pm-3")
    with pytest.raises(PaymentDeclined):
        await paypal_provider.authorize("PAYPAL-DECLINED", 100, "eur", key="hold-3")
    with pytest.raises(PaymentInvalid):
        await paypal_provider.confirm_micro_deposits("x", (1, 2), key="pm-4")


async def test_paypal_retries_with_the_same_request_id_and_makes_one_order(
    fake_paypal: FakePayPal,
) -> None:
    provider = make_paypal(fake_paypal, timeout_s=0.5)
    try:
        await provider.verify_method("paypal", "PAYPAL-VERIFIED", key="warm-up")  # the token
        fake_paypal.faults += [Fault(status=500), Fault(delay_s=2.0)]
        held = await provider.authorize("PAYPAL-VERIFIED", 800, "eur", key="hold-4")
    finally:
        await provider.aclose()
    assert held.status == "authorized"
    assert fake_paypal.keyed("/v2/checkout/orders") == ["hold-4"] * 3
    assert len(fake_paypal.orders) == 1


async def test_paypal_unavailable_and_an_expired_token_is_renewed(
    fake_paypal: FakePayPal, paypal_provider: PayPalProvider
) -> None:
    await paypal_provider.verify_method("paypal", "PAYPAL-VERIFIED", key="pm-1")
    fake_paypal.revoked.add(fake_paypal.tokens[-1])  # PayPal ended it before its time
    again = await paypal_provider.verify_method("paypal", "PAYPAL-VERIFIED", key="pm-2")
    assert again.status == "verified"
    assert len(fake_paypal.tokens) == 2
    fake_paypal.faults += [Fault(status=502)] * 3
    with pytest.raises(PaymentProviderUnavailable):
        await paypal_provider.charge("PAYPAL-VERIFIED", 100, "eur", key="charge-9")
    assert fake_paypal.keyed("/v2/checkout/orders") == ["charge-9"] * 3
    assert fake_paypal.orders == {}


async def test_a_token_that_expires_is_fetched_again(fake_paypal: FakePayPal) -> None:
    fake_paypal.token_ttl_s = 61  # renewed 60 s early: good for one second
    provider = make_paypal(fake_paypal)
    try:
        await provider.verify_method("paypal", "PAYPAL-VERIFIED", key="pm-1")
        await provider.verify_method("paypal", "PAYPAL-VERIFIED", key="pm-2")
        assert len(fake_paypal.tokens) == 1
        await trio.sleep(1.1)
        await provider.verify_method("paypal", "PAYPAL-VERIFIED", key="pm-3")
        assert len(fake_paypal.tokens) == 2
    finally:
        await provider.aclose()


# ------------------------------------------------------------------------------------- config


def _cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("YGG_")}
    environment.update(env)
    return subprocess.run(
        [*yggdrasil_command(), *argv], env=environment, capture_output=True, timeout=60
    )


@pytest.mark.slow
def test_config_show_masks_the_payment_secrets(tmp_path: Path) -> None:
    secrets = {
        "YGG_PAYMENTS_STRIPE_SECRET_KEY": "sk_test_do_not_print_1",
        "YGG_PAYMENTS_STRIPE_WEBHOOK_SECRET": "whsec_do_not_print_2",
        "YGG_PAYMENTS_PAYPAL_CLIENT_ID": "paypal-client-id",
        "YGG_PAYMENTS_PAYPAL_CLIENT_SECRET": "do_not_print_3",
    }
    shown = _cli("config", "show", "--data-dir", str(tmp_path), env=secrets)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert "[payments]" in text
    assert 'paypal_client_id = "paypal-client-id"' in text
    for name, value in secrets.items():
        if "SECRET" in name:
            assert value not in text


@pytest.mark.slow
def test_a_paypal_id_without_its_secret_stops_the_start_in_one_line(tmp_path: Path) -> None:
    result = _cli(
        "serve", "--data-dir", str(tmp_path), env={"YGG_PAYMENTS_PAYPAL_CLIENT_ID": "only-id"}
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "yggdrasil: payments: paypal_client_id and paypal_client_secret go together"
    ]


# ------------------------------------------------------------------------------------ sandbox


async def test_the_sandbox_pays_declines_and_replays_by_key() -> None:
    sandbox = SandboxProvider()
    assert sandbox.test_mode is True
    held = await sandbox.authorize("tok_sandbox_visa", 5000, "eur", key="hold-1")
    assert (held.status, held.test_mode) == ("authorized", True)
    assert await sandbox.authorize("tok_sandbox_visa", 5000, "eur", key="hold-1") == held
    with pytest.raises(PaymentInvalid):
        await sandbox.capture(held.reference, 5001, key="hold-1-capture-too-much")
    captured = await sandbox.capture(held.reference, 3000, key="hold-1-capture")
    assert (captured.status, captured.captured_cents) == ("succeeded", 3000)
    assert await sandbox.capture(held.reference, 3000, key="hold-1-capture") == captured
    with pytest.raises(PaymentInvalid):  # captured once; another key does not capture twice
        await sandbox.capture(held.reference, 1000, key="hold-1-capture-again")
    refund = await sandbox.refund(captured.refund_reference, 2000, key="refund-1")
    assert refund.amount_cents == 2000
    with pytest.raises(PaymentInvalid):
        await sandbox.refund(captured.refund_reference, 1001, key="refund-2")
    other = await sandbox.authorize("tok_sandbox_sepa", 100, "eur", key="hold-2")
    assert (await sandbox.cancel(other.reference, key="hold-2-cancel")).status == "canceled"
    charged = await sandbox.charge("tok_sandbox_paypal", 700, "eur", key="charge-1")
    assert charged.captured_cents == 700
    assert (await sandbox.payout("tok_sandbox_paypal", 900, "eur", key="payout-1")).status == (
        "paid"
    )
    with pytest.raises(PaymentDeclined):
        await sandbox.authorize("tok_sandbox_declined", 100, "eur", key="hold-3")
    with pytest.raises(PaymentProviderUnavailable):
        await sandbox.charge("tok_sandbox_unavailable", 100, "eur", key="charge-2")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(PaymentInvalid):
            await sandbox.charge("tok_sandbox_visa", bad, "eur", key=f"bad-{bad}")  # type: ignore[arg-type]
    with pytest.raises(PaymentInvalid):
        await sandbox.charge("tok_sandbox_visa", 100, "eur", key="")
    await sandbox.aclose()
