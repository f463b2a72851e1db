"""KYC on both backends: required per region, submitted by the user (a reference only),
decided by an operator (audited), and what payouts make of it; over HTTP with isolation."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.billing_helpers import Billing, uid
from tests.clients import sign_in
from yggdrasil import Database, Invalid, NotFound
from yggdrasil.billing import KycVerified
from yggdrasil.server import Running


async def test_kyc_is_required_per_region(database: Database) -> None:
    nowhere = Billing(database, kyc_regions=[])
    user = uid()
    assert (await nowhere.kyc.get(user)).status == "not_required"
    billing = Billing(database, kyc_regions=["DE", "AT"])
    assert (await billing.kyc.get(user)).status == "required"  # region not known yet
    french = await billing.kyc.submit(user, region="FR", reference="case-1")
    assert (french.status, french.required, french.blocks_payouts) == ("not_required", False, False)
    german = await billing.kyc.submit(user, region="DE", reference="case-2")
    assert (german.status, german.required, german.blocks_payouts) == ("pending", True, True)
    assert german.reference == "case-2"
    rejected = await billing.kyc.decide("ops", user, "rejected", reason="blurry")
    assert (rejected.status, rejected.reason, rejected.blocks_payouts) == (
        "rejected",
        "blurry",
        True,
    )
    again = await billing.kyc.submit(user, region="DE", reference="case-3")
    assert (again.status, again.reason) == ("pending", None)
    verified = await billing.kyc.decide("ops", user, "verified")
    assert (verified.status, verified.blocks_payouts) == ("verified", False)
    with pytest.raises(KycVerified):
        await billing.kyc.submit(user, region="DE", reference="case-4")
    with pytest.raises(NotFound):
        await billing.kyc.decide("ops", uid(), "verified")
    for region, reference in (
        ("de", "x"),
        ("DEU", "x"),
        ("DE", ""),
        ("DE", "a b"),
        ("DE", "x" * 201),
    ):
        with pytest.raises(Invalid):
            await billing.kyc.submit(uid(), region=region, reference=reference)


async def test_kyc_over_http_submitted_by_the_user_and_decided_by_an_operator(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    ada = await sign_in(http, outbox, "ada@example.org")
    bob = await sign_in(http, outbox, "bob@example.org")
    await sign_in(http, outbox, "ops@example.org")
    domain = server.services.domain.get()
    await domain.operators.grant_role("ops@example.org", "operator")
    ops = await sign_in(http, outbox, "ops@example.org")
    ada_id = (await ada.get("/api/v1/users/me")).json()["user_id"]
    first = (await ada.get("/api/v1/kyc")).json()
    assert (first["status"], first["required"]) == ("required", True)
    for body in (
        {"region": "de", "reference": "r"},
        {"region": "DE"},
        {"region": "DE", "reference": ""},
    ):
        refused = await ada.post("/api/v1/kyc", json=body)
        assert (refused.status_code, refused.json()["error"]["code"]) == (422, "validation_error")
    submitted = await ada.post("/api/v1/kyc", json={"region": "DE", "reference": "idnow-77"})
    assert submitted.status_code == 200, submitted.text
    assert (submitted.json()["status"], submitted.json()["reference"]) == ("pending", "idnow-77")
    assert (await bob.get("/api/v1/kyc")).json()["status"] == "required"  # only ada's
    path = f"/api/admin/users/{ada_id}/kyc"
    denied = await ada.post(path, json={"status": "verified"})
    assert denied.status_code == 403
    assert (await ops.post(path, json={"status": "approved"})).status_code == 422
    missing = await ops.post("/api/admin/users/u_nobody/kyc", json={"status": "verified"})
    assert missing.status_code == 404
    decided = await ops.post(path, json={"status": "verified"})
    assert decided.status_code == 200, decided.text
    assert (await ada.get("/api/v1/kyc")).json()["status"] == "verified"
    await domain.store.audit_log.seal()
    entries = await domain.store.audit_entries(limit=100)
    ops_id = (await ops.get("/api/v1/users/me")).json()["user_id"]
    assert [(e.actor, e.subject) for e in entries if e.action == "admin.kyc_verified"] == [
        (ops_id, ada_id)
    ]
