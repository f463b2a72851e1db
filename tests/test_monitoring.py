"""The watch for cross-network probing: a principal that asks again and again for ids it cannot
see (API 404s, envelopes to devices refused as unreachable) is audited once per window, counted
on ``/metrics`` and, when configured, blocked; it learns nothing from any of it."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from relay.protocol import Ack, Nack, Request, Response, Send, ThorAction, ThorResult
from tests.clients import RELAXED_LIMITS, User, device, sign_in
from tests.devices import raw_device
from tests.servers import running_server, scrape
from yggdrasil import AuditEntry, Blocked, Metrics, Principal, ProbeWatch, StoreUnavailable
from yggdrasil._monitoring import AUDIT_ACTION, readiness
from yggdrasil.server import Running

IGNORED_HEADERS = {"date"}


def snapshot(response: httpx.Response) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    headers = tuple(
        sorted((k, v) for k, v in response.headers.items() if k.lower() not in IGNORED_HEADERS)
    )
    return response.status_code, response.content, headers


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one series in a scrape (0 when absent)."""
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def probing_entries(running: Running) -> list[AuditEntry]:
    entries = await running.services.domain.get().store.audit_entries()
    return [e for e in entries if e.action == AUDIT_ACTION]


async def wait_for_entries(running: Running, count: int) -> list[AuditEntry]:
    """The probing entries, once there are ``count`` (written by the instance's own task)."""
    with trio.fail_after(10):
        while True:
            entries = await probing_entries(running)
            if len(entries) >= count:
                return entries
            await trio.sleep(0.05)


# ----------------------------------------------------------------------- the watch itself


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def user(user_id: str, role: str = "user") -> Principal:
    return Principal(user_id, role, "t", "f", 0)  # type: ignore[arg-type]


def test_passing_the_threshold_reports_once_per_window() -> None:
    clock = Clock()
    watch = ProbeWatch(threshold=5, window_s=10.0, clock=clock)
    for _ in range(4):
        watch.refused("user:a", "api")
    assert watch.take_reports() == []
    assert watch.statistics().probing == 0
    watch.refused("user:a", "api")
    [report] = watch.take_reports()
    assert (report.principal, report.kind, report.refusals) == ("user:a", "api", 5)
    for _ in range(100):  # more of the same within the window: no second entry
        watch.refused("user:a", "api")
    assert watch.take_reports() == []
    stats = watch.statistics()
    assert (stats.probing, stats.trips, stats.refusals["api"]) == (1, 1, 105)
    clock.now += 10.0  # the next window: still probing, reported again
    watch.refused("user:a", "relay")
    assert [r.kind for r in watch.take_reports()] == ["relay"]
    clock.now += 30.0  # long quiet: the rate falls, nothing is reported
    assert watch.statistics().probing == 0
    for _ in range(4):
        watch.refused("user:a", "api")
    assert watch.take_reports() == []


def test_the_window_slides_over_the_previous_one() -> None:
    clock = Clock()  # 1000.0: the start of a window of 10 s
    watch = ProbeWatch(threshold=10, window_s=10.0, clock=clock)
    clock.now = 1008.0
    for _ in range(8):
        watch.refused("user:a", "api")
    clock.now = 1012.0  # 80 % of the previous window still overlaps: 8 * 0.8 = 6.4 + 4
    for _ in range(3):
        watch.refused("user:a", "api")
    assert watch.take_reports() == []
    watch.refused("user:a", "api")
    assert len(watch.take_reports()) == 1


def test_a_normal_rate_never_trips() -> None:
    clock = Clock()
    watch = ProbeWatch(threshold=30, window_s=60.0, clock=clock)
    for _ in range(1000):  # one mistyped id every 3 seconds, for most of an hour
        watch.refused("user:a", "api")
        clock.now += 3.0
    assert watch.statistics().trips == 0


def test_a_block_refuses_the_prober_for_its_time_only() -> None:
    clock = Clock()
    watch = ProbeWatch(threshold=3, window_s=10.0, block_s=30.0, clock=clock)
    watch.check_principal(user("a"))
    for _ in range(3):
        watch.refused("user:a", "api")
    with pytest.raises(Blocked) as blocked:
        watch.check_principal(user("a"))
    assert (blocked.value.status, blocked.value.code) == (429, "blocked")
    assert blocked.value.retry_after_s == 30
    watch.check_principal(user("b"))  # nobody else
    assert watch.statistics().blocked == 1
    clock.now += 30.0
    watch.check_principal(user("a"))
    assert watch.statistics().blocked == 0


