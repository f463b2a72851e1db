"""The marketplace as a new user meets it, on each store backend: one user runs
``yggdrasil provider run --model echo`` (a subprocess) and registers it; another sends a request
with plain HTTP (streamed as server-sent events) and with the ``openai`` package, and gets the
answer; both see the transaction, and the money adds up to the cent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.clients import payer
from tests.marketplace_helpers import fund, provider_agent, provider_user, register, sse
from yggdrasil.billing import compute_cost, fee
from yggdrasil.server import Running

PROMPT = "the quick brown fox jumps over the lazy dog"


async def test_a_request_streams_from_an_echo_provider_and_settles_to_the_cent(
    server: Running, http: httpx.AsyncClient, outbox: Path, tmp_path: Path
) -> None:
    seller, session = await provider_user(server, http, outbox, "seller@example.org", "gpu-box")
    buyer = await payer(http, outbox, "buyer@example.org")
    await fund(buyer, 1000)

    # Registration needs the device's live session: without the agent, 409.
    offline = await register(seller, "gpu-box")
    assert (offline.status_code, offline.json()["error"]["code"]) == (409, "device_offline"), (
        offline.text
    )
    async with provider_agent(server, session, tmp_path, "--model", "echo"):
        registered = await register(seller, "gpu-box", price=100)
        assert registered.status_code == 201, registered.text
        provider = registered.json()
        assert provider["status"] == "active"
        assert provider["test_tokens_per_s"] >= 1
        listed = await seller.get("/api/v1/marketplace/providers")
        assert [p["provider_id"] for p in listed.json()["items"]] == [provider["provider_id"]]

        body = {
            "model": "echo",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_cost": 50,
            "max_tokens": 100,
        }
        streamed = await buyer.request(
            "POST",
            "/api/v1/marketplace/requests",
            json=body,
            headers={"Idempotency-Key": "r-1", "Accept": "text/event-stream"},
        )
        assert streamed.status_code == 200, streamed.text
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = sse(streamed.text)
        chunks = [data["text"] for kind, data in events if kind == "chunk"]
        assert "".join(chunks) == PROMPT
        assert len(chunks) == 9
        kind, done = events[-1]
        assert kind == "done"
        assert done["state"] == "COMPLETED"
        assert done["provider_id"] == provider["provider_id"]
        assert done["usage"] == {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}
        cost = compute_cost(18, 100)
        assert done["cost"] == cost == 2
        scores = done["decision"]["candidates"]
        assert [s["provider_id"] for s in scores] == [provider["provider_id"]]
        # Nothing names the seller.
        assert "seller" not in streamed.text
        assert session["network_id"] not in streamed.text

        # Readable afterwards; the same key replays the same request.
        again = await buyer.get(f"/api/v1/marketplace/requests/{done['request_id']}")
        assert again.json()["answer"] == PROMPT
        replay = await buyer.request(
            "POST", "/api/v1/marketplace/requests", json=body, headers={"Idempotency-Key": "r-1"}
        )
        assert replay.status_code == 202
        assert replay.json()["request_id"] == done["request_id"]

        # The OpenAI package, pointed at the server, with the user's token as its API key.
        from openai import OpenAI

        def ask(stream: bool) -> str:
            client = OpenAI(
                base_url=f"{server.api_url}/openai/v1",
                api_key=buyer.session["access_token"],
                max_retries=0,
            )
            models = [m.id for m in client.models.list()]
            assert models == ["echo"]
            messages = [{"role": "user", "content": "hello from openai"}]
            if not stream:
                answer = client.chat.completions.create(model="echo", messages=messages)  # type: ignore[arg-type]
                assert answer.usage is not None
                assert answer.usage.total_tokens == 6
                return answer.choices[0].message.content or ""
            parts: Any = client.chat.completions.create(
                model="echo",
                messages=messages,  # type: ignore[arg-type]
                stream=True,
            )
            return "".join(c.choices[0].delta.content or "" for c in parts if c.choices)

        assert await trio.to_thread.run_sync(ask, False) == "hello from openai"
        assert await trio.to_thread.run_sync(ask, True) == "hello from openai"

    # The money: the buyer paid 2 + 1 + 1 cents, the seller earned them less the fee.
    costs = [cost, compute_cost(6, 100), compute_cost(6, 100)]
    fees = [fee(c, 1000) for c in costs]
    buyer_balance = (await buyer.get("/api/v1/billing/balance")).json()
    assert buyer_balance["balance"] == 1000 - sum(costs)
    assert buyer_balance["held"] == 0
    seller_balance = (await seller.get("/api/v1/billing/balance")).json()
    assert seller_balance["earnings"] == sum(costs) - sum(fees)
    domain = server.services.domain.get()
    check = await domain.ledger.verify()
    assert check.ok, check
