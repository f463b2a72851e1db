"""The HTTP skeleton through a real socket: health, readiness, metrics, OpenAPI, errors."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.servers import running_server, scrape


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in response.text


async def test_health_ready_metrics_openapi(data_dir: Path) -> None:
    async with (
        running_server(data_dir) as running,
        httpx.AsyncClient(base_url=running.api_url) as http,
    ):
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "store": "sqlite"}

        metrics = await http.get(f"{running.operator_url}/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert (
            'yggdrasil_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
        )
        assert (
            'yggdrasil_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/readyz"}'
            in text
        )
        assert 'yggdrasil_supervisor_child_running{child="store",supervisor="root"} 1.0' in text
        assert 'yggdrasil_supervisor_restarts_total{child="api",supervisor="root"} 0.0' in text
        assert "process_resident_memory_bytes" in text

        spec = (await http.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.")
        assert {"/healthz", "/readyz"} <= set(spec["paths"])
        assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
        docs = await http.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()


async def test_errors_have_one_shape(data_dir: Path) -> None:
    async with (
        running_server(data_dir, api={"max_body_bytes": 1024}) as running,
        httpx.AsyncClient(base_url=running.api_url) as http,
    ):
        assert_error(await http.get("/no/such/route"), 404, "not_found")
        not_allowed = await http.delete("/healthz")
        assert_error(not_allowed, 405, "method_not_allowed")
        assert "GET" in not_allowed.headers["allow"]
        assert_error(await http.post("/healthz", content=b"x" * 4096), 413, "payload_too_large")
        metrics = await scrape(running)
        assert 'route="unmatched",status="404"' in metrics


async def test_readyz_is_503_while_the_store_is_gone(data_dir: Path) -> None:
    async with (
        running_server(data_dir) as running,
        httpx.AsyncClient(base_url=running.api_url) as http,
    ):
        store = running.services.domain.get().store
        await store.db.aclose()  # the database disappears under the running server
        assert_error(await http.get("/readyz"), 503, "store_unavailable")
        assert (await http.get("/healthz")).status_code == 200  # alive, just not ready


async def test_unexpected_errors_are_500_without_a_trace() -> None:
    from api import ApiContext, create_app
    from yggdrasil import DomainHandle, Metrics

    app = create_app(ApiContext(metrics=Metrics(), domain=DomainHandle(), version="test"))

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError("secret internals")

    client = app.test_client()
    response = await client.get("/boom")
    assert response.status_code == 500
    body = await response.get_json()
    assert body == {"error": {"code": "internal", "message": "internal error"}}
    ready = await client.get("/readyz")  # no store yet: not ready
    assert ready.status_code == 503
    assert (await ready.get_json())["error"]["code"] == "store_unavailable"


async def test_early_errors_leave_the_connection_usable(data_dir: Path) -> None:
    """An answer sent before the body was read must not strand the next request behind it."""
    limits = {"max_body_bytes": 4096}
    async with (
        running_server(data_dir, api=limits) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=5) as http,
    ):
        too_big = await http.post("/api/v1/users/login", content=b"x" * 100_000)
        assert too_big.status_code == 413
        assert too_big.headers["connection"] == "close"
        assert (await http.get("/healthz")).status_code == 200
        wrong_method = await http.request("PATCH", "/api/v1/users/login", content=b"{" * 1000)
        assert wrong_method.status_code == 405
        assert (await http.get("/healthz")).status_code == 200
        not_utf8 = await http.post(
            "/api/v1/users/login", content=b"\xff\xfe", headers={"content-type": "application/json"}
        )
        assert not_utf8.status_code == 400
        assert not_utf8.json()["error"]["code"] == "bad_request"
