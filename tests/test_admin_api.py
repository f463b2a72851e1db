"""Operators' routes and a user's own networks and enrolment keys, through the real HTTP API and
device gateway, on both store backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.clients import User, device, sign_in
from tests.devices import close_code, raw_device
from yggdrasil.server import Running


def code_of(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


async def operator(http: httpx.AsyncClient, outbox: Path, running: Running, email: str) -> User:
    await sign_in(http, outbox, email)
    await running.services.domain.get().operators.grant_role(email, "operator")
    return await sign_in(http, outbox, email)  # a new token carries the role


async def actions_of(running: Running, actor: str) -> list[str]:
    entries = await running.services.domain.get().store.audit_entries(limit=100)
    return [e.action for e in entries if e.actor == actor]


async def all_pages(caller: User, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = (await caller.get(path, params=query)).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


# ----------------------------------------------------------------------- a user's own things


async def test_a_user_renames_and_deletes_their_own_network(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    user = await sign_in(http, outbox, "owner@example.org")
    home = (await user.get("/api/v1/users/me")).json()["home_network_id"]
    lab = (await user.post("/api/v1/networks", json={"name": "Lab"})).json()["network_id"]

    renamed = await user.put(f"/api/v1/networks/{lab}", json={"name": "Workshop"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Workshop"
    for bad in ({"name": ""}, {"name": "x" * 101}, {"name": "ok", "owner": "me"}, {}):
        refused = await user.put(f"/api/v1/networks/{lab}", json=bad)
        assert refused.status_code == 422, bad
        assert code_of(refused) == "validation_error"
    names = {
        n["network_id"]: n["name"] for n in (await user.get("/api/v1/networks")).json()["items"]
    }
    assert names == {home: "Home", lab: "Workshop"}

    # A device in the network, connected: deleting the network ends its session and tokens.
    phone = await sign_in(
        http, outbox, "owner@example.org", device_body=device("phone"), network_id=lab
    )
    assert phone.session["network_id"] == lab
    key = await user.post(f"/api/v1/networks/{lab}/enrollment-keys", json={"ttl_s": 600})
    async with raw_device(server.gateway_url, phone.session["access_token"]) as connected:
        deleted = await user.delete(f"/api/v1/networks/{lab}")
        assert deleted.status_code == 204, deleted.text
        assert await close_code(connected.ws, timeout_s=5.0) == 4001
    assert (await phone.get("/api/v1/devices")).status_code == 401
    assert (await user.get(f"/api/v1/networks/{lab}")).status_code == 404
    assert (await user.get("/api/v1/devices", params={"network_id": lab})).status_code == 404
    enrolled = await http.post(
        "/api/v1/enroll", json={"key": key.json()["key"], "device": device("late")}
    )
    assert enrolled.status_code == 401  # the network's keys went with it
    refreshed = await http.post(
        "/api/v1/auth/refresh",
        json={
            "refresh_token": phone.session["refresh_token"],
            "device_id": "phone",
            "network_id": lab,
        },
    )
    assert refreshed.status_code == 401

    # The home network goes only with the account.
    kept = await user.delete(f"/api/v1/networks/{home}")
    assert kept.status_code == 409
    assert code_of(kept) == "home_network"
    assert (await user.get(f"/api/v1/networks/{home}")).status_code == 200
    assert {"network.rename", "network.delete"} <= set(
        await actions_of(server, user.session["user_id"])
    )


async def test_a_user_lists_and_revokes_their_own_enrolment_keys(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    user = await sign_in(http, outbox, "keys@example.org")
    home = (await user.get("/api/v1/users/me")).json()["home_network_id"]
    path = f"/api/v1/networks/{home}/enrollment-keys"
    created = [(await user.post(path, json={"ttl_s": 600})).json() for _ in range(3)]
    listed = await all_pages(user, path, limit=2)
    assert [k["key_id"] for k in listed] == [k["key_id"] for k in created]
    assert all(k["status"] == "usable" and k["used_at"] is None for k in listed)
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    first_page = (await user.get(path, params={"limit": 2})).json()
    assert len(first_page["items"]) == 2
    assert first_page["next_cursor"] is not None

    revoked, used, raced = created
    assert (await user.delete(f"{path}/{revoked['key_id']}")).status_code == 204
    refused = await http.post("/api/v1/enroll", json={"key": revoked["key"], "device": device("a")})
    assert refused.status_code == 401
    assert code_of(refused) == "invalid_key"
    assert (await user.delete(f"{path}/{revoked['key_id']}")).status_code == 204  # still ended

    enrolled = await http.post("/api/v1/enroll", json={"key": used["key"], "device": device("b")})
    assert enrolled.status_code == 200, enrolled.text
    too_late = await user.delete(f"{path}/{used['key_id']}")
    assert too_late.status_code == 409
    assert code_of(too_late) == "key_used"

    # A revocation racing a redemption: exactly one of them wins.
    answers: dict[str, int] = {}

    async def enroll() -> None:
        body = {"key": raced["key"], "device": device("c")}
        answers["enroll"] = (await http.post("/api/v1/enroll", json=body)).status_code

    async def revoke() -> None:
        answers["revoke"] = (await user.delete(f"{path}/{raced['key_id']}")).status_code

    async with trio.open_nursery() as nursery:
        nursery.start_soon(enroll)
        nursery.start_soon(revoke)
    assert (answers["enroll"], answers["revoke"]) in ((200, 409), (401, 204)), answers

    statuses = {k["key_id"]: k["status"] for k in await all_pages(user, path)}
    assert statuses[revoked["key_id"]] == "expired"
    assert statuses[used["key_id"]] == "used"
    assert statuses[raced["key_id"]] == ("used" if answers["enroll"] == 200 else "expired")
    for params in ({"cursor": "%%%"}, {"limit": 0}, {"limit": 101}):
        bad = await user.get(path, params=params)
        assert bad.status_code == 422, params
    missing = await user.delete(f"{path}/ek_nothing")
    assert missing.status_code == 404
    assert "enrollment_key.revoke" in await actions_of(server, user.session["user_id"])


# ----------------------------------------------------------------------- operators


async def test_operators_find_users_by_part_of_their_address(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    users = {}
    for address in ("ada@example.org", "adam@example.org", "bob@other.net", "x_y@other.net"):
        users[address] = (await sign_in(http, outbox, address)).session["user_id"]
    ops = await operator(http, outbox, server, "ops@example.org")

    async def emails(**params: Any) -> list[str]:
        response = await ops.get("/api/admin/users", params=params)
        assert response.status_code == 200, response.text
        return [u["email"] for u in response.json()["items"]]

    assert await emails(q="ADA") == ["ada@example.org", "adam@example.org"]
    assert await emails(q="adam@") == ["adam@example.org"]
    assert await emails(q="example.org") == [
        "ada@example.org",
        "adam@example.org",
        "ops@example.org",
    ]
    assert await emails(q="_") == ["x_y@other.net"]  # a wildcard in SQL, a character here
    assert await emails(q="%") == []
    assert await emails(q=users["bob@other.net"]) == ["bob@other.net"]
    assert await emails(email="bob@other.net") == ["bob@other.net"]
    everyone = await all_pages(ops, "/api/admin/users", limit=2)
    assert [u["email"] for u in everyone] == [*users, "ops@example.org"]  # oldest first

    suspended = await ops.post(f"/api/admin/users/{users['bob@other.net']}/suspend")
    assert suspended.status_code == 200
    assert await emails(status="suspended") == ["bob@other.net"]
    for params in ({"cursor": "nope"}, {"limit": 101}, {"status": "gone"}, {"email": "x"}):
        bad = await ops.get("/api/admin/users", params=params)
        assert bad.status_code == 422, params
    assert "admin.list_users" in await actions_of(server, ops.session["user_id"])


async def test_operators_manage_any_users_devices_networks_and_keys(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    target = await sign_in(http, outbox, "target@example.org")
    user_id = target.session["user_id"]
    home = (await target.get("/api/v1/users/me")).json()["home_network_id"]
    pc = await sign_in(http, outbox, "target@example.org", device_body=device("pc"))
    lab = (await target.post("/api/v1/networks", json={"name": "Lab"})).json()["network_id"]
    await target.post(f"/api/v1/networks/{lab}/enrollment-keys", json={"ttl_s": 600})
    ops = await operator(http, outbox, server, "ops2@example.org")

    detail = (await ops.get(f"/api/admin/users/{user_id}")).json()
    assert detail["user"]["email"] == "target@example.org"
    assert {n["network_id"] for n in detail["networks"]} == {home, lab}
    assert [d["device_id"] for d in detail["devices"]] == ["pc"]
    devices = (await ops.get("/api/admin/devices", params={"user_id": user_id})).json()
    assert [(d["network_id"], d["device_id"]) for d in devices["items"]] == [(home, "pc")]
    shown = await ops.get(f"/api/admin/networks/{home}/devices/pc")
    assert shown.status_code == 200
    assert shown.json()["user_id"] == user_id
    networks = (await ops.get("/api/admin/networks", params={"user_id": user_id})).json()
    assert [(n["network_id"], n["owner_id"], n["members"]) for n in networks["items"]] == [
        (home, user_id, 1),
        (lab, user_id, 1),
    ]
    renamed = await ops.put(f"/api/admin/networks/{lab}", json={"name": "Renamed"})
    assert renamed.json()["name"] == "Renamed"
    assert (await target.get(f"/api/v1/networks/{lab}")).json()["name"] == "Renamed"

    keys = (await ops.get("/api/admin/enrollment-keys", params={"user_id": user_id})).json()
    assert [k["status"] for k in keys["items"]] == ["usable"]
    key_id = keys["items"][0]["key_id"]
    assert (await ops.delete(f"/api/admin/enrollment-keys/{key_id}")).status_code == 204
    usable = await ops.get("/api/admin/enrollment-keys", params={"usable": "true"})
    assert usable.json()["items"] == []

    kept = await ops.delete(f"/api/admin/networks/{home}")
    assert kept.status_code == 409
    assert code_of(kept) == "home_network"
    async with raw_device(server.gateway_url, pc.session["access_token"]) as connected:
        gone = await ops.delete(f"/api/admin/networks/{home}/devices/pc")
        assert gone.status_code == 204
        assert await close_code(connected.ws, timeout_s=5.0) == 4001
    assert (await pc.get("/api/v1/devices")).status_code == 401
    assert (await target.get("/api/v1/devices")).json()["items"] == []
    assert (await ops.delete(f"/api/admin/networks/{lab}")).status_code == 204
    assert (await target.get(f"/api/v1/networks/{lab}")).status_code == 404

    for method, path in (
        ("GET", "/api/admin/users/u_nobody"),
        ("DELETE", "/api/admin/users/u_nobody"),
        ("GET", f"/api/admin/networks/{home}/devices/pc"),
        ("DELETE", f"/api/admin/networks/{home}/devices/pc"),
        ("GET", "/api/admin/networks/n_nothing"),
        ("PUT", "/api/admin/networks/n_nothing"),
        ("DELETE", "/api/admin/networks/n_nothing"),
        ("DELETE", "/api/admin/enrollment-keys/ek_nothing"),
    ):
        body = {"name": "x"} if method == "PUT" else None
        missing = await ops.request(method, path, json=body)
        assert missing.status_code == 404, (method, path, missing.text)

    assert (await ops.delete(f"/api/admin/users/{user_id}")).status_code == 204
    assert (await target.get("/api/v1/users/me")).status_code == 401
    after = (await ops.get(f"/api/admin/users/{user_id}")).json()
    assert after["user"]["status"] == "deleted"
    assert after["user"]["email"] is None
    assert after["networks"] == []
    assert after["devices"] == []
    again = await sign_in(http, outbox, "target@example.org")  # the address is free again
    assert again.session["user_id"] != user_id

    domain = server.services.domain.get()
    assert {
        "admin.show_user",
        "admin.list_devices",
        "admin.show_device",
        "admin.list_networks",
        "admin.rename_network",
        "admin.list_enrollment_keys",
        "admin.revoke_enrollment_key",
        "admin.delete_device",
        "admin.delete_network",
        "admin.delete_user",
    } <= set(await actions_of(server, ops.session["user_id"]))
    await domain.store.verify_audit_chain()
