"""Who may call which route: every route of the OpenAPI document, tried with every kind of caller.

The expectations are this test's own table, written from the rules (SECURITY.md, "Principals and
scopes"), not read from the code under test: a route missing here fails the suite, and so does a
route that admits a caller it should refuse or refuses one it should admit.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart

from api._scopes import check_routes
from tests.clients import RELAXED_LIMITS, User, device, sign_in
from tests.servers import running_server
from yggdrasil.server import Running

ANYONE = {"anonymous", "user", "operator", "device"}
ACCOUNT = {"user", "operator"}
NETWORK = {"user", "operator", "device"}
OWN_DEVICE = {"user", "operator", "device:self"}

EXPECTED: dict[tuple[str, str], set[str]] = {
    ("GET", "/healthz"): ANYONE,
    ("GET", "/readyz"): ANYONE,
    ("GET", "/.well-known/jwks.json"): ANYONE,
    ("POST", "/api/v1/users/register"): ANYONE,
    ("POST", "/api/v1/users/login"): ANYONE,
    ("POST", "/api/v1/users/verify"): ANYONE,
    ("POST", "/api/v1/auth/refresh"): ANYONE,
    ("POST", "/api/v1/enroll"): ANYONE,
    ("GET", "/api/v1/auth/oidc/{provider}/authorize"): ANYONE,
    ("POST", "/api/v1/auth/oidc/{provider}/callback"): ANYONE,
    ("POST", "/api/v1/auth/logout"): NETWORK,
    ("GET", "/api/v1/users/me"): ACCOUNT,
    ("PUT", "/api/v1/users/me"): ACCOUNT,
    ("DELETE", "/api/v1/users/me"): ACCOUNT,
    ("GET", "/api/v1/users/me/export"): ACCOUNT,
    ("GET", "/api/v1/users/me/audit"): ACCOUNT,
    ("GET", "/api/v1/networks"): NETWORK,
    ("POST", "/api/v1/networks"): ACCOUNT,
    ("GET", "/api/v1/networks/{network_id}"): NETWORK,
    ("PUT", "/api/v1/networks/{network_id}"): ACCOUNT,
    ("DELETE", "/api/v1/networks/{network_id}"): ACCOUNT,
    ("POST", "/api/v1/networks/{network_id}/enrollment-keys"): ACCOUNT,
    ("GET", "/api/v1/networks/{network_id}/enrollment-keys"): ACCOUNT,
    ("DELETE", "/api/v1/networks/{network_id}/enrollment-keys/{key_id}"): ACCOUNT,
    ("GET", "/api/v1/devices"): NETWORK,
    ("POST", "/api/v1/devices"): ACCOUNT,
    ("GET", "/api/v1/devices/{device_id}"): NETWORK,
    ("PUT", "/api/v1/devices/{device_id}"): OWN_DEVICE,
    ("DELETE", "/api/v1/devices/{device_id}"): OWN_DEVICE,
    ("GET", "/api/v1/devices/{device_id}/ice-servers"): OWN_DEVICE,
    ("POST", "/api/v1/devices/{device_id}/webrtc"): {"device:self"},
    ("PUT", "/api/v1/devices/{device_id}/ddns"): OWN_DEVICE,
    ("GET", "/api/v1/devices/{device_id}/ddns"): OWN_DEVICE,
    ("DELETE", "/api/v1/devices/{device_id}/ddns"): OWN_DEVICE,
    ("GET", "/api/v1/billing/balance"): ACCOUNT,
    ("GET", "/api/v1/billing/entries"): ACCOUNT,
    ("POST", "/api/v1/billing/holds"): ACCOUNT,
    ("GET", "/api/v1/billing/holds/{hold_id}"): ACCOUNT,
    ("POST", "/api/v1/billing/holds/{hold_id}/capture"): ACCOUNT,
    ("POST", "/api/v1/billing/holds/{hold_id}/release"): ACCOUNT,
    ("POST", "/api/v1/payments/process"): ACCOUNT,
    ("GET", "/api/v1/payments/providers"): ACCOUNT,
    ("GET", "/api/v1/payments/methods"): ACCOUNT,
    ("POST", "/api/v1/payments/methods"): ACCOUNT,
    ("GET", "/api/v1/payments/methods/{method_id}"): ACCOUNT,
    ("DELETE", "/api/v1/payments/methods/{method_id}"): ACCOUNT,
    ("POST", "/api/v1/payments/methods/{method_id}/default"): ACCOUNT,
    ("POST", "/api/v1/payments/methods/{method_id}/verify"): ACCOUNT,
    ("POST", "/api/v1/payments/webhooks/stripe"): ANYONE,
    ("POST", "/api/v1/payments/webhooks/paypal"): ANYONE,
    ("GET", "/api/v1/plans"): ANYONE,
    ("GET", "/api/v1/subscriptions"): ACCOUNT,
    ("POST", "/api/v1/subscriptions"): ACCOUNT,
    ("PUT", "/api/v1/subscriptions"): ACCOUNT,
    ("DELETE", "/api/v1/subscriptions"): ACCOUNT,
    ("POST", "/api/v1/subscriptions/resume"): ACCOUNT,
    ("GET", "/api/v1/usage"): ACCOUNT,
    ("GET", "/api/v1/invoices"): ACCOUNT,
    ("GET", "/api/v1/invoices/{invoice_id}"): ACCOUNT,
    ("GET", "/api/v1/payouts"): ACCOUNT,
    ("POST", "/api/v1/payouts"): ACCOUNT,
    ("GET", "/api/v1/payouts/settings"): ACCOUNT,
    ("PUT", "/api/v1/payouts/settings"): ACCOUNT,
    ("GET", "/api/v1/payouts/{payout_id}"): ACCOUNT,
    ("PUT", "/api/v1/billing/netting"): ACCOUNT,
    ("GET", "/api/v1/kyc"): ACCOUNT,
    ("POST", "/api/v1/kyc"): ACCOUNT,
    ("GET", "/api/v1/billing/limits"): ACCOUNT,
    ("PUT", "/api/v1/billing/limits"): ACCOUNT,
    ("POST", "/api/v1/marketplace/providers/register"): ACCOUNT,
    ("GET", "/api/v1/marketplace/providers"): ACCOUNT,
    ("GET", "/api/v1/marketplace/providers/{provider_id}"): ACCOUNT,
    ("PUT", "/api/v1/marketplace/providers/{provider_id}"): ACCOUNT,
    ("DELETE", "/api/v1/marketplace/providers/{provider_id}"): ACCOUNT,
    ("POST", "/api/v1/marketplace/requests"): ACCOUNT,
    ("GET", "/api/v1/marketplace/requests/{request_id}"): ACCOUNT,
    ("POST", "/api/v1/marketplace/requests/{request_id}/cancel"): ACCOUNT,
    ("POST", "/api/v1/marketplace/requests/{request_id}/feedback"): ACCOUNT,
    ("GET", "/api/v1/marketplace/transactions"): ACCOUNT,
    ("GET", "/api/v1/marketplace/transactions/{transaction_id}"): ACCOUNT,
    ("POST", "/api/v1/marketplace/transactions/{transaction_id}/dispute"): ACCOUNT,
    ("GET", "/api/v1/marketplace/disputes"): ACCOUNT,
    ("GET", "/api/v1/marketplace/analytics/provider"): ACCOUNT,
    ("GET", "/api/v1/marketplace/analytics/requester"): ACCOUNT,
    ("POST", "/openai/v1/chat/completions"): ACCOUNT,
    ("GET", "/openai/v1/models"): ACCOUNT,
    ("POST", "/api/v1/locks/acquire"): NETWORK,
    ("POST", "/api/v1/locks/renew"): NETWORK,
    ("POST", "/api/v1/locks/release"): NETWORK,
    ("GET", "/api/v1/locks"): ACCOUNT,
    ("GET", "/api/admin/users"): {"operator"},
    ("POST", "/api/admin/users/{user_id}/suspend"): {"operator"},
    ("POST", "/api/admin/users/{user_id}/reactivate"): {"operator"},
    ("GET", "/api/admin/users/{user_id}/devices"): {"operator"},
    ("GET", "/api/admin/users/{user_id}"): {"operator"},
    ("DELETE", "/api/admin/users/{user_id}"): {"operator"},
    ("POST", "/api/admin/users/{user_id}/kyc"): {"operator"},
    ("GET", "/api/admin/devices"): {"operator"},
    ("GET", "/api/admin/networks/{network_id}/devices/{device_id}"): {"operator"},
    ("DELETE", "/api/admin/networks/{network_id}/devices/{device_id}"): {"operator"},
    ("GET", "/api/admin/networks"): {"operator"},
    ("GET", "/api/admin/networks/{network_id}"): {"operator"},
    ("PUT", "/api/admin/networks/{network_id}"): {"operator"},
    ("DELETE", "/api/admin/networks/{network_id}"): {"operator"},
    ("GET", "/api/admin/enrollment-keys"): {"operator"},
    ("GET", "/api/admin/audit"): {"operator"},
    ("DELETE", "/api/admin/enrollment-keys/{key_id}"): {"operator"},
    ("GET", "/api/admin/networks/{network_id}/locks"): {"operator"},
    ("POST", "/api/admin/marketplace/disputes/{dispute_id}/resolve"): {"operator"},
}
# Routes whose admitted call ends the caller (or its account, or its device): each such call
# gets callers of its own.
DESTRUCTIVE = {
    ("POST", "/api/v1/auth/logout"),
    ("DELETE", "/api/v1/users/me"),
    ("DELETE", "/api/v1/devices/{device_id}"),
    ("DELETE", "/api/admin/users/{user_id}"),
    ("DELETE", "/api/admin/networks/{network_id}/devices/{device_id}"),
}


class Callers:
    """One account with a device (``phone``) and a sibling device (``laptop``) in its home
    network, a second network, an operator, and a target user for the operator routes."""

    def __init__(self, http: httpx.AsyncClient, tokens: dict[str, User], ids: dict[str, str]):
        self.http = http
        self.tokens = tokens
        self.ids = ids


_made = itertools.count()


async def callers(http: httpx.AsyncClient, outbox: Path, running: Running) -> Callers:
    n = next(_made)
    owner = f"owner{n}@example.org"
    user = await sign_in(http, outbox, owner)
    phone = await sign_in(http, outbox, owner, device_body=device("phone"))
    await sign_in(http, outbox, owner, device_body=device("laptop"))
    home = phone.session["network_id"]
    lab = (await user.post("/api/v1/networks", json={"name": "lab"})).json()["network_id"]
    target = await sign_in(http, outbox, f"target{n}@example.org")
    await sign_in(http, outbox, f"ops{n}@example.org")
    domain = running.services.domain.get()
    await domain.operators.grant_role(f"ops{n}@example.org", "operator")
    operator = await sign_in(http, outbox, f"ops{n}@example.org")  # the new token has the role
    return Callers(
        http,
        {"user": user, "device": phone, "operator": operator},
        {"home": home, "lab": lab, "target": target.session["user_id"]},
    )


def concrete(template: str, kind: str, ids: dict[str, str], *, sibling: bool = False) -> str:
    """The path a caller of ``kind`` would use: its own network, the ``phone`` device (or its
    sibling ``laptop``), the operator routes' target user."""
    values = {
        "device_id": "laptop" if sibling else "phone",
        "network_id": ids["home"],
        "user_id": ids["target"],
        "key_id": "ek_none",
        "hold_id": "hd_none",
        "method_id": "pm_none",
        "invoice_id": "inv_none",
        "payout_id": "po_none",
        "provider_id": "pv_none",
        "request_id": "mr_none",
        "transaction_id": "tx_none",
        "dispute_id": "md_none",
        "provider": "none",
    }
    return re.sub(r"{(\w+)}", lambda m: values[m.group(1)], template)


