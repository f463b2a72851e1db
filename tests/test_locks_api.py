"""Global locks through the whole server, on both store backends: devices over the websocket,
users and devices over HTTP, the owner's and the operators' views, bad input, and tenant
isolation (another network's lock answers exactly like none, on the wire and over HTTP)."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from relay.protocol import LockAcquire, LockExpired, LockGranted, LockRelease, LockResult
from tests.clients import User, device, sign_in
from tests.devices import raw_device
from yggdrasil.server import Running


async def test_devices_take_turns_on_a_lock_over_the_wire(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    laptop = await sign_in(http, outbox, "ada@example.org", device_body=device("laptop"))
    phone = await sign_in(http, outbox, "ada@example.org", device_body=device("phone"))
    gateway = server.gateway_url
    async with (
        raw_device(gateway, laptop.session["access_token"]) as a,
        raw_device(gateway, phone.session["access_token"]) as b,
    ):
        await a.send(LockAcquire(id=1, name="printer", lease_ms=30_000))
        first = await a.receive_type(LockGranted)
        assert (first.id, first.name) == (1, "printer")
        assert 29_000 < first.lease_ms <= 30_000
        await b.send(LockAcquire(id=7, name="printer", lease_ms=30_000))
        busy = await b.receive_type(LockResult)
        assert (busy.id, busy.ok, busy.error) == (7, False, "busy")
        # The phone waits; the laptop releases; the phone gets it with a larger token.
        await b.send(LockAcquire(id=8, name="printer", lease_ms=400, wait_ms=10_000))
        await trio.sleep(0.2)
        await a.send(LockRelease(id=2, name="printer", token=first.token))
        released = await a.receive_type(LockResult)
        assert (released.id, released.ok) == (2, True)
        second = await b.receive_type(LockGranted)
        assert second.id == 8
        assert second.token > first.token
        # The phone does not renew: its lease ends, and it hears so.
        lost = await b.receive_type(LockExpired, timeout_s=5)
        assert (lost.name, lost.token) == ("printer", second.token)
        # The laptop's old token is refused, like a token that never was.
        await a.send(LockRelease(id=3, name="printer", token=first.token))
        await a.send(LockRelease(id=4, name="printer", token=999_999))
        stale, made_up = await a.receive_type(LockResult), await a.receive_type(LockResult)
        assert (stale.error, made_up.error) == ("not_held", "not_held")
        assert stale.message.replace(str(first.token), "T") == made_up.message.replace(
            "999999", "T"
        )


async def test_a_device_that_goes_away_withdraws_its_waits(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    owner = await sign_in(http, outbox, "gone@example.org")
    laptop = await sign_in(http, outbox, "gone@example.org", device_body=device("laptop"))
    phone = await sign_in(http, outbox, "gone@example.org", device_body=device("phone"))
    async with raw_device(server.gateway_url, laptop.session["access_token"]) as a:
        await a.send(LockAcquire(id=1, name="door", lease_ms=30_000))
        await a.receive_type(LockGranted)
        async with raw_device(server.gateway_url, phone.session["access_token"]) as b:
            await b.send(LockAcquire(id=1, name="door", lease_ms=30_000, wait_ms=20_000))
            with trio.fail_after(5):
                while True:
                    [lock] = (await owner.get("/api/v1/locks")).json()["items"]
                    if lock["waiters"]:
                        break
                    await trio.sleep(0.05)
            assert [w["holder"] for w in lock["waiters"]] == ["device:phone"]
        # The phone's session ended: its wait is withdrawn; the laptop's grant stays.
        with trio.fail_after(5):
            while True:
                [lock] = (await owner.get("/api/v1/locks")).json()["items"]
                if not lock["waiters"]:
                    break
                await trio.sleep(0.05)
        assert lock["holder"] == "device:laptop"


async def test_a_deadlock_over_the_wire_names_the_locks_of_the_cycle(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    laptop = await sign_in(http, outbox, "dl@example.org", device_body=device("laptop"))
    phone = await sign_in(http, outbox, "dl@example.org", device_body=device("phone"))
    async with (
        raw_device(server.gateway_url, laptop.session["access_token"]) as a,
        raw_device(server.gateway_url, phone.session["access_token"]) as b,
    ):
        await a.send(LockAcquire(id=1, name="disk", lease_ms=30_000))
        await b.send(LockAcquire(id=1, name="tape", lease_ms=30_000))
        await a.receive_type(LockGranted)
        await b.receive_type(LockGranted)
        await a.send(LockAcquire(id=2, name="tape", lease_ms=30_000, priority=5, wait_ms=20_000))
        await trio.sleep(0.2)
        await b.send(LockAcquire(id=2, name="disk", lease_ms=30_000, wait_ms=20_000))
        failed = await b.receive_type(LockResult)
        assert (failed.id, failed.error, failed.locks) == (2, "deadlock", ["disk", "tape"])


async def test_locks_over_http_for_users_and_devices(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    owner = await sign_in(http, outbox, "owner@example.org")
    phone = await sign_in(http, outbox, "owner@example.org", device_body=device("phone"))
    network = phone.session["network_id"]
    got = await owner.post("/api/v1/locks/acquire", json={"name": "model-slot", "lease_ms": 20_000})
    assert got.status_code == 200, got.text
    grant = got.json()
    assert grant["name"] == "model-slot"
    busy = await phone.post("/api/v1/locks/acquire", json={"name": "model-slot", "lease_ms": 5000})
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "busy"
    # The owner's view: the holder, its age, and a waiting device.
    async with trio.open_nursery() as nursery:
        waited: list[httpx.Response] = []

        async def wait_for_it() -> None:
            waited.append(
                await phone.post(
                    "/api/v1/locks/acquire",
                    json={"name": "model-slot", "lease_ms": 5000, "wait_ms": 10_000},
                )
            )

        nursery.start_soon(wait_for_it)
        await trio.sleep(0.3)
        view = (await owner.get("/api/v1/locks")).json()
        [lock] = view["items"]
        assert lock["holder"] == f"user:{owner.session['user_id']}"
        assert lock["token"] == grant["token"]
        assert lock["age_ms"] >= 200
        assert [w["holder"] for w in lock["waiters"]] == ["device:phone"]
        renewed = await owner.post(
            "/api/v1/locks/renew",
            json={"name": "model-slot", "token": grant["token"], "lease_ms": 20_000},
        )
        assert renewed.status_code == 200
        assert renewed.json()["token"] == grant["token"]
        released = await owner.post(
            "/api/v1/locks/release", json={"name": "model-slot", "token": grant["token"]}
        )
        assert released.status_code == 204
    [answer] = waited
    assert answer.status_code == 200
    assert answer.json()["token"] > grant["token"]
    # The device is no owner: it may not see the view (its token is no account's).
    assert (await phone.get("/api/v1/locks")).status_code == 403
    # An operator sees it too; a made-up network is not found.
    await sign_in(http, outbox, "ops@example.org")
    await server.services.domain.get().operators.grant_role("ops@example.org", "operator")
    operator = await sign_in(http, outbox, "ops@example.org")
    admin = await operator.get(f"/api/admin/networks/{network}/locks")
    assert admin.status_code == 200
    assert [i["holder"] for i in admin.json()["items"]] == ["device:phone"]
    assert (await operator.get("/api/admin/networks/n_none/locks")).status_code == 404


async def test_bad_lock_requests_get_clear_errors_and_change_nothing(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    user = await sign_in(http, outbox, "bad@example.org")
    for body in (
        {"name": "", "lease_ms": 1000},
        {"name": "-x", "lease_ms": 1000},
        {"name": "ok", "lease_ms": 1},
        {"name": "ok", "lease_ms": 1000, "priority": 100_000},
        {"name": "ok", "lease_ms": 1000, "wait_ms": -1},
        {"name": "ok", "lease_ms": 1000, "wait_ms": 3_000_000},
        {"name": "ok", "lease_ms": 1.5},
        {"name": "ok"},
        {"name": "ok", "lease_ms": 1000, "extra": 1},
    ):
        response = await user.post("/api/v1/locks/acquire", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] in ("validation_error", "invalid")
    too_long = await user.post("/api/v1/locks/acquire", json={"name": "ok", "lease_ms": 86_400_000})
    assert too_long.status_code == 422  # beyond locks.max_lease_ms
    assert too_long.json()["error"]["code"] == "invalid"
    not_held = await user.post("/api/v1/locks/release", json={"name": "ok", "token": 5})
    assert not_held.status_code == 409
    assert not_held.json()["error"]["code"] == "not_held"
    assert (await user.get("/api/v1/locks")).json()["items"] == []


async def test_another_networks_locks_answer_exactly_like_none(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    ada = await sign_in(http, outbox, "ada@example.org", device_body=device("laptop"))
    bob = await sign_in(http, outbox, "bob@example.org", device_body=device("laptop"))
    bob_user = await sign_in(http, outbox, "bob@example.org")
    ada_net = ada.session["network_id"]
    # Over the wire: ada's "printer" is held; bob's is another lock, free.
    async with (
        raw_device(server.gateway_url, ada.session["access_token"]) as a,
        raw_device(server.gateway_url, bob.session["access_token"]) as b,
    ):
        for n, name in enumerate(("scanner", "mic", "printer")):
            await a.send(LockAcquire(id=n, name=name, lease_ms=30_000))
            held = await a.receive_type(LockGranted)
        await b.send(LockAcquire(id=1, name="printer", lease_ms=30_000))
        own = await b.receive_type(LockGranted)
        assert own.token != held.token  # tokens are per network: bob's is his first
        # Bob's device cannot release ada's grant by its token: not held, as if made up.
        await b.send(LockRelease(id=2, name="printer", token=held.token))
        await b.send(LockRelease(id=3, name="printer", token=10**12))
        first, second = await b.receive_type(LockResult), await b.receive_type(LockResult)
        assert (first.error, second.error) == ("not_held", "not_held")
    # Over HTTP: ada's network is bob's "not found", exactly like a network that does not exist.
    answers = []
    for network_id in (ada_net, "n_made_up"):
        for caller in (bob, bob_user):
            for method, path, body in (
                ("POST", "/api/v1/locks/acquire", {"name": "printer", "lease_ms": 1000}),
                ("POST", "/api/v1/locks/renew", {"name": "printer", "token": 1, "lease_ms": 1000}),
                ("POST", "/api/v1/locks/release", {"name": "printer", "token": held.token}),
                ("GET", "/api/v1/locks", None),
            ):
                if caller is bob and method == "GET":
                    continue  # the view is no device's (403 for every network)
                response = await caller.request(
                    method, path, params={"network_id": network_id}, json=body
                )
                answers.append((response.status_code, response.content))
    half = len(answers) // 2
    assert answers[:half] == answers[half:]
    assert {status for status, _ in answers} == {404}
    # Bob's own view shows only his network's lock.
    view = (await bob_user.get("/api/v1/locks")).json()
    assert [(i["name"], i["holder"]) for i in view["items"]] == [("printer", "device:laptop")]


async def test_the_owner_view_pages_by_name(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    user: User = await sign_in(http, outbox, "pages@example.org")
    for n in range(5):
        got = await user.post("/api/v1/locks/acquire", json={"name": f"l{n}", "lease_ms": 20_000})
        assert got.status_code == 200
    names: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await user.get("/api/v1/locks", params=params)).json()
        names += [item["name"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == [f"l{n}" for n in range(5)]
    bad = await user.get("/api/v1/locks", params={"cursor": "%%%"})
    assert bad.status_code == 422
