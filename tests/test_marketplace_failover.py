"""Failover and the max-cost cap, with real ``yggdrasil provider run`` agents: a provider killed
(SIGKILL) mid-request before its first token, or silent past the first-token timeout, gives the
request to the next provider, and the request is charged once, for the provider that served it;
a request whose cost would pass its max cost stops there and pays at most the max cost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.clients import payer
from tests.marketplace_helpers import (
    ask,
    balances,
    finished,
    fund,
    market_server,
    provider_agent,
    provider_user,
    register,
)
from yggdrasil.billing import compute_cost, fee
from yggdrasil.server import Running

PROMPT = "one two three four five six seven eight"


@pytest.fixture
async def server(data_dir: Path, backend: str, asyncio_loop: None) -> AsyncIterator[Running]:
    async with market_server(data_dir, backend, first_token_timeout_s=1.5) as running:
        yield running


async def test_a_killed_provider_fails_over_to_the_next_with_one_charge(
    server: Running, http: httpx.AsyncClient, outbox: Path, tmp_path: Path
) -> None:
    first, first_session = await provider_user(server, http, outbox, "a@example.org", "box-a")
    second, second_session = await provider_user(
        server, http, outbox, "b@example.org", "box-b", second=True
    )
    buyer = await payer(http, outbox, "buyer@example.org", "tok_sandbox_visa")
    await fund(buyer, 1000)
    models = ["echo", "echo-slow"]
    # A is cheaper (tried first) and waits 60 s before its first token; B answers at once.
    slow = ("--model", "echo", "--model", "echo-slow", "--delay-first-token", "60")
    fast = ("--model", "echo", "--model", "echo-slow", "--delay-first-token", "0")
    async with (
        provider_agent(server, first_session, tmp_path, *slow) as agent_a,
        provider_agent(server, second_session, tmp_path, *fast),
    ):
        a = await register(first, "box-a", price=100, models=models)
        b = await register(second, "box-b", price=200, models=models)
        assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
        a_id, b_id = a.json()["provider_id"], b.json()["provider_id"]

        # The first-token timeout is 1.5 s: kill A as soon as it has the job, well before.
        started = await ask(buyer, "k-1", PROMPT, model="echo-slow", max_cost=50)
        assert started.status_code == 202, started.text
        await agent_a.wait_for("job ", count=2)  # the registration's test job, then this one
        agent_a.kill()
        done = await finished(buyer, started.json()["request_id"])

    assert done["state"] == "COMPLETED", done
    assert done["answer"] == PROMPT
    assert done["decision"]["order"][:2] == [a_id, b_id]
    attempts = [(x["provider_id"], x["outcome"]) for x in done["attempts"]]
    assert attempts == [(a_id, "failed"), (b_id, "served")]
    assert "disconnected" in done["attempts"][0]["error"]
    assert done["provider_id"] == b_id
    cost = compute_cost(16, 200)
    assert done["cost"] == cost == 4
    # One charge: the buyer paid B's cost once, B earned it less the fee, A nothing.
    assert (await balances(buyer))["balance"] == 1000 - cost
    assert (await balances(buyer))["held"] == 0
    assert (await balances(second))["earnings"] == cost - fee(cost, 1000)
    assert (await balances(first))["earnings"] == 0
    check = await server.services.domain.get().ledger.verify()
    assert check.ok, check


async def test_a_provider_silent_past_the_first_token_timeout_fails_over(
    server: Running, http: httpx.AsyncClient, outbox: Path, tmp_path: Path
) -> None:
    first, first_session = await provider_user(server, http, outbox, "a@example.org", "box-a")
    second, second_session = await provider_user(
        server, http, outbox, "b@example.org", "box-b", second=True
    )
    buyer = await payer(http, outbox, "buyer@example.org", "tok_sandbox_visa")
    await fund(buyer, 1000)
    models = ["echo", "echo-slow"]
    slow = ("--model", "echo", "--model", "echo-slow", "--delay-first-token", "30")
    fast = ("--model", "echo", "--model", "echo-slow", "--delay-first-token", "0")
    async with (
        provider_agent(server, first_session, tmp_path, *slow) as agent_a,
        provider_agent(server, second_session, tmp_path, *fast),
    ):
        a = (await register(first, "box-a", price=100, models=models)).json()["provider_id"]
        b = (await register(second, "box-b", price=200, models=models)).json()["provider_id"]
        started = await ask(buyer, "k-1", PROMPT, model="echo-slow", max_cost=50)
        done = await finished(buyer, started.json()["request_id"])
        # A was told to stop the job it was too slow for.
        job = done["attempts"][0]
        await agent_a.wait_for("cancelled ")

    assert done["state"] == "COMPLETED", done
    assert [(x["provider_id"], x["outcome"]) for x in done["attempts"]] == [
        (a, "timeout"),
        (b, "served"),
    ]
    assert job["ttft_ms"] is None
    cost = compute_cost(16, 200)
    assert done["cost"] == cost
    assert (await balances(buyer))["balance"] == 1000 - cost
    assert (await balances(first))["earnings"] == 0
    assert (await balances(second))["earnings"] == cost - fee(cost, 1000)


async def test_a_provider_that_fails_every_job_fails_over_and_the_last_one_fails_free(
    server: Running, http: httpx.AsyncClient, outbox: Path, tmp_path: Path
) -> None:
    seller, session = await provider_user(server, http, outbox, "a@example.org", "box-a")
    buyer = await payer(http, outbox, "buyer@example.org")
    await fund(buyer, 1000)
    async with provider_agent(server, session, tmp_path, "--model", "echo", "--model", "echo-fail"):
        created = await register(seller, "box-a", models=["echo", "echo-fail"])
        assert created.status_code == 201, created.text
        started = await ask(buyer, "k-1", PROMPT, model="echo-fail")
        done = await finished(buyer, started.json()["request_id"])
    assert done["state"] == "FAILED"
    assert [x["outcome"] for x in done["attempts"]] == ["failed"]
    assert done["cost"] == 0
    assert await balances(buyer) == {**(await balances(buyer)), "balance": 1000, "held": 0}


async def test_the_stream_stops_at_the_max_cost_and_pays_at_most_it(
    server: Running, http: httpx.AsyncClient, outbox: Path, tmp_path: Path
) -> None:
    seller, session = await provider_user(server, http, outbox, "a@example.org", "box-a")
    buyer = await payer(http, outbox, "buyer@example.org")
    await fund(buyer, 1000)
    # A prompt long enough that the echo provider is still streaming when the server stops it
    # (with a short one it may have sent everything before the stop reaches it, and is then
    # rightly not told). 100 cents per 1,000 tokens: the 2,000-token prompt costs 200 cents,
    # and 210 allow 100 answer tokens of the 2,000 the provider would send.
    words = [f"w{i}" for i in range(2000)]
    async with provider_agent(server, session, tmp_path, "--model", "echo") as agent:
        created = await register(seller, "box-a", price=100)
        assert created.status_code == 201, created.text
        started = await ask(buyer, "k-1", " ".join(words), max_cost=210)
        assert started.status_code == 202, started.text
        done = await finished(buyer, started.json()["request_id"])
        await agent.wait_for("cancelled ")  # the provider was told to stop
    assert compute_cost(2000 + 100, 100) == 210 < compute_cost(2000 + 101, 100)
    assert done["state"] == "COMPLETED"
    assert done["finish_reason"] == "max_cost"
    assert done["answer"] == "".join(f"{word} " for word in words[:100])
    assert done["usage"]["completion_tokens"] == 100
    assert done["cost"] == 210 <= done["max_cost"]
    money = await balances(buyer)
    assert (money["balance"], money["held"]) == (1000 - 210, 0)
    assert (await balances(seller))["earnings"] == 210 - fee(210, 1000)
    check = await server.services.domain.get().ledger.verify()
    assert check.ok, check
