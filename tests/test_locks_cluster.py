"""Three ``yggdrasil serve`` processes on one PostgreSQL and one NATS: the instance that owns a
network's locks is killed with SIGKILL; the lock manager starts again on another instance with
the grants of the store, so the lock is never granted twice, and its next token is larger."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.clients import sign_in
from tests.test_cluster import cluster

pytestmark = pytest.mark.slow


async def test_killing_the_owner_of_a_networks_locks_moves_them_without_a_double_grant(
    tmp_path: Path, asyncio_loop: None
) -> None:
    async with cluster(tmp_path) as c:
        owner = await sign_in(c.http, c.outbox, "home@example.org")
        phone = await c.device("phone")
        headers = owner.headers
        victim, survivor = c.servers[1], c.servers[2]
        async with (
            httpx.AsyncClient(base_url=victim.api_url, timeout=30, headers=headers) as near,
            httpx.AsyncClient(base_url=survivor.api_url, timeout=30, headers=headers) as far,
        ):
            # The first lock request goes through instance 1: the network's manager starts there.
            got = await near.post("/api/v1/locks/acquire", json={"name": "mic", "lease_ms": 15_000})
            assert got.status_code == 200, got.text
            first = got.json()
            # Another holder (a device of the network) is refused while the lease runs.
            busy = await phone.request(
                "POST",
                f"{survivor.api_url}/api/v1/locks/acquire",
                json={"name": "mic", "lease_ms": 1000},
            )
            assert busy.status_code == 409, busy.text
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait(timeout=10)

            answers: list[tuple[float, int, str]] = []
            moved = None
            with trio.fail_after(40):
                while True:
                    response = await phone.request(
                        "POST",
                        f"{survivor.api_url}/api/v1/locks/acquire",
                        json={"name": "mic", "lease_ms": 5000},
                    )
                    at_ms = time.time() * 1000
                    code = response.json()["error"]["code"] if response.status_code != 200 else ""
                    answers.append((at_ms, response.status_code, code))
                    if moved is None and response.status_code == 409:
                        # The manager runs again somewhere and knows the grant from the store.
                        view = await far.get("/api/v1/locks")
                        if view.status_code == 200:
                            moved = [(i["holder"], i["token"]) for i in view.json()["items"]]
                    if response.status_code == 200:
                        second = response.json()
                        break
                    await trio.sleep(0.2)
    # Never granted while the first lease ran, whichever instance answered.
    granted_at = answers[-1][0]
    assert granted_at >= first["expires_at"] - 50, (first, answers[-3:])
    assert {status for _, status, _ in answers[:-1]} <= {409, 503}
    assert {code for _, status, code in answers[:-1] if status == 409} == {"busy"}
    assert moved == [(f"user:{owner.session['user_id']}", first["token"])]
    assert second["token"] > first["token"]
