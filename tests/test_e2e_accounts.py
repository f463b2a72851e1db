"""The accounts issue's "done when", tried as a new user would, against ``yggdrasil serve``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from benchmarks._harness import yggdrasil_command
from tests.clients import User, device, read_code, sign_in
from tests.servers import server_process

pytestmark = pytest.mark.slow

FAST_SYNC = {"YGG_AUTH_REVOCATION_SYNC_S": "0.2"}


async def cli(data_dir: Path, *args: str) -> str:
    result = await trio.run_process(
        [*yggdrasil_command(), *args, "--data-dir", str(data_dir)], capture_stdout=True
    )
    return result.stdout.decode()


async def test_new_user_from_outbox_to_deletion(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    outbox = data_dir / "outbox"
    with server_process(data_dir, env=FAST_SYNC) as server:
        async with httpx.AsyncClient(base_url=server.api_url, timeout=30) as http:
            response = await http.post(
                "/api/v1/users/register", json={"email": "new@example.org", "display_name": "New"}
            )
            assert response.status_code == 202
            code = await read_code(outbox, "new@example.org")
            session = await http.post(
                "/api/v1/users/verify", json={"email": "new@example.org", "code": code}
            )
            user = User(http, session.json())
            for name in ("one", "two", "three"):
                assert (await user.post("/api/v1/devices", json=device(name))).status_code == 201
            listed = (await user.get("/api/v1/devices")).json()["items"]
            assert [d["device_id"] for d in listed] == ["one", "three", "two"]

            phone = await sign_in(http, outbox, "new@example.org", device_body=device("phone"))
            home = (await user.get("/api/v1/users/me")).json()["home_network_id"]
            assert phone.session["network_id"] == home
            assert len((await phone.get("/api/v1/devices")).json()["items"]) == 4

            export = (await user.get("/api/v1/users/me/export")).json()
            assert export["user"]["display_name"] == "New"
            assert len(export["devices"]) == 4
            assert (await user.delete("/api/v1/users/me")).status_code == 204
            assert (await phone.get("/api/v1/devices")).status_code == 401
        assert server.terminate() == 0
        messages = " ".join(str(e.get("msg", "")) for e in server.log())
        assert "outbox" in messages  # each mail's file is logged for the developer
        assert code not in messages  # ...but never the code itself


async def test_operator_grant_and_key_rotation_from_the_command_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    outbox = data_dir / "outbox"
    with server_process(data_dir, env=FAST_SYNC) as server:
        async with httpx.AsyncClient(base_url=server.api_url, timeout=30) as http:
            ops = await sign_in(http, outbox, "ops@example.org")
            assert (
                await ops.get("/api/admin/users", params={"email": "x@y.org"})
            ).status_code == 403
            output = await cli(data_dir, "admin", "grant", "ops@example.org")
            assert "operator" in output
            # The running server picks up the revocation the command wrote to the store.
            with trio.fail_after(10):
                while (await ops.get("/api/v1/users/me")).status_code != 401:  # noqa: ASYNC110
                    await trio.sleep(0.1)
            ops = await sign_in(http, outbox, "ops@example.org")
            assert (
                await ops.get("/api/admin/users", params={"email": "x@y.org"})
            ).status_code == 200
            before_rotation = await sign_in(http, outbox, "someone@example.org")
        assert server.terminate() == 0

    output = await cli(data_dir, "keys", "rotate")
    assert "new signing key" in output
    with server_process(data_dir) as server:
        async with httpx.AsyncClient(base_url=server.api_url, timeout=30) as http:
            old = User(http, before_rotation.session)
            assert (await old.get("/api/v1/users/me")).status_code == 200
            keys = (await http.get("/.well-known/jwks.json")).json()["keys"]
            assert len(keys) == 2
        assert server.terminate() == 0
    assert (
        "no such user"
        in (
            await trio.run_process(
                [
                    *yggdrasil_command(),
                    "admin",
                    "grant",
                    "ghost@example.org",
                    "--data-dir",
                    str(data_dir),
                ],
                capture_stderr=True,
                check=False,
            )
        ).stderr.decode()
    )
