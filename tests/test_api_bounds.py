"""Every JSON body has a size and a nesting bound: a clear 400 or 413, never a 500, and nothing
changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api._json import MAX_DEPTH, decode_body, nesting_depth
from tests.clients import RELAXED_LIMITS, User, device, sign_in
from tests.servers import running_server


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b'"[[[["', 0),
        (b"[]", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'["]]]", "\\"[[[", [[]]]', 3),
        (nested(40), 40),
        (b'{"a":' * 50 + b"1" + b"}" * 50, 50),
    ],
)
def test_nesting_depth(text: bytes, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_quotes_and_escapes_cannot_make_the_scan_slow() -> None:
    # A regular expression that backtracks would take minutes on these.
    assert nesting_depth(b'"' + b'\\"' * 300_000) == 0
    assert nesting_depth(b'"' * 600_000 + nested(33)) == 33  # 300,000 empty strings first


@pytest.fixture
async def http(data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_server(data_dir, limits=RELAXED_LIMITS) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as client,
    ):
        yield client


def assert_bad_request(response: httpx.Response, words: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert words in error["message"]


async def test_deeply_nested_bodies_are_refused_before_parsing(
    http: httpx.AsyncClient, data_dir: Path
) -> None:
    headers = {"content-type": "application/json"}
    for depth in (MAX_DEPTH + 1, 5000, 200_000):
        response = await http.post("/api/v1/users/login", content=nested(depth), headers=headers)
        assert_bad_request(response, "nests deeper")
    # The same for an authenticated route: the device is not renamed.
    user = await sign_in(http, data_dir / "outbox", "deep@example.org")
    await user.post("/api/v1/devices", json=device("laptop"))
    body = b'{"name": "deep", "metadata": {"a": ' + nested(5000) + b"}}"
    response = await user.request(
        "PUT", "/api/v1/devices/laptop", content=body, headers={"content-type": "application/json"}
    )
    assert_bad_request(response, "nests deeper")
    assert (await user.get("/api/v1/devices/laptop")).json()["name"] == "device laptop"


async def test_bodies_within_the_bound_work(http: httpx.AsyncClient, data_dir: Path) -> None:
    user: User = await sign_in(http, data_dir / "outbox", "shallow@example.org")
    metadata = nested(MAX_DEPTH - 2)  # the body's object and "metadata" are two levels more
    body = b'{"device_id": "pc", "name": "pc", "world_type": "asgard", "metadata": {"a": '
    response = await user.request(
        "POST",
        "/api/v1/devices",
        content=body + metadata[1:-1] + b"}}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text


async def test_malformed_and_oversized_bodies(http: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    response = await http.post("/api/v1/users/login", content=b'{"email": ', headers=headers)
    assert_bad_request(response, "not valid JSON")
    response = await http.post("/api/v1/users/login", content=b"[1e999]", headers=headers)
    assert_bad_request(response, "not valid JSON")
    too_big = await http.post(
        "/api/v1/users/login", content=b"[" + b"1," * 600_000 + b"1]", headers=headers
    )
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"


def test_decode_body_matches_json() -> None:
    assert decode_body(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
