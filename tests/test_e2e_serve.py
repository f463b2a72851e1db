"""``yggdrasil serve`` as a user runs it: a subprocess on port 0, stopped with SIGTERM."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import pg_url, require_postgres
from tests.servers import server_process
from yggdrasil import Scope, SqliteDatabase, Store, Vault, open_vault

pytestmark = pytest.mark.slow


def _vault(data_dir: Path) -> Vault:
    vault = open_vault(data_dir, create=False)
    assert vault is not None
    return vault


def add_user(data_dir: Path, email: str) -> str:
    async def main() -> str:
        db = await SqliteDatabase.open(data_dir / "yggdrasil.sqlite3")
        db.vault = _vault(data_dir)  # the server's keyring: personal data is sealed with it
        try:
            user, _ = await Store(db).create_user(email)
            return user.user_id
        finally:
            await db.aclose()

    return trio.run(main)


def read_email(data_dir: Path, user_id: str) -> str | None:
    async def main() -> str | None:
        db = await SqliteDatabase.open(data_dir / "yggdrasil.sqlite3")
        db.vault = _vault(data_dir)
        try:
            return (await Store(db).get_me(Scope(user_id))).email
        finally:
            await db.aclose()

    return trio.run(main)


def test_serve_answers_stops_on_sigterm_and_keeps_its_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with server_process(data_dir) as server:
        assert server.api_url.startswith("http://127.0.0.1:")
        assert not server.api_url.endswith(":0")
        with httpx.Client(base_url=server.api_url, timeout=10) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            assert http.get("/readyz").json() == {"status": "ready", "store": "sqlite"}
            assert http.get("/metrics").status_code == 404  # operators only, on their listener
            assert "yggdrasil_http_requests_total" in server.metrics()
            assert "/healthz" in http.get("/openapi.json").json()["paths"]
        user_id = add_user(data_dir, "kept@example.org")  # a write while the server runs
        started = time.monotonic()
        assert server.terminate() == 0
        assert time.monotonic() - started < 10
        messages = [entry.get("msg", "") for entry in server.log()]
        listening = [e for e in server.log() if "listening on" in str(e.get("msg", ""))]
        assert sorted(e["listener"] for e in listening) == ["api", "gateway", "operator", "turn"]
        assert all(not e["url"].endswith(":0") for e in listening)
        assert any("received SIGTERM" in m for m in messages)
        assert messages[-1] == "yggdrasil stopped"
        assert all(entry.get("level") != "error" for entry in server.log())
        instances = {entry.get("instance") for entry in server.log()}
        assert len(instances) == 1  # every line names the one instance
        assert None not in instances

    secrets_dir = data_dir / "secrets"
    keys = {p.name: p.read_bytes() for p in secrets_dir.iterdir()}
    assert set(keys) == {"signing-key.pem", "data-key", "data-keyring.json", "turn-secret"}
    for path in secrets_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700

    # Second start on the same data directory: same secrets, no new migrations, data intact.
    with server_process(data_dir) as server:
        with httpx.Client(base_url=server.api_url, timeout=10) as http:
            assert http.get("/readyz").status_code == 200
        assert server.terminate() == 0
        assert any("0 migrations applied now" in e.get("msg", "") for e in server.log())
    assert {p.name: p.read_bytes() for p in secrets_dir.iterdir()} == keys
    assert read_email(data_dir, user_id) == "kept@example.org"


def test_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    import signal

    with server_process(tmp_path / "data") as server:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=15) == 0


def test_serve_on_postgresql(tmp_path: Path) -> None:
    require_postgres()

    async def create() -> str:
        import trio_asyncio

        from tests.conftest import _admin

        name = f"ygg_e2e_{time.monotonic_ns()}"
        async with trio_asyncio.open_loop():
            await _admin(f"CREATE DATABASE {name}")
        return name

    async def drop(name: str) -> None:
        import trio_asyncio

        from tests.conftest import _admin

        async with trio_asyncio.open_loop():
            await _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    name = trio.run(create)
    try:
        with server_process(tmp_path / "data", "--database-url", pg_url(name)) as server:
            with httpx.Client(base_url=server.api_url, timeout=10) as http:
                assert http.get("/readyz").json() == {"status": "ready", "store": "postgres"}
            assert server.terminate() == 0
            logged = " ".join(e.get("msg", "") for e in server.log())
            assert "store ready: postgres:" in logged
    finally:
        trio.run(drop, name)


def test_unreachable_database_fails_start_with_a_clear_message(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="store unavailable") as info,
        server_process(
            tmp_path / "data",
            "--database-url",
            "postgresql://nobody@127.0.0.1:9/none",
            env={"YGG_DATABASE_CONNECT_TIMEOUT_S": "1"},
        ),
    ):
        pass
    assert "exited with 1" in str(info.value)
