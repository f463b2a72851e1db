"""Hashing is a resource an attacker can spend: made-up secrets cost no hash, and hashing is
bounded process-wide (a few dedicated threads, a bounded queue, then 503 ``busy``)."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import argon2
import httpx
import pytest
import trio

from tests.clients import RELAXED_LIMITS, User, count_mail, read_code, sign_in
from tests.servers import running_server, scrape
from yggdrasil import HashingBusy
from yggdrasil import _hashing as hashing
from yggdrasil._config import AuthConfig
from yggdrasil._hashing import Hasher


class CountingArgon2:
    """Stands in for the module's argon2 hasher: counts every hash and verification, and can
    hold them until ``gate`` is set (a slow hash)."""

    def __init__(self) -> None:
        self.real = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        self.hashes = 0
        self.verifications = 0
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return self.hashes + self.verifications

    def hash(self, secret: str) -> str:
        with self._lock:
            self.hashes += 1
        self.gate.wait(10)
        return self.real.hash(secret)

    def verify(self, encoded: str, secret: str) -> bool:
        with self._lock:
            self.verifications += 1
        self.gate.wait(10)
        return self.real.verify(encoded, secret)


@pytest.fixture
def argon(monkeypatch: pytest.MonkeyPatch) -> CountingArgon2:
    counting = CountingArgon2()
    monkeypatch.setattr(hashing, "_argon2", counting)
    return counting


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for something a pool thread does (real threads: the clock cannot be mocked)."""
    with trio.fail_after(10):
        while True:
            if condition():
                return
            await trio.sleep(0.005)


# ------------------------------------------------------------------ the pool