def test_operators_are_not_counted() -> None:
    watch = ProbeWatch(threshold=1, window_s=10.0)
    watch.refused_by(user("ops", "operator"))
    assert watch.statistics().refusals["api"] == 0
    watch.refused_by(user("u"))
    assert watch.statistics().trips == 1


def test_memory_is_bounded_by_the_principals_tracked() -> None:
    watch = ProbeWatch(threshold=1000, window_s=10.0, max_principals=100, max_reports=5)
    for i in range(10_000):
        watch.refused(f"user:{i}", "api")
    assert watch.statistics().tracked == 100
    tripping = ProbeWatch(threshold=1, window_s=10.0, max_reports=5)
    for i in range(20):
        tripping.refused(f"user:{i}", "api")
    assert len(tripping.take_reports()) == 5
    assert tripping.statistics().reports_dropped == 15


# ----------------------------------------------------------------------- metrics for alerts


class FakeDatabase:
    def __init__(self, answers: bool) -> None:
        self.answers = answers

    async def ping(self) -> None:
        if not self.answers:
            await trio.sleep_forever()


async def test_readiness_is_what_readyz_would_answer(autojump_clock: trio.abc.Clock) -> None:
    up = FakeDatabase(answers=True)
    hung = FakeDatabase(answers=False)

    def away() -> Any:
        raise StoreUnavailable()

    assert await readiness(lambda: up, lambda: True, timeout_s=2.0)()  # type: ignore[arg-type,return-value]
    assert not await readiness(lambda: up, lambda: False, timeout_s=2.0)()  # type: ignore[arg-type,return-value]
    assert not await readiness(away, lambda: True, timeout_s=2.0)()
    started = trio.current_time()
    assert not await readiness(lambda: hung, lambda: True, timeout_s=2.0)()  # type: ignore[arg-type,return-value]
    assert trio.current_time() - started == pytest.approx(2.0)


async def test_the_alert_metrics_are_rendered() -> None:
    metrics = Metrics()
    watch = ProbeWatch(threshold=2, window_s=60.0)
    metrics.probes = watch.statistics
    metrics.payouts = lambda: {"paid": 4, "failed": 1, "retry": 2}
    metrics.readiness = readiness(lambda: FakeDatabase(True), lambda: True, timeout_s=1.0)  # type: ignore[arg-type,return-value]
    metrics.gateway_queue_limit = 1024
    watch.refused("user:a", "api")
    watch.refused("device:n/d", "relay")
    watch.refused("device:n/d", "relay")
    metrics.auth_failure("invalid_code")
    await metrics.refresh()
    text = metrics.render().decode()
    assert metric(text, "yggdrasil_ready") == 1
    assert metric(text, "yggdrasil_gateway_queued_bytes_limit") == 1024
    assert metric(text, "yggdrasil_probe_refusals_total", '{kind="api"}') == 1
    assert metric(text, "yggdrasil_probe_refusals_total", '{kind="relay"}') == 2
    assert metric(text, "yggdrasil_probing_principals") == 1
    assert metric(text, "yggdrasil_probe_trips_total") == 1
    assert metric(text, "yggdrasil_payout_attempts_total", '{outcome="failed"}') == 1
    assert metric(text, "yggdrasil_auth_failures_total", '{code="invalid_code"}') == 1
    assert 'yggdrasil_auth_failures_total{code="invalid_token"} 0.0' in text  # there from the start


