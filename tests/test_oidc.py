"""OpenID Connect sign-in against a local issuer: the happy path and every way it must fail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwk

from tests.clients import RELAXED_LIMITS, User, device, sign_in
from tests.oidc_issuer import CLIENT_ID, CLIENT_SECRET, Issuer
from tests.servers import running_server

REDIRECT = "http://127.0.0.1:9/callback"


@dataclass
class World:
    http: httpx.AsyncClient
    issuer: Issuer
    outbox: Path


@pytest.fixture
async def world(data_dir: Path) -> AsyncIterator[World]:
    issuer = Issuer()
    async with trio.open_nursery() as nursery:
        await nursery.start(issuer.serve)
        provider = {
            "issuer": issuer.url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [REDIRECT],
        }
        async with (
            running_server(
                data_dir, limits=RELAXED_LIMITS, oidc={"providers": {"test": provider}}
            ) as running,
            httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
        ):
            yield World(http, issuer, data_dir / "outbox")
        nursery.cancel_scope.cancel()


async def authorize(world: World) -> tuple[str, str]:
    """Start at Yggdrasil, follow the issuer's redirect as a browser would; the (state, code)."""
    started = await world.http.get(
        "/api/v1/auth/oidc/test/authorize", params={"redirect_uri": REDIRECT}
    )
    assert started.status_code == 200, started.text
    url = started.json()["authorization_url"]
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["client_id"] == [CLIENT_ID]
    assert "nonce" in query
    async with httpx.AsyncClient() as browser:
        redirected = await browser.get(url)
    assert redirected.status_code == 302
    back = parse_qs(urlsplit(redirected.headers["location"]).query)
    assert back["state"] == [started.json()["state"]]
    return back["state"][0], back["code"][0]


async def callback(world: World, state: str, code: str, **extra: Any) -> httpx.Response:
    return await world.http.post(
        "/api/v1/auth/oidc/test/callback", json={"state": state, "code": code, **extra}
    )


async def test_sign_in_creates_then_finds_the_same_account(world: World) -> None:
    state, code = await authorize(world)
    first = await callback(world, state, code, device=device("phone", "alfheim"))
    assert first.status_code == 200, first.text
    phone = User(world.http, first.json())
    assert phone.session["device_id"] == "phone"
    # The PKCE verifier went to the token endpoint (the issuer checked it against the challenge).
    assert world.issuer.token_requests[-1]["code_verifier"]

    state, code = await authorize(world)
    again = await callback(world, state, code)
    assert again.json()["user_id"] == phone.session["user_id"]
    me = (await User(world.http, again.json()).get("/api/v1/users/me")).json()
    assert me["email"] == "alice@example.org"
    assert phone.session["network_id"] == me["home_network_id"]


async def test_a_verified_email_links_to_the_existing_account(world: World) -> None:
    existing = await sign_in(world.http, world.outbox, "alice@example.org")
    state, code = await authorize(world)
    linked = await callback(world, state, code)
    assert linked.json()["user_id"] == existing.session["user_id"]
    export = (await existing.get("/api/v1/users/me/export")).json()
    assert [(i["issuer"], i["subject"]) for i in export["identities"]] == [
        (world.issuer.url, "alice-sub")
    ]


async def test_an_unverified_email_never_links(world: World) -> None:
    existing = await sign_in(world.http, world.outbox, "victim@example.org")
    world.issuer.user = {"sub": "mallory", "email": "victim@example.org", "email_verified": False}
    state, code = await authorize(world)
    response = await callback(world, state, code)
    assert response.status_code == 200
    assert response.json()["user_id"] != existing.session["user_id"]
    mallory = User(world.http, response.json())
    assert (await mallory.get("/api/v1/users/me")).json()["email"] is None


async def test_state_is_single_use(world: World) -> None:
    state, code = await authorize(world)
    assert (await callback(world, state, code)).status_code == 200
    replay = await callback(world, state, code)
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "oidc_failed"
    assert (await callback(world, "made-up-state", code)).status_code == 401


@pytest.mark.parametrize(
    "tamper",
    [
        {"nonce": "not-the-nonce"},
        {"aud": "some-other-client"},
        {"iss": "https://evil.example"},
        {"exp": 1000},
    ],
)
async def test_id_tokens_with_wrong_claims_are_refused(
    world: World, tamper: dict[str, Any]
) -> None:
    world.issuer.tamper = tamper
    state, code = await authorize(world)
    response = await callback(world, state, code)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "oidc_failed"


async def test_id_tokens_signed_by_another_key_are_refused(world: World) -> None:
    world.issuer.signing_key = jwk.RSAKey.import_key(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    state, code = await authorize(world)
    assert (await callback(world, state, code)).status_code == 401


async def test_hmac_id_tokens_are_refused(world: World) -> None:
    # Key confusion: an HS256 token whose HMAC key is the issuer's published public key.
    world.issuer.algorithm = "HS256"
    public = str(world.issuer.key.as_dict(private=False)["n"]).encode()
    world.issuer.signing_key = jwk.OctKey.import_key(public)
    state, code = await authorize(world)
    assert (await callback(world, state, code)).status_code == 401


async def test_exact_redirect_uris_and_known_providers_only(world: World) -> None:
    for uri in (REDIRECT + "/", REDIRECT + "?x=1", "http://evil.example/callback"):
        response = await world.http.get(
            "/api/v1/auth/oidc/test/authorize", params={"redirect_uri": uri}
        )
        assert response.status_code == 422
    unknown = await world.http.get(
        "/api/v1/auth/oidc/nope/authorize", params={"redirect_uri": REDIRECT}
    )
    assert unknown.status_code == 404


async def test_a_code_the_issuer_refuses_is_refused(world: World) -> None:
    state, _ = await authorize(world)
    response = await callback(world, state, "not-a-code")
    assert response.status_code == 401