class SlowJob:
    """A job that blocks its thread until released, recording how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = 0
        self.most = 0
        self.ran: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, n: int) -> int:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.ran.append(n)
        self.release.wait(10)
        with self._lock:
            self.running -= 1
        return n * 10


async def test_pool_runs_at_most_workers_and_refuses_past_the_queue() -> None:
    pool = Hasher(2, 3)
    job = SlowJob()
    results: list[int] = []

    async def call(n: int) -> None:
        results.append(await pool.run(job, n))

    try:
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(call, n)
            await eventually(lambda: job.running == 2 and pool.admitted == 5)
            with pytest.raises(HashingBusy) as refused:
                await pool.run(job, 99)
            assert (refused.value.status, refused.value.code) == (503, "busy")
            assert refused.value.retry_after_s >= 1
            assert pool.refused == 1
            await trio.sleep(0.05)
            assert job.running == 2  # the other three wait, none starts
            job.release.set()
        assert sorted(results) == [0, 10, 20, 30, 40]
        assert job.most == 2
        assert 99 not in job.ran
        assert pool.admitted == 0
        assert await pool.run(job, 7) == 70  # the slots are all free again
    finally:
        job.release.set()
        pool.close()


async def test_a_cancelled_waiter_frees_its_slot_and_its_job_never_runs() -> None:
    pool = Hasher(1, 1)
    job = SlowJob()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, job, 1)
            await eventually(lambda: job.running == 1)
            waiter = trio.CancelScope()

            async def wait_in_queue() -> None:
                with waiter:
                    await pool.run(job, 2)

            nursery.start_soon(wait_in_queue)
            await eventually(lambda: pool.admitted == 2)
            with pytest.raises(HashingBusy):
                await pool.run(job, 3)
            waiter.cancel()
            await eventually(lambda: pool.admitted == 1)
            # The freed place in the queue takes the next caller.
            nursery.start_soon(pool.run, job, 4)
            await eventually(lambda: pool.admitted == 2)
            job.release.set()
        assert job.ran == [1, 4]
        assert pool.admitted == 0
    finally:
        job.release.set()
        pool.close()


async def test_a_cancelled_caller_of_a_running_job_holds_the_slot_until_the_job_ends() -> None:
    pool = Hasher(1, 0)
    job = SlowJob()
    try:
        with trio.move_on_after(10) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run, job, 1)
                await eventually(lambda: job.running == 1)
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        # The thread still hashes: its slot is taken until it ends, then free.
        with pytest.raises(HashingBusy):
            await pool.run(job, 2)
        job.release.set()
        await eventually(lambda: pool.admitted == 0)
        assert await pool.run(job, 3) == 30
    finally:
        job.release.set()
        pool.close()


def test_a_job_that_outlives_its_trio_run_still_frees_its_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = Hasher(1, 0)
    job = SlowJob()

    async def abandon() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, job, 1)
            await eventually(lambda: job.running == 1)
            nursery.cancel_scope.cancel()

    try:
        with caplog.at_level(logging.ERROR):
            trio.run(abandon)
            job.release.set()  # the job ends after its run did: nobody to wake
            deadline = threading.Event()
            for _ in range(1000):
                if pool.admitted == 0:
                    break
                deadline.wait(0.01)
        assert pool.admitted == 0
        assert caplog.records == []  # no "exception calling callback"
    finally:
        job.release.set()
        pool.close()


async def test_errors_of_the_job_reach_the_caller() -> None:
    pool = Hasher(1, 0)

    def broken(_: int) -> int:
        raise ValueError("no")

    try:
        with pytest.raises(ValueError, match="no"):
            await pool.run(broken, 1)
        assert pool.admitted == 0
    finally:
        pool.close()


async def test_hash_and_verify_use_argon2id() -> None:
    encoded = await hashing.hash_secret("s3cret")
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await hashing.verify_secret(encoded, "s3cret")
    assert not await hashing.verify_secret(encoded, "other")
    assert not await hashing.verify_secret("not a hash", "s3cret")


# ------------------------------------------------------------------ over HTTP


def answer(response: httpx.Response) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    """What a client can see of an answer, but its date."""
    headers = tuple(sorted((k, v) for k, v in response.headers.items() if k != "date"))
    return response.status_code, response.content, headers


async def test_made_up_enrolment_keys_cost_no_hash_and_look_like_wrong_ones(
    http: httpx.AsyncClient, outbox: Path, argon: CountingArgon2
) -> None:
    owner = await sign_in(http, outbox, "keys@example.org")
    home = (await owner.get("/api/v1/users/me")).json()["home_network_id"]
    created = await owner.post(f"/api/v1/networks/{home}/enrollment-keys", json={"ttl_s": 600})
    assert created.status_code == 201
    key_id = created.json()["key_id"]
    body = {"device": {"device_id": "probe", "name": "probe", "world_type": "jotnar"}}

    async def enroll(key: str) -> httpx.Response:
        return await http.post("/api/v1/enroll", json={"key": key, **body})

    before = argon.calls
    unknown = await enroll("ek_madeUpKeyId12.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    malformed = await enroll("not-a-key")
    assert argon.calls == before  # neither was hashed
    wrong = await enroll(f"{key_id}.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    assert argon.calls == before + 1  # a known id: its secret is checked
    assert unknown.status_code == 401
    assert unknown.json()["error"]["code"] == "invalid_key"
    assert answer(unknown) == answer(wrong) == answer(malformed)

    # A spent key is refused without a hash, with the same answer.
    assert (await enroll(created.json()["key"])).status_code == 200
    spent = argon.verifications
    again = await enroll(created.json()["key"])
    assert argon.verifications == spent
    assert answer(again) == answer(wrong)


async def test_made_up_refresh_tokens_cost_no_hash_and_look_like_wrong_ones(
    http: httpx.AsyncClient, outbox: Path, argon: CountingArgon2
) -> None:
    user = await sign_in(http, outbox, "tokens@example.org")
    token_id = user.session["refresh_token"].partition(".")[0]

    async def refresh(token: str) -> httpx.Response:
        return await http.post("/api/v1/auth/refresh", json={"refresh_token": token})

    before = (argon.verifications, argon.hashes)
    unknown = await refresh("rt_madeUpTokenId.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    malformed = await refresh("rt_nodot")
    assert (argon.verifications, argon.hashes) == before
    wrong = await refresh(f"{token_id}.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    # A known id: its secret is checked, and nothing is issued.
    assert (argon.verifications, argon.hashes) == (before[0] + 1, before[1])
    assert unknown.status_code == 401
    assert unknown.json()["error"]["code"] == "invalid_grant"
    assert answer(unknown) == answer(wrong) == answer(malformed)
    # The right secret still works: verify, then hash the rotated token.
    rotated = await refresh(user.session["refresh_token"])
    assert rotated.status_code == 200
    assert User(http, rotated.json()).session["refresh_token"] != user.session["refresh_token"]


async def test_codes_that_cannot_be_tried_cost_no_hash(
    http: httpx.AsyncClient, outbox: Path, argon: CountingArgon2
) -> None:
    async def verify(address: str, code: str) -> httpx.Response:
        return await http.post("/api/v1/users/verify", json={"email": address, "code": code})

    address = "codes@example.org"
    await http.post("/api/v1/users/login", json={"email": address})
    code = await read_code(outbox, address)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    before = argon.verifications
    no_code = await verify("never-asked@example.org", "123456")
    malformed = await verify(address, "12x456")
    assert argon.verifications == before
    answers = [await verify(address, wrong) for _ in range(3)]  # tries 2..4 of 5
    assert argon.verifications == before + 3
    burning = await verify(address, wrong)  # the fifth: burns it
    burnt = await verify(address, code)  # the right code, too late: no hash
    assert argon.verifications == before + 4
    assert burnt.json()["error"]["code"] == "invalid_code"
    assert len({answer(r) for r in (no_code, malformed, *answers, burning, burnt)}) == 1
    assert count_mail(outbox, "never-asked@example.org") == 0


async def test_past_the_hashing_bound_sign_in_answers_busy(
    data_dir: Path, asyncio_loop: None, argon: CountingArgon2
) -> None:
    async with (
        running_server(
            data_dir, limits=RELAXED_LIMITS, auth={"hash_workers": 1, "hash_queue": 0}
        ) as server,
        httpx.AsyncClient(base_url=server.api_url, timeout=30) as http,
    ):
        assert (hashing.pool().workers, hashing.pool().queue) == (1, 0)
        argon.gate.clear()  # hashes hold their worker until released
        first: list[httpx.Response] = []

        async def login() -> None:
            first.append(await http.post("/api/v1/users/login", json={"email": "a@example.org"}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(login)
            await eventually(lambda: argon.hashes == 1)
            busy = await http.post("/api/v1/users/login", json={"email": "b@example.org"})
            argon.gate.set()
        assert first[0].status_code == 202
        assert busy.status_code == 503
        assert busy.json()["error"]["code"] == "busy"
        assert busy.headers["Retry-After"] == "1"
        refused = re.search(r"^yggdrasil_hashing_refused_total (\S+)", await scrape(server), re.M)
        assert refused is not None
        assert float(refused.group(1)) >= 1
        assert argon.hashes == 1  # the refused request never reached a worker
        assert count_mail(data_dir / "outbox", "b@example.org") == 0
        # Once the worker is free, the same request goes through.
        again = await http.post("/api/v1/users/login", json={"email": "b@example.org"})
        assert again.status_code == 202


def test_the_pool_is_sized_from_the_configuration() -> None:
    defaults = AuthConfig()
    try:
        resized = hashing.configure(3, 5)
        assert hashing.pool() is resized
        assert (resized.workers, resized.queue) == (3, 5)
        assert hashing.configure(3, 5) is resized  # the same sizes keep the pool
    finally:
        hashing.configure(defaults.hash_workers, defaults.hash_queue)
    assert (defaults.hash_workers, defaults.hash_queue) == (2, 64)


async def test_hashing_threads_yield_the_cpu_to_the_event_loop() -> None:
    def own_priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    pool = Hasher(1, 0)
    try:
        loop_priority = own_priority()
        expected = min(19, loop_priority + hashing.HASH_THREAD_NICENESS)
        assert await pool.run(own_priority) == expected
    finally:
        pool.close()
