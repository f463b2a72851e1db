"""E-mail: codes through a real SMTP server, and the outbox for developers."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from aiosmtpd.controller import Controller

from tests.servers import running_server
from yggdrasil import ConfigError, Mail, Mailer
from yggdrasil._mail import parse_smtp_url


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        self.messages.append(message)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    # A plain asyncio loop: trio-asyncio's event loop policy would hand out its own loop here.
    with socket.socket() as probe:  # aiosmtpd needs a concrete port to check itself
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, loop=asyncio.SelectorEventLoop()
    )
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def test_codes_arrive_by_smtp_and_sign_in(data_dir: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    async with (
        running_server(data_dir, mail={"smtp_url": f"smtp://127.0.0.1:{port}"}) as running,
        httpx.AsyncClient(base_url=running.api_url) as http,
    ):
        assert (
            await http.post("/api/v1/users/register", json={"email": "mail@example.org"})
        ).status_code == 202
        with trio.fail_after(10):
            while not inbox.messages:  # noqa: ASYNC110 - the SMTP server runs in its own thread
                await trio.sleep(0.02)
        message = inbox.messages[0]
        assert message["To"] == "mail@example.org"
        body = message.get_body(("plain",))
        assert body is not None
        found = re.search(r"code is (\d{6})", body.get_content())
        assert found is not None
        verified = await http.post(
            "/api/v1/users/verify", json={"email": "mail@example.org", "code": found.group(1)}
        )
        assert verified.status_code == 200
    assert not (data_dir / "outbox").exists()


async def test_unreachable_smtp_is_retried_then_dropped_without_blocking(tmp_path: Path) -> None:
    mailer = Mailer(
        sender="test <t@example.org>",
        outbox=tmp_path,
        smtp_url="smtp://127.0.0.1:9",
        timeout_s=1,
        retries=2,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(mailer.run)
        mailer.submit(Mail("x@example.org", "s", "b"))  # returns at once
        with trio.fail_after(20):
            while mailer.failed == 0:  # noqa: ASYNC110
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert mailer.sent == 0


def test_smtp_urls() -> None:
    target = parse_smtp_url("smtp+starttls://user%40x:p%3Ass@mail.example:2525")
    assert (target.host, target.port, target.mode, target.username, target.password) == (
        "mail.example",
        2525,
        "starttls",
        "user@x",
        "p:ss",
    )
    assert parse_smtp_url("smtps://mail.example").port == 465
    with pytest.raises(ConfigError):
        parse_smtp_url("http://mail.example")


async def test_sign_in_attempts_per_client_are_rate_limited(data_dir: Path) -> None:
    limits = {"auth_per_client_rate": 0.01, "auth_per_client_burst": 3}
    async with (
        running_server(data_dir, limits=limits) as running,
        httpx.AsyncClient(base_url=running.api_url) as http,
    ):
        statuses = []
        for i in range(5):
            response = await http.post("/api/v1/users/login", json={"email": f"u{i}@example.org"})
            statuses.append(response.status_code)
        assert statuses == [202, 202, 202, 429, 429]
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "rate_limited"
        # Other routes are not sign-in attempts.
        assert (await http.get("/healthz")).status_code == 200


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(
    data_dir: Path,
) -> None:
    limits = {"auth_per_client_rate": 0.01, "auth_per_client_burst": 1}
    async with (
        running_server(
            data_dir, limits=limits, api={"trusted_proxies": ["127.0.0.0/8"]}
        ) as running,
        httpx.AsyncClient(base_url=running.api_url) as http,
    ):

        async def login(forwarded: str) -> int:
            response = await http.post(
                "/api/v1/users/login",
                json={"email": "p@example.org"},
                headers={"X-Forwarded-For": forwarded},
            )
            return response.status_code

        assert await login("198.51.100.1") == 202
        assert await login("198.51.100.1") == 429
        assert await login("198.51.100.2") == 202  # another client behind the same proxy
        # A forged hop in front of a real one does not buy a new budget: the nearest counts.
        assert await login("203.0.113.9, 198.51.100.2") == 429


async def test_without_trusted_proxies_the_header_is_ignored(data_dir: Path) -> None:
    limits = {"auth_per_client_rate": 0.01, "auth_per_client_burst": 1}
    async with (
        running_server(data_dir, limits=limits) as running,
        httpx.AsyncClient(base_url=running.api_url) as http,
    ):
        first = await http.post(
            "/api/v1/users/login",
            json={"email": "q@example.org"},
            headers={"X-Forwarded-For": "1.2.3.4"},
        )
        second = await http.post(
            "/api/v1/users/login",
            json={"email": "q@example.org"},
            headers={"X-Forwarded-For": "5.6.7.8"},
        )
        assert (first.status_code, second.status_code) == (202, 429)
