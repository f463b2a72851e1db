"""The marketplace across three ``yggdrasil serve`` processes on one PostgreSQL and one NATS:
the requester, the provider's session and the instance that settles are different instances.
The stream arrives and the money settles once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from benchmarks._harness import yggdrasil_command
from relay.client import Credentials, DeviceClient
from tests.clients import User, device, payer, sign_in
from tests.cluster import cluster_env, cluster_processes, require_nats, unique_prefix
from tests.conftest import fresh_pg_database, require_postgres
from tests.marketplace_helpers import fund, register, sse
from tests.servers import ServerProcess
from yggdrasil.billing import compute_cost, fee

pytestmark = pytest.mark.slow

PROMPT = "one two three four five six seven"


def creds(server: ServerProcess, session: dict[str, Any]) -> Credentials:
    return Credentials(
        api_url=server.api_url,
        gateway_url=server.gateway_url,
        device_id=session["device_id"],
        network_id=session["network_id"],
        access_token=session["access_token"],
        refresh_token=session["refresh_token"],
    )


def settled_here(server: ServerProcess) -> set[str]:
    """The requests asked by a device that this instance took (its log says so)."""
    return {
        entry["request"]
        for entry in server.log()
        if str(entry.get("msg", "")).startswith("geri: request=")
    }


async def test_requester_provider_and_settling_instance_are_three_instances(
    tmp_path: Path, asyncio_loop: None
) -> None:
    require_postgres()
    bus = require_nats()
    async with fresh_pg_database() as database_url:
        data = tmp_path / "data"
        env = cluster_env(unique_prefix(), YGG_PAYOUTS_KYC_REGIONS="[]")
        with cluster_processes(data, 3, database_url=database_url, bus_url=bus, env=env) as servers:
            outbox = data / "outbox"
            apis = [httpx.AsyncClient(base_url=s.api_url, timeout=30) for s in servers]
            try:
                await _journey(servers, apis, outbox, tmp_path)
            finally:
                for api in apis:
                    await api.aclose()


async def _journey(
    servers: list[ServerProcess], apis: list[httpx.AsyncClient], outbox: Path, tmp_path: Path
) -> None:
    # The seller signs in on instance 0, its agent holds a session on instance 2.
    seller = await sign_in(apis[0], outbox, "seller@example.org")
    method = await seller.post(
        "/api/v1/payments/methods",
        json={"kind": "paypal", "token": "tok_sandbox_paypal", "purposes": ["payout"]},
    )
    assert method.status_code == 201, method.text
    box = await sign_in(apis[0], outbox, "seller@example.org", device_body=device("gpu-box"))
    path = tmp_path / "gpu-box.json"
    path.write_text(json.dumps({**box.session, **_urls(servers[2])}))
    agent = await trio.lowlevel.open_process(
        [*yggdrasil_command(), "provider", "run", "--credentials", str(path), "--model", "echo"],
        stdout=subprocess.PIPE,
    )
    try:
        assert agent.stdout is not None
        seen = b""
        with trio.fail_after(20):
            while b"connected" not in seen:
                chunk = await agent.stdout.receive_some(4096)
                assert chunk, seen
                seen += chunk
        # Registered through instance 1: its test job crosses to the session on instance 2.
        seller_1 = User(apis[1], seller.session)
        registered = await register(seller_1, "gpu-box", price=1000)
        assert registered.status_code == 201, registered.text
        provider_id = registered.json()["provider_id"]

        buyer = await payer(apis[0], outbox, "buyer@example.org")
        await fund(buyer, 1000)
        costs: list[int] = []

        # Over HTTP: posted to instance 0 (which settles it), the provider on instance 2,
        # the stream read from instance 1.
        body = {"model": "echo", "messages": [{"role": "user", "content": PROMPT}], "max_cost": 50}
        posted = await buyer.request(
            "POST", "/api/v1/marketplace/requests", json=body, headers={"Idempotency-Key": "h-1"}
        )
        assert posted.status_code == 202, posted.text
        request_id = posted.json()["request_id"]
        follower = User(apis[1], buyer.session)
        streamed = await follower.get(
            f"/api/v1/marketplace/requests/{request_id}", params={"stream": "true"}
        )
        events = sse(streamed.text)
        assert "".join(d["text"] for k, d in events if k == "chunk") == PROMPT
        done = events[-1][1]
        assert done["state"] == "COMPLETED", done
        assert done["provider_id"] == provider_id
        costs.append(done["cost"])
        assert done["cost"] == compute_cost(14, 1000)

        # On the device wire: the buyer's phone on instance 0 asks service/geri; the bus hands
        # each ask to one instance, which settles it. Ask until instance 1 has settled one
        # (each ask lands there with probability 1/3).
        phone = await sign_in(apis[0], outbox, "buyer@example.org", device_body=device("phone"))
        client = DeviceClient(creds(servers[0], phone.session))
        asked: list[str] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            with trio.fail_after(10):
                await client.wait_connected()
            for n in range(40):
                parts, finished = await client.ask_all(
                    "echo", [("user", PROMPT)], max_cost=50, key=f"w-{n}", timeout_s=30
                )
                assert "".join(parts) == PROMPT
                assert finished.state == "COMPLETED", finished
                assert finished.provider_id == provider_id
                costs.append(finished.cost)
                asked.append(finished.request_id)
                if asked[-1] in settled_here(servers[1]):
                    break
            nursery.cancel_scope.cancel()
        settled = [settled_here(s) for s in servers]
        # Each request was taken by exactly one instance; one of them by instance 1, which holds
        # neither the requester's session (0) nor the provider's (2).
        for request in asked:
            assert sum(request in s for s in settled) == 1, request
        assert settled[1] & set(asked), settled

        # The money: once per request, to the cent, whichever instance settled it.
        paid = (await buyer.get("/api/v1/billing/balance")).json()
        assert paid["balance"] == 1000 - sum(costs)
        assert paid["held"] == 0
        earned = (await seller.get("/api/v1/billing/balance")).json()
        assert earned["earnings"] == sum(c - fee(c, 1000) for c in costs)
        for request in asked:
            got = (await buyer.get(f"/api/v1/marketplace/requests/{request}")).json()
            assert got["state"] == "COMPLETED"
            assert got["answer"] == PROMPT
    finally:
        agent.kill()
        with trio.move_on_after(5):
            await agent.wait()


def _urls(server: ServerProcess) -> dict[str, str]:
    return {"api_url": server.api_url, "gateway_url": server.gateway_url}