async def test_refused_tokens_and_codes_are_counted_as_auth_failures(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    bad = {"Authorization": "Bearer not-a-token"}
    for _ in range(3):
        assert (await http.get("/api/v1/users/me", headers=bad)).status_code == 401
    assert (
        await http.post("/api/v1/users/login", json={"email": "x@example.org"})
    ).status_code == 202
    wrong = await http.post(
        "/api/v1/users/verify", json={"email": "x@example.org", "code": "000000"}
    )
    assert wrong.status_code == 401
    text = await scrape(server)
    assert metric(text, "yggdrasil_auth_failures_total", '{code="invalid_token"}') == 3
    assert (
        metric(text, "yggdrasil_auth_failures_total", f'{{code="{wrong.json()["error"]["code"]}"}}')
        >= 1
    )


# ----------------------------------------------------------------------- the API


async def foreign_and_missing(http: httpx.AsyncClient, outbox: Path) -> list[str]:
    """Paths of Alice's things and of things that do not exist, alternately (50 in all)."""
    alice = await sign_in(http, outbox, "alice@example.org")
    home = (await alice.get("/api/v1/users/me")).json()["home_network_id"]
    assert (await alice.post("/api/v1/devices", json=device("laptop"))).status_code == 201
    lab = (await alice.post("/api/v1/networks", json={"name": "lab"})).json()["network_id"]
    paths = []
    for i in range(25):
        network = (home, lab)[i % 2]
        ghost = f"n_{secrets.token_hex(8)}"
        if i % 3 == 0:
            paths += [f"/api/v1/networks/{network}", f"/api/v1/networks/{ghost}"]
        elif i % 3 == 1:
            paths += [
                f"/api/v1/devices/laptop?network_id={home}",
                f"/api/v1/devices/laptop?network_id={ghost}",
            ]
        else:
            paths += [
                f"/api/v1/networks/{network}/enrollment-keys",
                f"/api/v1/networks/{ghost}/enrollment-keys",
            ]
    return paths


async def test_a_user_who_asks_for_50_foreign_ids_is_audited_and_counted(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    paths = await foreign_and_missing(http, outbox)
    mallory = await sign_in(http, outbox, "mallory@example.org")
    answers = [snapshot(await mallory.get(path)) for path in paths]
    # Foreign and nonexistent answer byte for byte alike, before and after the threshold.
    assert {a[0] for a in answers} == {404}
    for foreign, missing in zip(answers[::2], answers[1::2], strict=True):
        assert foreign == missing
    assert (await mallory.get("/api/v1/users/me")).status_code == 200  # not blocked by default

    [entry] = await wait_for_entries(server, 1)
    assert (entry.actor, entry.subject) == ("monitor", f"user:{mallory.session['user_id']}")
    assert entry.detail == {"kind": "api", "refusals": 30, "window_s": 60.0, "blocked_s": 0.0}
    assert "alice" not in str(entry)  # what was asked stays out
    assert "n_" not in str(entry)
    # She finds the entry in her own export: it is about her.
    export = (await mallory.get("/api/v1/users/me/export")).json()
    assert AUDIT_ACTION in {e["action"] for e in export["audit_log"]}

    text = await scrape(server)
    assert metric(text, "yggdrasil_probe_refusals_total", '{kind="api"}') == 50
    assert metric(text, "yggdrasil_probing_principals") == 1
    assert metric(text, "yggdrasil_probe_trips_total") == 1
    await trio.sleep(0.3)
    assert len(await probing_entries(server)) == 1  # one entry per window, not per request


async def test_a_normal_user_is_not_taken_for_a_prober(
    server: Running, http: httpx.AsyncClient, outbox: Path
) -> None:
    ada = await sign_in(http, outbox, "ada@example.org", device_body=device("laptop"))
    home = ada.session["network_id"]
    for _ in range(10):
        assert (await ada.get("/api/v1/networks")).status_code == 200
        assert (await ada.get(f"/api/v1/networks/{home}")).status_code == 200
        assert (await ada.get("/api/v1/devices/laptop")).status_code == 200
        assert (await ada.get("/api/v1/devices")).status_code == 200
    for typo in ("laptpo", "phone", "laptop2"):  # a few honest mistakes
        assert (await ada.get(f"/api/v1/devices/{typo}")).status_code == 404
    await trio.sleep(0.3)
    assert await probing_entries(server) == []
    text = await scrape(server)
    assert metric(text, "yggdrasil_probe_refusals_total", '{kind="api"}') == 3
    assert metric(text, "yggdrasil_probing_principals") == 0


@pytest.fixture
async def blocking(data_dir: Path) -> AsyncIterator[tuple[Running, httpx.AsyncClient]]:
    async with (
        running_server(
            data_dir,
            limits=RELAXED_LIMITS,
            gateway={"ping_interval_s": 60.0},
            monitoring={"probe_threshold": 20, "probe_window_s": 60.0, "probe_block_s": 120.0},
        ) as running,
        httpx.AsyncClient(base_url=running.api_url, timeout=30) as http,
    ):
        yield running, http


async def test_a_blocked_user_gets_429_whatever_it_asks_for(
    blocking: tuple[Running, httpx.AsyncClient], data_dir: Path
) -> None:
    running, http = blocking
    outbox = data_dir / "outbox"
    paths = await foreign_and_missing(http, outbox)
    mallory = await sign_in(http, outbox, "mallory@example.org")
    bystander = await sign_in(http, outbox, "bystander@example.org")
    answers = [snapshot(await mallory.get(path)) for path in paths]
    assert [a[0] for a in answers] == [404] * 20 + [429] * 30
    for foreign, missing in zip(answers[::2], answers[1::2], strict=True):
        assert foreign == missing  # blocked or not, existing or not: the same answer
    blocked = await mallory.get("/api/v1/users/me")  # her own things too, for a while
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "blocked"
    assert 100 <= int(blocked.headers["retry-after"]) <= 120
    assert (await bystander.get("/api/v1/users/me")).status_code == 200

    [entry] = await wait_for_entries(running, 1)
    assert entry.detail["blocked_s"] == 120.0
    text = await scrape(running)
    assert metric(text, "yggdrasil_probe_blocked_principals") == 1
    assert metric(text, "yggdrasil_probe_refusals_total", '{kind="api"}') == 20


# ----------------------------------------------------------------------- the device wire


async def test_a_device_that_addresses_50_foreign_ids_is_audited_and_blocked(
    blocking: tuple[Running, httpx.AsyncClient], data_dir: Path
) -> None:
    running, http = blocking
    outbox = data_dir / "outbox"

    async def dev(email: str, device_id: str) -> User:
        return await sign_in(http, outbox, email, device_body=device(device_id))

    alice = await dev("alice@example.org", "laptop")
    await dev("alice@example.org", "secret-server")
    probe = await dev("mallory@example.org", "probe")
    buddy = await dev("mallory@example.org", "buddy")
    async with (
        raw_device(running.gateway_url, alice.session["access_token"]),
        raw_device(running.gateway_url, probe.session["access_token"]) as prober,
        raw_device(running.gateway_url, buddy.session["access_token"]),
    ):
        await prober.send(Send(id=1, to="buddy", data=b"hi"))
        assert await prober.receive_type((Ack, Nack)) == Ack(id=1)

        targets = []
        for i in range(25):  # Alice's real devices, and ids nobody has
            targets += [("laptop", "secret-server")[i % 2], f"ghost-{secrets.token_hex(4)}"]
        answers: list[Any] = []
        for n, target in enumerate(targets, start=100):
            await prober.send(Send(id=n, to=target, data=b"x"))
            answers.append(await prober.receive_type((Ack, Nack)))
        assert answers == [Nack(id=n, reason="unreachable") for n in range(100, 150)]

        # Blocked now: even its own network's online peer is "unreachable", like a ghost.
        await prober.send(Send(id=2, to="buddy", data=b"hi again"))
        assert await prober.receive_type((Ack, Nack)) == Nack(id=2, reason="unreachable")
        await prober.send(Request(id=3, to="buddy", action=ThorAction("x")))
        response = await prober.receive_type(Response)
        assert response.result == ThorResult(ok=False, error="unreachable")
        # And its token is refused by the API the same way a blocked user's is.
        refused = await probe.get("/api/v1/devices")
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "blocked")

        [entry] = await wait_for_entries(running, 1)
        network = probe.session["network_id"]
        assert entry.subject == f"device:{network}/probe"
        assert entry.detail["kind"] == "relay"
        assert entry.detail["refusals"] == 20
        text = await scrape(running)
    assert metric(text, "yggdrasil_probe_refusals_total", '{kind="relay"}') == 20
    assert metric(text, "yggdrasil_probing_principals") == 1
    assert metric(text, "yggdrasil_probe_blocked_principals") == 1