async def call(http: httpx.AsyncClient, caller: User | None, method: str, path: str) -> Any:
    headers = caller.headers if caller is not None else {}
    # Bodies are left empty: the guard answers before validation, and an admitted caller's
    # 422 is no scope refusal.
    body: dict[str, Any] | None = {} if method in ("POST", "PUT") else None
    return await http.request(method, path, headers=headers, json=body)


def refused_by_scope(response: httpx.Response) -> bool:
    if response.status_code != 403:
        return False
    if response.headers.get("www-authenticate") != 'Bearer error="insufficient_scope"':
        return False
    return bool(response.json()["error"]["code"] == "insufficient_scope")


@pytest.fixture
async def world(data_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path, Running]]:
    async with (
        running_server(data_dir, limits=RELAXED_LIMITS) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        yield http, data_dir / "outbox", running


async def test_every_route_admits_exactly_its_declared_callers(
    world: tuple[httpx.AsyncClient, Path, Running],
) -> None:
    http, outbox, running = world
    spec = (await http.get("/openapi.json")).json()
    routes = [
        (method.upper(), template)
        for template, operations in spec["paths"].items()
        for method in operations
    ]
    undeclared = [route for route in routes if route not in EXPECTED]
    assert undeclared == [], "declare who may call these routes, here and in api/_scopes.py"
    assert set(EXPECTED) == set(routes)

    shared = await callers(http, outbox, running)
    checked = 0
    for method, template in routes:
        expected = EXPECTED[(method, template)]
        operation = spec["paths"][template][method.lower()]
        if "anonymous" in expected:
            for kind in ("anonymous", "user", "device", "operator"):
                caller = None if kind == "anonymous" else shared.tokens[kind]
                response = await call(http, caller, method, concrete(template, kind, shared.ids))
                assert response.status_code not in (401, 403), (method, template, kind)
            assert "security" not in operation
            checked += 1
            continue
        assert operation["security"] == [{"bearer": []}], (method, template)

        anonymous = await call(http, None, method, concrete(template, "user", shared.ids))
        assert anonymous.status_code == 401, (method, template)
        assert anonymous.json()["error"]["code"] == "invalid_token"

        attempts = [("user", False), ("operator", False), ("device", False)]
        if "{device_id}" in template:
            attempts.append(("device", True))
        # Refused callers first: they must change nothing for the admitted ones that follow.
        attempts.sort(key=lambda attempt: _admitted(expected, *attempt))
        for kind, sibling in attempts:
            own = shared
            if (method, template) in DESTRUCTIVE and _admitted(expected, kind, sibling):
                own = await callers(http, outbox, running)
            path = concrete(template, kind, own.ids, sibling=sibling)
            response = await call(http, own.tokens[kind], method, path)
            where = (method, path, kind, "sibling" if sibling else "", response.text)
            if _admitted(expected, kind, sibling):
                assert not refused_by_scope(response), where
                assert response.status_code not in (401, 500), where
            else:
                assert refused_by_scope(response), where
            checked += 1
    assert checked == sum(
        1 if "anonymous" in EXPECTED[route] else 3 + ("{device_id}" in route[1]) for route in routes
    )

    # The refused calls changed nothing: the account, its devices and its networks are there.
    user = shared.tokens["user"]
    assert (await user.get("/api/v1/users/me")).status_code == 200
    assert (await user.get(f"/api/v1/networks/{shared.ids['lab']}")).status_code == 200


def _admitted(expected: set[str], kind: str, sibling: bool) -> bool:
    if kind == "device":
        return "device" in expected or ("device:self" in expected and not sibling)
    return kind in expected


async def test_a_device_reaches_only_its_own_network(
    world: tuple[httpx.AsyncClient, Path, Running],
) -> None:
    http, outbox, running = world
    world_ = await callers(http, outbox, running)
    phone = world_.tokens["device"]
    lab, home = world_.ids["lab"], world_.ids["home"]
    # Its user's other network answers exactly like a network that does not exist.
    answers = []
    for network_id in (lab, "n_made_up"):
        for path, params in (
            (f"/api/v1/networks/{network_id}", {}),
            ("/api/v1/devices", {"network_id": network_id}),
            ("/api/v1/devices/laptop", {"network_id": network_id}),
        ):
            response = await phone.get(path, params=params)
            answers.append((response.status_code, response.content))
    assert answers[:3] == answers[3:]
    assert {status for status, _ in answers} == {404}
    networks = (await phone.get("/api/v1/networks")).json()["items"]
    assert [n["network_id"] for n in networks] == [home]
    listed = (await phone.get("/api/v1/devices")).json()["items"]
    assert sorted(d["device_id"] for d in listed) == ["laptop", "phone"]


async def test_a_device_fetches_only_its_own_turn_credentials(
    world: tuple[httpx.AsyncClient, Path, Running],
) -> None:
    http, outbox, running = world
    world_ = await callers(http, outbox, running)
    phone, user = world_.tokens["device"], world_.tokens["user"]
    own = await phone.get("/api/v1/devices/phone/ice-servers")
    assert own.status_code == 200
    sibling = await phone.get("/api/v1/devices/laptop/ice-servers")
    assert refused_by_scope(sibling)
    # Its user may fetch any of theirs: the credentials name that device.
    for name in ("phone", "laptop"):
        fetched = (await user.get(f"/api/v1/devices/{name}/ice-servers")).json()
        usernames = [s.get("username") or "" for s in fetched["ice_servers"]]
        assert any(u.endswith(f"/{name}") for u in usernames), usernames


async def test_a_device_token_never_touches_the_account(
    world: tuple[httpx.AsyncClient, Path, Running],
) -> None:
    http, outbox, running = world
    world_ = await callers(http, outbox, running)
    phone, user = world_.tokens["device"], world_.tokens["user"]
    before = (await user.get("/api/v1/users/me/export")).json()
    for method, path, body in (
        ("DELETE", "/api/v1/users/me", None),
        ("PUT", "/api/v1/users/me", {"display_name": "pwned"}),
        ("GET", "/api/v1/users/me/export", None),
        ("GET", "/api/v1/users/me/audit", None),
        ("POST", "/api/v1/networks", {"name": "pwned"}),
        ("POST", f"/api/v1/networks/{world_.ids['home']}/enrollment-keys", {"ttl_s": 600}),
        ("POST", "/api/v1/devices", device("pwned")),
        ("PUT", "/api/v1/devices/laptop", {"name": "pwned"}),
        ("DELETE", "/api/v1/devices/laptop", None),
    ):
        response = await phone.request(method, path, json=body)
        assert refused_by_scope(response), (method, path, response.text)
    assert (await user.get("/api/v1/users/me/export")).json() == before
    # What it may do to itself, it can.
    renamed = await phone.put("/api/v1/devices/phone", json={"name": "my phone"})
    assert renamed.json()["name"] == "my phone"


def test_an_undeclared_route_stops_the_application() -> None:
    app = Quart("probe")

    @app.get("/api/v1/new-thing")
    async def new_thing() -> str:
        return "?"

    with pytest.raises(RuntimeError, match="GET /api/v1/new-thing"):
        check_routes((rule.rule, rule.methods or ()) for rule in app.url_map.iter_rules())


def test_the_security_docs_list_every_route_with_its_callers() -> None:
    from api._openapi import principals
    from api._scopes import ROUTES

    text = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    documented: dict[str, tuple[str, str, str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            documented[cells[0].strip("`")] = (cells[1], cells[2], cells[3])
    for (method, rule), access in ROUTES.items():
        route = method + " " + re.sub(r"<(?:[^:>]*:)?([^>]+)>", r"{\1}", rule)
        kinds = principals(access)
        if access.public:
            want = ("public", "public", "public")
        else:
            device = "own network" if "device" in kinds else "no"
            device = "itself only" if "device:self" in kinds else device
            want = (
                "yes" if "user" in kinds else "no",
                device,
                "yes" if "operator" in kinds else "no",
            )
        assert documented.get(route) == want, route
    assert len(documented) == len(ROUTES)
