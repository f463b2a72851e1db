"""Accounts, networks and devices through the real HTTP API, as a user would use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.clients import User, count_mail, device, read_code, sign_in
from yggdrasil.server import Running


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


async def test_new_user_journey(http: httpx.AsyncClient, outbox: Path) -> None:
    register = await http.post(
        "/api/v1/users/register", json={"email": "Ada@Example.org", "display_name": "Ada"}
    )
    assert register.status_code == 202
    assert register.json() == {"status": "code_sent"}
    code = await read_code(outbox, "ada@example.org")
    verified = await http.post(
        "/api/v1/users/verify", json={"email": "ada@example.org", "code": code}
    )
    assert verified.status_code == 200
    ada = User(http, verified.json())
    me = (await ada.get("/api/v1/users/me")).json()
    assert me["email"] == "ada@example.org"
    assert me["display_name"] == "Ada"
    home = me["home_network_id"]
    networks = (await ada.get("/api/v1/networks")).json()["items"]
    assert [(n["network_id"], n["role"]) for n in networks] == [(home, "owner")]

    for name, world in (("laptop", "midgard"), ("phone", "alfheim"), ("server", "asgard")):
        created = await ada.post(
            "/api/v1/devices", json=device(name, world, capabilities={"llm": True})
        )
        assert created.status_code == 201, created.text
        assert created.json()["network_id"] == home
    listed = (await ada.get("/api/v1/devices")).json()
    assert [d["device_id"] for d in listed["items"]] == ["laptop", "phone", "server"]
    assert all(d["status"] == "offline" for d in listed["items"])

    # A new device signs in: it receives the home network's id and joins it.
    tablet = await sign_in(http, outbox, "ada@example.org", device_body=device("tablet", "alfheim"))
    assert tablet.session["network_id"] == home
    assert tablet.session["device_id"] == "tablet"
    assert len((await ada.get("/api/v1/devices")).json()["items"]) == 4
    assert (await tablet.get("/api/v1/devices/tablet")).json()["world_type"] == "alfheim"

    updated = await ada.put(
        "/api/v1/devices/phone", json={"name": "Ada's phone", "metadata": {"os": "x"}}
    )
    assert updated.status_code == 200
    assert updated.json()["name"] == "Ada's phone"

    export = (await ada.get("/api/v1/users/me/export")).json()
    assert export["user"]["email"] == "ada@example.org"
    assert {d["device_id"] for d in export["devices"]} == {"laptop", "phone", "server", "tablet"}
    assert any(entry["action"] == "login.success" for entry in export["audit_log"])
    assert "secret_hash" not in str(export)
    assert "code_hash" not in str(export)

    deleted = await ada.delete("/api/v1/users/me")
    assert deleted.status_code == 204
    for user in (ada, tablet):
        assert (await user.get("/api/v1/users/me")).status_code == 401
    refreshed = await http.post(
        "/api/v1/auth/refresh", json={"refresh_token": ada.session["refresh_token"]}
    )
    assert refreshed.status_code == 401
    # The address is free again: signing in makes a brand-new account.
    again = await sign_in(http, outbox, "ada@example.org")
    assert again.session["user_id"] != ada.session["user_id"]


async def test_known_and_unknown_addresses_get_the_same_answer(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    await sign_in(http, outbox, "known@example.org")
    answers = []
    for path in ("/api/v1/users/register", "/api/v1/users/login"):
        for address in ("known@example.org", "unknown@example.org"):
            response = await http.post(path, json={"email": address})
            headers = {k: v for k, v in response.headers.items() if k not in ("date",)}
            answers.append((response.status_code, response.content, tuple(sorted(headers.items()))))
    assert len(set(answers)) == 1


async def test_code_rules(http: httpx.AsyncClient, outbox: Path, server: Running) -> None:
    address = "rules@example.org"
    await http.post("/api/v1/users/login", json={"email": address})
    first = await read_code(outbox, address)
    await http.post("/api/v1/users/login", json={"email": address})
    second = await read_code(outbox, address, seen=1)

    async def verify(code: str) -> httpx.Response:
        return await http.post("/api/v1/users/verify", json={"email": address, "code": code})

    if first != second:  # only the newest code counts
        assert error_code(await verify(first)) == "invalid_code"
    ok = await verify(second)
    assert ok.status_code == 200
    reused = await verify(second)  # used once: gone
    assert reused.status_code == 401
    assert error_code(reused) == "invalid_code"

    # Five wrong tries burn a code, even the right one after them.
    await http.post("/api/v1/users/login", json={"email": address})
    third = await read_code(outbox, address, seen=2)
    wrong = f"{(int(third) + 1) % 10**6:06d}"
    for _ in range(5):
        assert (await verify(wrong)).status_code == 401
    assert (await verify(third)).status_code == 401

    # Expiry: a code past its lifetime is refused.
    await http.post("/api/v1/users/login", json={"email": "late@example.org"})
    late = await read_code(outbox, "late@example.org")
    store = server.services.domain.get().store

    async def age(tx: Any) -> None:
        # Codes keep only the blind index of their address.
        index = store.db.vault.index("email", "late@example.org")
        await tx.execute("UPDATE login_codes SET expires_at = 0 WHERE email = $1", index)

    await store.db.write(age)
    assert (
        await http.post("/api/v1/users/verify", json={"email": "late@example.org", "code": late})
    ).status_code == 401


async def test_guessing_in_parallel_counts_every_attempt(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    address = "guess@example.org"
    await http.post("/api/v1/users/login", json={"email": address})
    code = await read_code(outbox, address)
    guesses = [f"{(int(code) + i) % 10**6:06d}" for i in range(1, 41)]
    results: list[int] = []

    async def guess(value: str) -> None:
        response = await http.post("/api/v1/users/verify", json={"email": address, "code": value})
        results.append(response.status_code)

    async with trio.open_nursery() as nursery:
        for value in guesses:
            nursery.start_soon(guess, value)
    assert results.count(401) == 40
    # The code was burnt after five attempts, so the right one fails now too.
    final = await http.post("/api/v1/users/verify", json={"email": address, "code": code})
    assert final.status_code == 401


async def test_codes_per_address_are_rate_limited(http: httpx.AsyncClient, outbox: Path) -> None:
    for address in ("limited@example.org", "nobody@example.org"):
        statuses = []
        for _ in range(4):
            response = await http.post("/api/v1/users/login", json={"email": address})
            statuses.append(response.status_code)
        assert statuses == [202, 202, 202, 429]
        assert int(response.headers["retry-after"]) > 0
        assert error_code(response) == "rate_limited"
    assert count_mail(outbox, "limited@example.org") == 3


async def test_refresh_rotation_and_reuse_detection(http: httpx.AsyncClient, outbox: Path) -> None:
    user = await sign_in(http, outbox, "rotate@example.org")
    first = user.session["refresh_token"]
    rotated = await http.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first
    newer = User(http, second)
    assert (await newer.get("/api/v1/users/me")).status_code == 200

    # The old token again: theft suspected, the whole family is revoked at once.
    replay = await http.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert replay.status_code == 401
    assert error_code(replay) == "invalid_grant"
    assert (await newer.get("/api/v1/users/me")).status_code == 401
    assert (
        await http.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    ).status_code == 401
    # Another session of the same user is unaffected.
    other = await sign_in(http, outbox, "rotate@example.org")
    assert (await other.get("/api/v1/users/me")).status_code == 200


async def test_device_refresh_tokens_are_bound_to_their_device(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    dev = await sign_in(http, outbox, "bound@example.org", device_body=device("sensor"))
    token = dev.session["refresh_token"]
    stolen = await http.post(
        "/api/v1/auth/refresh",
        json={
            "refresh_token": token,
            "device_id": "other",
            "network_id": dev.session["network_id"],
        },
    )
    assert stolen.status_code == 401
    own = await http.post(
        "/api/v1/auth/refresh",
        json={
            "refresh_token": token,
            "device_id": "sensor",
            "network_id": dev.session["network_id"],
        },
    )
    assert own.status_code == 200
    assert own.json()["device_id"] == "sensor"


async def test_logout_ends_the_session_at_once(http: httpx.AsyncClient, outbox: Path) -> None:
    user = await sign_in(http, outbox, "logout@example.org")
    other = await sign_in(http, outbox, "logout@example.org")
    assert (await user.post("/api/v1/auth/logout")).status_code == 204
    assert (await user.get("/api/v1/users/me")).status_code == 401
    assert (
        await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": user.session["refresh_token"]}
        )
    ).status_code == 401
    assert (await other.get("/api/v1/users/me")).status_code == 200


async def test_deleting_a_device_revokes_its_tokens(http: httpx.AsyncClient, outbox: Path) -> None:
    owner = await sign_in(http, outbox, "owner@example.org")
    gadget = await sign_in(http, outbox, "owner@example.org", device_body=device("gadget"))
    assert (await gadget.get("/api/v1/devices/gadget")).status_code == 200
    assert (await owner.delete("/api/v1/devices/gadget")).status_code == 204
    response = await gadget.get("/api/v1/devices")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    refresh = await http.post(
        "/api/v1/auth/refresh",
        json={
            "refresh_token": gadget.session["refresh_token"],
            "device_id": "gadget",
            "network_id": gadget.session["network_id"],
        },
    )
    assert refresh.status_code == 401


async def test_a_device_token_is_confined_to_its_network(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    owner = await sign_in(http, outbox, "multi@example.org")
    lab = (await owner.post("/api/v1/networks", json={"name": "Lab"})).json()
    assert lab["role"] == "owner"
    assert (
        await owner.post(
            "/api/v1/devices", params={"network_id": lab["network_id"]}, json=device("probe")
        )
    ).status_code == 201
    home_device = await sign_in(http, outbox, "multi@example.org", device_body=device("kiosk"))
    # The home device sees its own network only: the lab network "does not exist" for it.
    assert [
        n["network_id"] for n in (await home_device.get("/api/v1/networks")).json()["items"]
    ] == [home_device.session["network_id"]]
    assert (await home_device.get(f"/api/v1/networks/{lab['network_id']}")).status_code == 404
    assert (
        await home_device.get("/api/v1/devices/probe", params={"network_id": lab["network_id"]})
    ).status_code == 404
    # The user picks the lab network at sign-in: the new device joins that one.
    lab_device = await sign_in(
        http, outbox, "multi@example.org", device_body=device("arm"), network_id=lab["network_id"]
    )
    assert lab_device.session["network_id"] == lab["network_id"]


async def test_enrolment_key_redeemed_in_parallel_yields_one_device(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    owner = await sign_in(http, outbox, "enrol@example.org")
    home = (await owner.get("/api/v1/users/me")).json()["home_network_id"]
    created = await owner.post(f"/api/v1/networks/{home}/enrollment-keys", json={"ttl_s": 600})
    assert created.status_code == 201
    key = created.json()["key"]
    results: list[httpx.Response] = []

    async def redeem(i: int) -> None:
        results.append(
            await http.post("/api/v1/enroll", json={"key": key, "device": device(f"headless-{i}")})
        )

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(redeem, i)
    winners = [r for r in results if r.status_code == 200]
    assert len(winners) == 1
    assert all(
        r.status_code == 401 and error_code(r) == "invalid_key"
        for r in results
        if r.status_code != 200
    )
    devices = (await owner.get("/api/v1/devices")).json()["items"]
    assert [d["device_id"] for d in devices] == [winners[0].json()["device_id"]]
    enrolled = User(http, winners[0].json())
    assert (
        await enrolled.get(f"/api/v1/devices/{enrolled.session['device_id']}")
    ).status_code == 200


async def test_bad_input_is_a_clear_error_and_changes_nothing(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    user = await sign_in(http, outbox, "strict@example.org")
    before = (await user.get("/api/v1/users/me/export")).json()
    cases: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/devices", {"device_id": "a/b", "name": "x", "world_type": "midgard"}),
        ("POST", "/api/v1/devices", {"device_id": "ok", "name": "x", "world_type": "venus"}),
        (
            "POST",
            "/api/v1/devices",
            {"device_id": "ok", "name": "x", "world_type": "midgard", "extra": 1},
        ),
        ("POST", "/api/v1/devices", device("big", capabilities={"blob": "x" * 20000})),
        ("POST", "/api/v1/networks", {"name": ""}),
        ("PUT", "/api/v1/users/me", {"display_name": 5}),
        ("POST", "/api/v1/networks/x/enrollment-keys", {"ttl_s": 10}),
    ]
    for method, path, body in cases:
        response = await user.request(method, path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert error_code(response) in ("validation_error", "invalid")
        assert response.json()["error"]["message"]
    not_json = await user.request(
        "POST",
        "/api/v1/devices",
        content=b"{nope",
        headers={**user.headers, "content-type": "application/json"},
    )
    assert not_json.status_code in (400, 422)
    after = (await user.get("/api/v1/users/me/export")).json()
    assert after["devices"] == before["devices"] == []
    assert after["networks"] == before["networks"]


async def test_operator_routes(http: httpx.AsyncClient, outbox: Path, server: Running) -> None:
    target = await sign_in(http, outbox, "target@example.org", device_body=device("pc"))
    user = await sign_in(http, outbox, "plain@example.org")
    for method, path in (
        ("GET", "/api/admin/users?email=target@example.org"),
        ("POST", f"/api/admin/users/{target.session['user_id']}/suspend"),
        ("GET", f"/api/admin/users/{target.session['user_id']}/devices"),
    ):
        response = await user.request(method, path)
        assert response.status_code == 403, path
        assert error_code(response) == "insufficient_scope"

    domain = server.services.domain.get()
    await sign_in(http, outbox, "ops@example.org")
    await domain.operators.grant_role("ops@example.org", "operator")
    operator = await sign_in(http, outbox, "ops@example.org")  # a new token carries the role
    found = (await operator.get("/api/admin/users", params={"email": "target@example.org"})).json()
    assert [u["user_id"] for u in found["items"]] == [target.session["user_id"]]
    devices = (await operator.get(f"/api/admin/users/{target.session['user_id']}/devices")).json()
    assert [d["device_id"] for d in devices["items"]] == ["pc"]
    suspended = await operator.post(f"/api/admin/users/{target.session['user_id']}/suspend")
    assert suspended.json()["status"] == "suspended"
    assert (await target.get("/api/v1/users/me")).status_code == 401
    seen = count_mail(outbox, "target@example.org")
    await http.post("/api/v1/users/login", json={"email": "target@example.org"})
    code = await read_code(outbox, "target@example.org", seen=seen)
    blocked = await http.post(
        "/api/v1/users/verify", json={"email": "target@example.org", "code": code}
    )
    assert blocked.status_code == 403
    assert error_code(blocked) == "account_suspended"
    entries = await domain.store.audit_entries(limit=100)
    actions = [e.action for e in entries if e.actor == operator.session["user_id"]]
    assert {"admin.list_users", "admin.list_devices", "admin.suspended"} <= set(actions)
    await domain.store.verify_audit_chain()


async def test_jwks_publishes_the_signing_key(http: httpx.AsyncClient) -> None:
    keys = (await http.get("/.well-known/jwks.json")).json()["keys"]
    assert len(keys) == 1
    assert (keys[0]["kty"], keys[0]["crv"]) == ("OKP", "Ed25519")
    assert "d" not in keys[0]


async def test_the_server_seals_audit_entries_by_itself(
    http: httpx.AsyncClient, outbox: Path, server: Running
) -> None:
    user = await sign_in(http, outbox, "sealed@example.org")
    assert (await user.post("/api/v1/devices", json=device("pc"))).status_code == 201
    db = server.services.domain.get().store.db

    async def pending(tx: Any) -> Any:
        return await tx.fetchval("SELECT count(*) FROM audit_pending")

    async def sealed(tx: Any) -> Any:
        return await tx.fetch("SELECT action FROM audit_log ORDER BY seq")

    with trio.fail_after(5):  # nobody asks: the store's sealer does it within a second
        while await db.read(pending):  # noqa: ASYNC110 - polling the database
            await trio.sleep(0.05)
    assert "device.register" in [row["action"] for row in await db.read(sealed)]
