"""What the server's log shows an operator: one access line per HTTP request, and the life of
each device session (connected, replaced, disconnected, refused) - never a token, a code, a
query string or a network's or device's name."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import HandshakeError, open_websocket_url

from tests.clients import device, sign_in
from tests.devices import close_code, raw_device
from tests.servers import ServerProcess, running_server, server_process

NETWORK_NAME = "Grove of Secret Ash"
DEVICE_NAME = "Heimdall's horn"


def entries(server: ServerProcess, logger: str) -> list[dict[str, Any]]:
    return [entry for entry in server.log() if entry.get("logger") == logger]


async def eventually_logged(server: ServerProcess, match: Any, timeout_s: float = 10) -> None:
    with trio.fail_after(timeout_s):
        while not any(match(entry) for entry in server.log()):  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_the_log_tells_requests_and_sessions_and_keeps_secrets_out(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    outbox = data_dir / "outbox"
    with server_process(data_dir) as server:
        async with httpx.AsyncClient(base_url=server.api_url, timeout=30) as http:
            owner = await sign_in(http, outbox, "owner@example.org")
            created = await owner.post("/api/v1/networks", json={"name": NETWORK_NAME})
            assert created.status_code == 201
            network_id = created.json()["network_id"]
            phone = await sign_in(
                http,
                outbox,
                "owner@example.org",
                device_body=device("phone", name=DEVICE_NAME),
                network_id=network_id,
            )
            token = phone.session["access_token"]
            # A token in the query string, and a client-supplied X-Forwarded-For (untrusted).
            listed = await phone.request(
                "GET",
                f"/api/v1/devices?network_id={network_id}&access_token={token}",
                headers={"X-Forwarded-For": "203.0.113.9"},
            )
            assert listed.status_code in (200, 422)  # (an unknown query parameter may be 422)
            refused = await http.get("/api/v1/users/me", headers={"Authorization": "Bearer nope"})
            assert refused.status_code == 401
            forged = await http.get('/x%0A{"level":"error"}')
            assert forged.status_code == 404

            async with (
                raw_device(server.gateway_url, token) as first,
                raw_device(server.gateway_url, token) as second,
            ):
                assert await close_code(first.ws) == 4000  # replaced
                newer = second.welcome.session_id
            older = first.welcome.session_id
            with pytest.raises(HandshakeError):
                async with open_websocket_url(
                    server.gateway_url, extra_headers=[(b"authorization", b"Bearer forged")]
                ):
                    pass

            def disconnected(session_id: str) -> Any:
                return lambda e: e.get("session") == session_id and "code" in e

            await eventually_logged(server, disconnected(older))
            await eventually_logged(server, disconnected(newer))

        assert server.terminate() == 0

    text = server.log_path.read_text()
    secrets = [
        token,
        phone.session["refresh_token"],
        owner.session["access_token"],
        owner.session["refresh_token"],
    ]
    for secret in secrets:
        assert secret not in text
    assert "access_token" not in text  # no query string at all
    codes = re.findall(r"code is (\d{6})", "".join(p.read_text() for p in outbox.iterdir()))
    assert len(codes) == 2
    for code in codes:
        assert not re.search(rf"(?<!\d){code}(?!\d)", text)
    assert NETWORK_NAME not in text
    assert DEVICE_NAME not in text
    assert "Bearer" not in text
    assert "owner@example.org" not in text

    access = entries(server, "api.access")
    by_path = {(e["method"], e["path"]): e for e in access}
    login = by_path[("POST", "/api/v1/users/login")]
    assert login["status"] == 202
    assert login["client"] == "127.0.0.1"
    assert isinstance(login["duration_ms"], float)
    assert login["duration_ms"] >= 0
    assert by_path[("POST", "/api/v1/users/verify")]["status"] == 200
    devices = by_path[("GET", "/api/v1/devices")]
    assert devices["status"] == listed.status_code
    assert devices["client"] == "127.0.0.1"  # X-Forwarded-For from an untrusted peer is ignored
    assert "proxy" not in devices
    assert by_path[("GET", "/api/v1/users/me")]["status"] == 401
    forged_line = next(e for e in access if e["path"].startswith("/x"))
    assert forged_line["path"].startswith("/x%0A")  # still encoded: no second line forged
    assert "\n" not in forged_line["msg"]
    assert all(e.get("level") != "error" for e in server.log())

    sessions = entries(server, "relay._session") + entries(server, "relay._gateway")
    connected = [e for e in sessions if e.get("transport") == "websocket"]
    assert {e["session"] for e in connected} == {older, newer}
    assert all(e["device"] == "phone" and e["network"] == network_id for e in connected)
    replaced = [e for e in sessions if "replaced_by" in e]
    assert [(e["session"], e["replaced_by"], e["device"]) for e in replaced] == [
        (older, newer, "phone")
    ]
    closes = {e["session"]: e for e in sessions if "code" in e}
    assert (closes[older]["code"], closes[older]["reason"]) == (4000, "replaced by a new session")
    assert closes[older]["device"] == "phone"
    assert closes[newer]["reason"] == "device closed"
    refusals = [e for e in sessions if e.get("status") == 401]
    assert len(refusals) == 1
    assert "handshake refused" in refusals[0]["msg"]


def test_the_access_log_can_be_turned_off(tmp_path: Path) -> None:
    with server_process(tmp_path / "data", env={"YGG_LOG_ACCESS": "false"}) as server:
        assert httpx.get(f"{server.api_url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{server.api_url}/nope", timeout=10).status_code == 404
        assert server.terminate() == 0
    assert entries(server, "api.access") == []
    assert any("listening on" in str(e.get("msg")) for e in server.log())


async def test_behind_a_trusted_proxy_the_access_log_names_the_client(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="api.access")
    async with (
        running_server(data_dir, api={"trusted_proxies": ["127.0.0.0/8"]}) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=10) as http,
    ):
        forwarded = {"X-Forwarded-For": "198.51.100.4, 127.0.0.2"}
        assert (await http.get("/healthz?code=123456", headers=forwarded)).status_code == 200
        started = time.monotonic()
        while not [r for r in caplog.records if r.name == "api.access"]:
            assert time.monotonic() - started < 5
            await trio.sleep(0.01)
    record = next(r for r in caplog.records if r.name == "api.access")
    fields = vars(record)
    assert (fields["client"], fields["proxy"]) == ("198.51.100.4", "127.0.0.1")
    assert (fields["method"], fields["path"], fields["status"]) == ("GET", "/healthz", 200)
    assert record.getMessage().startswith('198.51.100.4 "GET /healthz" 200 ')
    assert "123456" not in record.getMessage()
