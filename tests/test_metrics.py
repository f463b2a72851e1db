"""``/metrics`` is for operators: served on the operator listener (loopback by default, optionally
behind a token), never on the public API; what it serves passes ``promtool check metrics``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.clients import RELAXED_LIMITS, device, sign_in
from tests.conftest import IN_CI
from tests.devices import raw_device
from tests.servers import running_server, scrape
from yggdrasil import load_config


def promtool_check(text: str) -> None:
    """``promtool check metrics`` (Debian's prometheus package) accepts ``text``; skipped
    without promtool, except in CI (.ci/run installs it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool is not installed (CI=true)")
        pytest.skip("promtool is not installed")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # not even a lint warning


async def test_metrics_are_served_to_operators_only(data_dir: Path) -> None:
    async with (
        running_server(data_dir, limits=RELAXED_LIMITS) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        public = await http.get("/metrics")
        assert public.status_code == 404
        assert public.json()["error"]["code"] == "not_found"
        assert "/metrics" not in (await http.get("/openapi.json")).json()["paths"]

        assert urlsplit(running.operator_url).hostname == "127.0.0.1"
        assert urlsplit(running.operator_url).port != urlsplit(running.api_url).port
        async with httpx.AsyncClient(base_url=running.operator_url, timeout=10) as operator:
            assert (await operator.get("/healthz")).status_code == 404  # only the metrics
            assert (await operator.get("/api/v1/users/me")).status_code == 404
            scraped = await operator.get("/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert scraped.headers["cache-control"] == "no-store"
        text = scraped.text
        assert 'route="/metrics"' not in text  # the API counts its own requests only
        assert 'yggdrasil_http_requests_total{method="GET",route="unmatched",status="404"}' in text
        assert 'yggdrasil_supervisor_child_running{child="operator",supervisor="root"} 1.0' in text

        # With a device session and some TURN traffic, every family is there, and valid.
        phone = await sign_in(http, data_dir / "outbox", "ops@example.org", device_body=device("p"))
        async with raw_device(running.gateway_url, phone.session["access_token"]):
            text = await scrape(running)
    assert "yggdrasil_gateway_sessions 1.0" in text
    assert "yggdrasil_turn_" in text
    assert "process_resident_memory_bytes" in text
    promtool_check(text)


async def test_an_operator_token_guards_the_metrics(data_dir: Path) -> None:
    async with (
        running_server(data_dir, operator={"token": "s3cret-scrape"}) as running,
        httpx.AsyncClient(base_url=running.operator_url, timeout=10) as operator,
    ):
        missing = await operator.get("/metrics")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthorized"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await operator.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert wrong.status_code == 401
        assert "yggdrasil_" not in wrong.text
        right = await operator.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
        assert right.status_code == 200
        assert "yggdrasil_supervisor_restarts_total" in right.text


async def test_a_disabled_operator_listener_serves_nothing(data_dir: Path) -> None:
    async with (
        running_server(data_dir, operator={"enabled": False}) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=10) as http,
    ):
        assert running.operator_url == ""
        assert running.services.operator is None
        assert (await http.get("/metrics")).status_code == 404
        names = {child.id for child in running.root.statistics()}
        assert "operator" not in names
        assert {"api", "gateway", "turn"} <= names


def test_the_operator_listener_stays_on_loopback_when_the_rest_is_public() -> None:
    config = load_config(environ={"YGG_SERVER_HOST": "0.0.0.0"})
    assert (config.operator.host, config.operator.port) == ("127.0.0.1", 9464)
    opened = load_config(environ={"YGG_OPERATOR_HOST": "0.0.0.0", "YGG_OPERATOR_TOKEN": "t"})
    assert (opened.operator.host, opened.operator.token) == ("0.0.0.0", "t")
    assert not load_config(environ={"YGG_OPERATOR_ENABLED": "false"}).operator.enabled
