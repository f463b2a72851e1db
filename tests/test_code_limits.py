"""E-mail code limits slow an attacker without locking out the victim: codes are counted per
(address, client) and, with a much larger budget, per address; exhausting one client's budget
leaves the owner, signing in from elsewhere, unaffected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import trio

from tests.clients import RELAXED_LIMITS, count_mail, read_code, sign_in
from tests.conftest import fresh_pg_database
from tests.servers import running_server
from tests.test_hashing import CountingArgon2
from yggdrasil import _hashing as hashing
from yggdrasil.server import Running

ATTACKER = "203.0.113.7"
OWNER = "198.51.100.9"
TOTAL = 5


@pytest.fixture
async def server(data_dir: Path, backend: str, asyncio_loop: None) -> AsyncIterator[Running]:
    """Behind a trusted proxy on loopback, so ``X-Forwarded-For`` names the client. Every limit
    but the codes' is relaxed."""
    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
        yield await stack.enter_async_context(
            running_server(
                data_dir,
                limits=RELAXED_LIMITS,
                database=database,
                api={"trusted_proxies": ["127.0.0.0/8"]},
                auth={"codes_per_address": 3, "codes_per_address_total": TOTAL},
            )
        )


@pytest.fixture
async def http(server: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.api_url, timeout=30) as client:
        yield client


@pytest.fixture
def outbox(data_dir: Path) -> Path:
    return data_dir / "outbox"


@pytest.fixture
def argon(monkeypatch: pytest.MonkeyPatch) -> CountingArgon2:
    counting = CountingArgon2()
    monkeypatch.setattr(hashing, "_argon2", counting)
    return counting


def client_at(http: httpx.AsyncClient, source: str) -> httpx.AsyncClient:
    """The same server, as seen through the proxy from ``source``."""
    return httpx.AsyncClient(
        base_url=http.base_url, timeout=30, headers={"X-Forwarded-For": source}
    )


async def login(http: httpx.AsyncClient, address: str) -> httpx.Response:
    return await http.post("/api/v1/users/login", json={"email": address})


async def test_an_attacker_exhausting_an_address_does_not_lock_out_its_owner(
    http: httpx.AsyncClient, outbox: Path, argon: CountingArgon2
) -> None:
    victim = "victim@example.org"
    async with client_at(http, OWNER) as owner:
        await sign_in(owner, outbox, victim)  # an existing account
    async with client_at(http, ATTACKER) as attacker:
        assert [(await login(attacker, victim)).status_code for _ in range(3)] == [202] * 3
        hashes = argon.hashes
        refused = await login(attacker, victim)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 0 < int(refused.headers["retry-after"]) <= 900
        assert argon.hashes == hashes  # refused before a code was even made
        assert (await login(attacker, victim)).status_code == 429

    # The owner, from their own address, still gets a code and signs in with it.
    async with client_at(http, OWNER) as owner:
        seen = count_mail(outbox, victim)
        assert (await login(owner, victim)).status_code == 202
        code = await read_code(outbox, victim, seen=seen)
        verified = await owner.post("/api/v1/users/verify", json={"email": victim, "code": code})
        assert verified.status_code == 200, verified.text
    assert count_mail(outbox, victim) == 1 + 3 + 1


async def test_the_total_budget_bounds_the_mail_to_one_mailbox(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    address = "mailbox@example.org"
    statuses = []
    for n in range(TOTAL + 1):
        async with client_at(http, f"192.0.2.{n + 1}") as client:
            statuses.append((await login(client, address)).status_code)
    assert statuses == [202] * TOTAL + [429]
    async with client_at(http, "192.0.2.200") as fresh:
        refused = await login(fresh, address)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert count_mail(outbox, address) == TOTAL


async def test_known_and_unknown_addresses_are_limited_alike(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    async with client_at(http, OWNER) as owner:
        await sign_in(owner, outbox, "known@example.org")
    answers: dict[str, list[tuple[int, bytes]]] = {}
    async with client_at(http, ATTACKER) as attacker:
        for address in ("known@example.org", "unknown@example.org"):
            answers[address] = []
            for _ in range(4):
                response = await login(attacker, address)
                answers[address].append((response.status_code, response.content))
    assert answers["known@example.org"] == answers["unknown@example.org"]
    assert [status for status, _ in answers["known@example.org"]] == [202, 202, 202, 429]


async def test_parallel_requests_from_one_client_get_exactly_its_budget(
    http: httpx.AsyncClient, outbox: Path, argon: CountingArgon2
) -> None:
    # With a quick hash the writes collide: each must count the others' codes.
    address = "parallel@example.org"
    statuses: list[int] = []
    async with client_at(http, ATTACKER) as attacker:

        async def one() -> None:
            statuses.append((await login(attacker, address)).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(one)
    assert sorted(statuses) == [202] * 3 + [429] * 9
    # The mailer writes after the answer: wait for the three, then make sure no fourth follows.
    await read_code(outbox, address, seen=2)
    await trio.sleep(0.2)
    assert count_mail(outbox, address) == 3


async def test_an_ipv6_client_is_one_client_across_its_64(
    http: httpx.AsyncClient, outbox: Path
) -> None:
    address = "six@example.org"
    statuses = []
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3", "2001:db8:1:2::4"):
        async with client_at(http, host) as client:
            statuses.append((await login(client, address)).status_code)
    assert statuses == [202, 202, 202, 429]
    async with client_at(http, "2001:db8:1:3::1") as neighbour:  # another /64
        assert (await login(neighbour, address)).status_code == 202
