"""The audit trail over HTTP, on both backends: a user sees their own entries only (what they
did and what was done about them, never another user's entries, ids or who else acted), page by
page; operators see everyone's with filters, and their read is audited itself."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.clients import device, sign_in
from tests.test_admin_api import all_pages, code_of, operator
from yggdrasil.server import Running


async def test_a_user_sees_only_their_own_trail(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    ada = await sign_in(http, outbox, "ada@example.org")
    bob = await sign_in(http, outbox, "bob@example.org")
    ada_id, bob_id = ada.session["user_id"], bob.session["user_id"]
    for caller, name in ((ada, "ada-net"), (bob, "bob-secret-net")):
        created = await caller.post("/api/v1/networks", json={"name": name})
        assert created.status_code == 201, created.text
    bob_net = (await bob.get("/api/v1/networks")).json()["items"]
    assert (await bob.post("/api/v1/devices", json=device("bob-phone"))).status_code == 201
    assert (await ada.post("/api/v1/devices", json=device("ada-phone"))).status_code == 201
    ops = await operator(http, outbox, server, "ops@example.org")
    assert (await ops.post(f"/api/admin/users/{ada_id}/suspend")).status_code == 200
    assert (await ops.post(f"/api/admin/users/{ada_id}/reactivate")).status_code == 200
    ada = await sign_in(http, outbox, "ada@example.org")  # suspension revoked her tokens

    trail = await all_pages(ada, "/api/v1/users/me/audit", limit=2)
    actions = [entry["action"] for entry in trail]
    assert actions.count("login.success") == 2
    assert {"network.create", "admin.suspended", "admin.active"} <= set(actions)
    seqs = [entry["seq"] for entry in trail]
    assert seqs == sorted(set(seqs))  # oldest first, no entry twice across pages
    everything = await server.services.domain.get().store.audit_entries(limit=100)
    about_her = (ada_id, f"user:{ada_id}")
    mine = [e.seq for e in everything if e.actor == ada_id or e.subject in about_her]
    assert seqs == mine
    by = {entry["action"]: entry["by"] for entry in trail}
    assert by["network.create"] == "self"
    assert by["admin.suspended"] == "other"  # an operator, unnamed
    text = json.dumps(trail)
    ops_id = ops.session["user_id"]
    for foreign in (bob_id, ops_id, *(n["network_id"] for n in bob_net), "bob-secret-net"):
        assert foreign not in text
    assert "hash" not in trail[0]

    bad = await ada.get("/api/v1/users/me/audit", params={"cursor": "not-ours!"})
    assert (bad.status_code, code_of(bad)) == (422, "invalid")
    too_many = await ada.get("/api/v1/users/me/audit", params={"limit": 101})
    assert too_many.status_code == 422


async def test_operators_filter_everyones_entries(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    ada = await sign_in(http, outbox, "ada@example.org")
    await sign_in(http, outbox, "bob@example.org")
    ops = await operator(http, outbox, server, "ops@example.org")
    ada_id = ada.session["user_id"]

    everyone = await all_pages(ops, "/api/admin/audit", limit=3)
    assert {"user.create", "login.success"} <= {e["action"] for e in everyone}
    assert all(e["hash"] and "prev_hash" in e for e in everyone)
    logins = await all_pages(ops, "/api/admin/audit", action="login.")
    assert logins
    assert {e["action"] for e in logins} == {"login.success"}
    hers = await all_pages(ops, "/api/admin/audit", actor=ada_id)
    assert hers
    assert {e["actor"] for e in hers} == {ada_id}
    last = everyone[-1]
    window = await all_pages(ops, "/api/admin/audit", since=last["at"], until=last["at"] + 1)
    assert last["seq"] in [e["seq"] for e in window]
    assert all(e["at"] == last["at"] for e in window)
    # the operators' reads are in the log themselves
    reads = await all_pages(ops, "/api/admin/audit", action="admin.read_audit")
    assert reads
    assert {e["actor"] for e in reads} == {ops.session["user_id"]}

    for params in ({"action": "LOGIN"}, {"since": -1}, {"cursor": "%%%"}, {"colour": "red"}):
        bad = await ops.get("/api/admin/audit", params=params)
        assert bad.status_code == 422, params
    refused = await ada.get("/api/admin/audit")
    assert refused.status_code == 403
