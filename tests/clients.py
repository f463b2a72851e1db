"""A small API client for tests: signs users up through the real HTTP API and the outbox."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from typing import Any

import httpx
import trio

from relay.client import DeviceClient

RELAXED_LIMITS = {
    "per_client_rate": 10_000.0,
    "per_client_burst": 10_000,
    "per_principal_rate": 10_000.0,
    "per_principal_burst": 10_000,
    "auth_per_client_rate": 10_000.0,
    "auth_per_client_burst": 10_000,
}


async def read_code(outbox: Path, address: str, *, seen: int = 0) -> str:
    """The code in the newest message to ``address`` once there are more than ``seen``."""
    assert seen >= 0
    with trio.fail_after(10):
        while True:
            messages = []
            for raw in _messages(outbox):
                message = email.message_from_bytes(raw, policy=email.policy.default)
                if message["To"] == address:
                    messages.append(message)
            if len(messages) > seen:
                body = messages[-1].get_body(("plain",))
                assert body is not None
                found = re.search(r"code is (\d{6})", body.get_content())
                assert found is not None
                return found.group(1)
            await trio.sleep(0.02)


def _messages(outbox: Path) -> list[bytes]:
    """The outbox's messages in the order they were written (a quick local read)."""
    if not outbox.exists():
        return []
    return [path.read_bytes() for path in sorted(outbox.glob("*.eml"))]


def count_mail(outbox: Path, address: str) -> int:
    if not outbox.exists():
        return 0
    return sum(
        1
        for path in outbox.glob("*.eml")
        if email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["To"] == address
    )


def device(device_id: str, world_type: str = "midgard", **extra: Any) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "name": f"device {device_id}",
        "world_type": world_type,
        **extra,
    }


class User:
    """A signed-in user (or device) with its tokens."""

    def __init__(self, http: httpx.AsyncClient, session: dict[str, Any]) -> None:
        self.http = http
        self.session = session

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session['access_token']}"}

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(path, headers=self.headers, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.post(path, headers=self.headers, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.put(path, headers=self.headers, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.delete(path, headers=self.headers, **kwargs)

    async def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        return await self.http.request(
            method, path, headers={**self.headers, **(headers or {})}, **kwargs
        )


async def sign_in(
    http: httpx.AsyncClient,
    outbox: Path,
    address: str,
    *,
    device_body: dict[str, Any] | None = None,
    network_id: str | None = None,
) -> User:
    seen = count_mail(outbox, address)
    response = await http.post("/api/v1/users/login", json={"email": address})
    assert response.status_code == 202, response.text
    code = await read_code(outbox, address, seen=seen)
    body: dict[str, Any] = {"email": address, "code": code}
    if device_body is not None:
        body["device"] = device_body
    if network_id is not None:
        body["network_id"] = network_id
    verified = await http.post("/api/v1/users/verify", json=body)
    assert verified.status_code == 200, verified.text
    return User(http, verified.json())


async def next_event(client: DeviceClient, kind: type[Any], timeout_s: float = 10) -> Any:
    """The next event of ``kind`` the device client reports (others are skipped)."""
    with trio.fail_after(timeout_s):
        while True:
            event = await client.events.get()
            if isinstance(event, kind):
                return event


async def with_test_card(user: User, token: str = "tok_sandbox_visa") -> User:
    """``user`` with a verified sandbox card as their default payer method (what
    ``POST /api/v1/payments/process`` and renewals charge)."""
    response = await user.post("/api/v1/payments/methods", json={"kind": "card", "token": token})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "verified", response.text
    return user


async def payer(
    http: httpx.AsyncClient, outbox: Path, address: str, token: str = "tok_sandbox_visa"
) -> User:
    """A signed-in user with a verified test card (a sandbox token belongs to one user: a second
    payer in one test takes ``tok_sandbox_mastercard``)."""
    return await with_test_card(await sign_in(http, outbox, address), token)
