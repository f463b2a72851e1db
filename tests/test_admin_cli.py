"""The operator commands, as ``yggdrasil`` subprocesses on the store a running server uses (the
data directory's SQLite, or PostgreSQL through ``--database-url``): what they change, the
server sees; what they revoke, the server enforces within ``auth.revocation_sync_s``."""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from benchmarks._harness import yggdrasil_command
from tests.clients import RELAXED_LIMITS, count_mail, device, read_code, sign_in
from tests.conftest import PG_HOST, PG_PORT, fresh_pg_database
from tests.devices import close_code, raw_device
from tests.servers import running_server
from yggdrasil import Config, load_config
from yggdrasil._config import OidcProviderConfig
from yggdrasil._config_text import example_config, field_docs
from yggdrasil.server import Running

pytestmark = pytest.mark.slow


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class World:
    running: Running
    http: httpx.AsyncClient
    outbox: Path
    store_args: list[str]

    async def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return await run_cli(*args, *self.store_args, env=env)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("YGG_")}
    environment.update(env or {})
    done = await trio.run_process(
        [*yggdrasil_command(), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=environment,
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def one_line(result: Result) -> str:
    """A failure's stderr: exactly one line, no traceback."""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("yggdrasil: "), result.err
    return lines[0]


@pytest.fixture
async def world(data_dir: Path, backend: str, asyncio_loop: None) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        store_args = ["--data-dir", str(data_dir)]
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
            store_args += ["--database-url", database["url"]]
        running = await stack.enter_async_context(
            running_server(
                data_dir,
                limits=RELAXED_LIMITS,
                database=database,
                auth={
                    "revocation_sync_s": 0.2,
                    "codes_per_address": 100,
                    "codes_per_address_total": 100,
                },
            )
        )
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=running.api_url, timeout=30)
        )
        yield World(running, http, data_dir / "outbox", store_args)


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not await condition():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def cli_actions(world: World) -> list[str]:
    entries = await world.running.services.domain.get().store.audit_entries(limit=100)
    return [e.action for e in entries if e.actor == "cli"]


# ----------------------------------------------------------------------- users


async def test_users_list_show_suspend_reactivate_and_delete(world: World) -> None:
    ada = await sign_in(world.http, world.outbox, "ada@example.org")
    phone = await sign_in(world.http, world.outbox, "ada@example.org", device_body=device("phone"))
    bob = await sign_in(world.http, world.outbox, "bob@example.org")

    listed = await world.cli("users", "list")
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split() == ["USER_ID", "EMAIL", "ROLE", "STATUS", "CREATED", "(UTC)"]
    assert [row.split()[1] for row in rows] == ["ada@example.org", "bob@example.org"]
    found = (await world.cli("users", "list", "--search", "ADA", "--json")).json()
    assert [u["user_id"] for u in found["items"]] == [ada.session["user_id"]]
    first = await world.cli("users", "list", "--limit", "1")
    cursor = re.search(r"more: add --cursor (\S+)", first.out)
    assert cursor is not None, first.out
    rest = (await world.cli("users", "list", "--cursor", cursor.group(1), "--json")).json()
    assert [u["email"] for u in rest["items"]] == ["bob@example.org"]

    shown = await world.cli("users", "show", "ada@example.org")
    assert shown.code == 0, shown.err
    assert "ada@example.org" in shown.out
    assert "phone" in shown.out
    assert "Home" in shown.out
    detail = (await world.cli("users", "show", ada.session["user_id"], "--json")).json()
    assert [d["device_id"] for d in detail["devices"]] == ["phone"]

    # Without --yes nothing happens.
    refused = await world.cli("users", "suspend", "ada@example.org")
    assert refused.code == 2
    assert "--yes" in one_line(refused)
    assert (await ada.get("/api/v1/users/me")).status_code == 200

    async with raw_device(world.running.gateway_url, phone.session["access_token"]) as session:
        suspended = await world.cli("users", "suspend", "ada@example.org", "--yes")
        assert suspended.code == 0, suspended.err
        assert "suspended ada@example.org" in suspended.out
        # The server picks up what the command wrote to the store.
        assert await close_code(session.ws, timeout_s=10.0) == 4001
    assert (await ada.get("/api/v1/users/me")).status_code == 401
    assert (await phone.get("/api/v1/devices")).status_code == 401
    assert await sign_in_status(world, "ada@example.org") == 403

    reactivated = await world.cli("users", "reactivate", "ada@example.org")
    assert reactivated.code == 0, reactivated.err
    assert await sign_in_status(world, "ada@example.org") == 200

    deleted = await world.cli("users", "delete", "bob@example.org", "--yes")
    assert deleted.code == 0, deleted.err

    async def bob_is_out() -> bool:
        return (await bob.get("/api/v1/users/me")).status_code == 401

    await until(bob_is_out)
    missing = await world.cli("users", "show", "bob@example.org")
    assert missing.code == 1
    assert one_line(missing) == "yggdrasil: no such user: bob@example.org"
    assert missing.out == ""
    assert {"admin.list_users", "admin.show_user", "admin.suspended", "admin.delete_user"} <= set(
        await cli_actions(world)
    )
    await world.running.services.domain.get().store.verify_audit_chain()


async def sign_in_status(world: World, address: str) -> int:
    seen = count_mail(world.outbox, address)
    await world.http.post("/api/v1/users/login", json={"email": address})
    code = await read_code(world.outbox, address, seen=seen)
    verified = await world.http.post("/api/v1/users/verify", json={"email": address, "code": code})
    return verified.status_code


# ----------------------------------------------------------------------- devices, networks, keys


async def test_devices_networks_and_enrolment_keys(world: World) -> None:
    ada = await sign_in(world.http, world.outbox, "ada2@example.org")
    bob = await sign_in(world.http, world.outbox, "bob2@example.org")
    ada_home = (await ada.get("/api/v1/users/me")).json()["home_network_id"]
    for user in (ada, bob):
        assert (await user.post("/api/v1/devices", json=device("laptop"))).status_code == 201
    lab = (await ada.post("/api/v1/networks", json={"name": "Lab"})).json()["network_id"]
    cam = await sign_in(
        world.http, world.outbox, "ada2@example.org", device_body=device("cam"), network_id=lab
    )
    key = (await ada.post(f"/api/v1/networks/{lab}/enrollment-keys", json={"ttl_s": 600})).json()

    mine = (await world.cli("devices", "list", "--user", "ada2@example.org", "--json")).json()
    assert [(d["network_id"], d["device_id"]) for d in mine["items"]] == sorted(
        [(ada_home, "laptop"), (lab, "cam")]
    )
    ambiguous = await world.cli("devices", "show", "laptop")
    assert ambiguous.code == 2
    assert "several devices" in one_line(ambiguous)
    shown = await world.cli("devices", "show", f"{ada_home}/laptop")
    assert shown.code == 0, shown.err
    assert ada.session["user_id"] in shown.out
    assert (await world.cli("devices", "delete", "laptop", "--user", "ada2@example.org")).code == 2
    gone = await world.cli("devices", "delete", "laptop", "--user", "ada2@example.org", "--yes")
    assert gone.code == 0, gone.err
    assert (await ada.get("/api/v1/devices/laptop")).status_code == 404
    assert (await bob.get("/api/v1/devices/laptop")).status_code == 200

    keys = (await world.cli("enrolment-keys", "list", "--network", lab, "--json")).json()
    assert [(k["key_id"], k["status"]) for k in keys["items"]] == [(key["key_id"], "usable")]
    assert "key" not in keys["items"][0]
    assert (await world.cli("enrollment-keys", "revoke", key["key_id"])).code == 2
    revoked = await world.cli("enrollment-keys", "revoke", key["key_id"], "--yes")
    assert revoked.code == 0, revoked.err
    enrolled = await world.http.post(
        "/api/v1/enroll", json={"key": key["key"], "device": device("late")}
    )
    assert enrolled.status_code == 401
    usable = await world.cli("enrolment-keys", "list", "--usable")
    assert usable.out.strip() == "no enrolment keys"

    networks = await world.cli("networks", "list", "--user", "ada2@example.org")
    assert networks.code == 0, networks.err
    assert [line.split()[:2] for line in networks.out.splitlines()[1:]] == [
        [ada_home, "Home"],
        [lab, "Lab"],
    ]
    renamed = await world.cli("networks", "rename", lab, "Attic")
    assert renamed.code == 0, renamed.err
    assert (await ada.get(f"/api/v1/networks/{lab}")).json()["name"] == "Attic"
    home = await world.cli("networks", "delete", ada_home, "--yes")
    assert home.code == 1
    assert "home network" in one_line(home)
    async with raw_device(world.running.gateway_url, cam.session["access_token"]) as session:
        deleted = await world.cli("networks", "delete", lab, "--yes")
        assert deleted.code == 0, deleted.err
        assert "1 device(s)" in deleted.out
        assert await close_code(session.ws, timeout_s=10.0) == 4001
    assert (await ada.get(f"/api/v1/networks/{lab}")).status_code == 404
    missing = await world.cli("networks", "show", lab)
    assert missing.code == 1
    assert one_line(missing) == "yggdrasil: no such network"
    assert {
        "admin.list_devices",
        "admin.delete_device",
        "admin.revoke_enrollment_key",
        "admin.rename_network",
        "admin.delete_network",
    } <= set(await cli_actions(world))


# ----------------------------------------------------------------------- status


async def test_status_asks_a_running_server(world: World, backend: str) -> None:
    ready = await run_cli("status", "--url", world.running.api_url)
    assert ready.code == 0, ready.err
    lines = [line.split() for line in ready.out.splitlines()]
    assert lines[0] == ["COMPONENT", "STATE", "DETAIL"]
    assert lines[1] == ["api", "answering", world.running.api_url]
    assert lines[2] == ["store", "ready", backend]
    port = world.running.api_url.rsplit(":", 1)[1]
    from_config = await run_cli("status", env={"YGG_API_PORT": port})
    assert from_config.code == 0, from_config.err
    assert from_config.out == ready.out


async def test_status_of_nothing_is_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nothing = await run_cli("status", "--api-port", str(port))
    assert nothing.code == 1
    assert f"no server answers at http://127.0.0.1:{port}" in one_line(nothing)
    assert nothing.out == ""


@pytest.mark.postgres
async def test_status_names_the_component_that_is_not_ready(
    data_dir: Path, pg_database: str
) -> None:
    from tests.test_postgres_outage import Proxy

    proxy = Proxy()
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        url = pg_database.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")
        async with running_server(
            data_dir, database={"url": url, "query_timeout_s": 1.0}
        ) as running:
            assert (await run_cli("status", "--url", running.api_url)).code == 0
            proxy.cut()
            down = await run_cli("status", "--url", running.api_url)
            assert down.code == 1
            store = down.out.splitlines()[2].split(maxsplit=3)
            assert store[:3] == ["store", "not", "ready"], down.out
            proxy.up = True
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------- config


async def test_config_show_is_the_effective_configuration_with_secrets_masked(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "yggdrasil.toml"
    config_file.write_text(
        "[database]\n"
        'url = "postgresql://ygg:db-pass-123@db.internal:5432/ygg"\n'
        "[turn]\n"
        'static_users = ["bench:turn-pass-456"]\n'
        "[bus]\n"
        'password = "bus-pass-789"\n'
        "[mail]\n"
        'smtp_url = "smtps://mailer:smtp-pass-000@mail.internal:465"\n'
        "[oidc.providers.google]\n"
        'issuer = "https://accounts.google.com"\n'
        'client_id = "abc"\n'
        'client_secret = "oidc-secret-111"\n'
        'redirect_uris = ["https://app.example/cb"]\n'
    )
    shown = await run_cli(
        "config",
        "show",
        "--config",
        str(config_file),
        "--host",
        "0.0.0.0",
        env={"YGG_API_PORT": "9999", "YGG_BUS_TOKEN": "nats-token-222"},
    )
    assert shown.code == 0, shown.err
    for secret in ("db-pass-123", "turn-pass-456", "bus-pass-789", "smtp-pass-000"):
        assert secret not in shown.out
    assert "oidc-secret-111" not in shown.out
    assert "nats-token-222" not in shown.out
    effective = tomllib.loads(shown.out)
    assert effective["server"]["host"] == "0.0.0.0"  # the flag
    assert effective["api"]["port"] == 9999  # the environment
    assert effective["database"]["url"] == "postgresql://ygg:********@db.internal:5432/ygg"
    assert effective["turn"]["static_users"] == ["bench:********"]
    assert effective["mail"]["smtp_url"] == "smtps://mailer:********@mail.internal:465"
    assert effective["oidc"]["providers"]["google"]["client_id"] == "abc"
    assert effective["bus"]["user"] == ""  # empty stays visibly empty
    # Apart from the masks, it is the configuration the server would run with.
    expected = msgspec.to_builtins(
        load_config(
            config_file,
            environ={"YGG_API_PORT": "9999", "YGG_BUS_TOKEN": "nats-token-222"},
            overrides={"server": {"host": "0.0.0.0"}},
        )
    )
    masked = ("url", "static_users", "password", "token", "smtp_url", "client_secret")
    for section, values in expected.items():
        for key, value in values.items():
            if key not in masked and key != "providers":
                assert effective[section][key] == value, (section, key)

    broken = tmp_path / "broken.toml"
    broken.write_text("[api]\nprot = 1\n")
    refused = await run_cli("config", "show", "--config", str(broken))
    assert refused.code == 2
    assert "prot" in one_line(refused)


async def test_config_example_documents_every_setting_and_loads_back(tmp_path: Path) -> None:
    printed = await run_cli("config", "example")
    assert printed.code == 0, printed.err
    text = printed.out
    assert text == example_config()
    example = tmp_path / "example.toml"
    example.write_text(text)
    assert load_config(example) == Config()
    # Every setting is there, at its default, under its documentation.
    defaults = msgspec.to_builtins(Config())
    for section, values in defaults.items():
        assert f"[{section}]" in text
        struct: type[msgspec.Struct] = type(getattr(Config(), section))
        for key in values:
            if key == "providers":
                continue
            assert re.search(rf"^# {key} = ", text, re.M), f"{section}.{key}"
            assert f"YGG_{section}_{key}".upper() in text
            doc = field_docs(struct).get(key)
            if doc:
                assert " ".join(doc.split()[:4]) in " ".join(text.split()), f"{section}.{key}"
    for key in OidcProviderConfig.__struct_fields__:
        assert re.search(rf"^# {key} = ", text, re.M), f"oidc.providers.<name>.{key}"
    assert "# [oidc.providers.google]" in text
    # Uncommenting every setting of the sections changes nothing: the values are the defaults.
    uncommented = []
    in_provider = False
    for line in text.splitlines():
        in_provider = in_provider or line.startswith("# [oidc.providers.")
        if line.startswith("[") and not line.startswith("[oidc"):
            in_provider = False
        if not in_provider and re.match(r"^# \w+ = ", line):
            line = line[2:]
        uncommented.append(line)
    example.write_text("\n".join(uncommented))
    assert load_config(example) == Config()
    assert len(uncommented) > 200


async def test_a_store_command_on_a_bad_configuration_is_one_line(tmp_path: Path) -> None:
    refused = await run_cli(
        "users", "list", "--data-dir", str(tmp_path), "--database-url", "mysql://nope"
    )
    assert refused.code == 2
    one_line(refused)
    unreachable = await run_cli(
        "users",
        "list",
        "--data-dir",
        str(tmp_path),
        "--database-url",
        "postgresql://postgres@127.0.0.1:1/none",
        env={"YGG_DATABASE_CONNECT_TIMEOUT_S": "0.5"},
    )
    assert unreachable.code == 1
    assert "unavailable" in one_line(unreachable)


def test_the_tables_line_up() -> None:
    from yggdrasil._admin_cli import table

    assert table(["A", "LONGER"], [("xyz", None), (1, "b")]).splitlines() == [
        "A    LONGER",
        "xyz  -",
        "1    b",
    ]


def test_every_command_is_documented() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    for command in (
        "yggdrasil users list",
        "yggdrasil users show",
        "yggdrasil users suspend",
        "yggdrasil users reactivate",
        "yggdrasil users delete",
        "yggdrasil devices list",
        "yggdrasil devices show",
        "yggdrasil devices delete",
        "yggdrasil enrolment-keys list",
        "yggdrasil enrolment-keys revoke",
        "yggdrasil networks list",
        "yggdrasil networks show",
        "yggdrasil networks rename",
        "yggdrasil networks delete",
        "yggdrasil config show",
        "yggdrasil config example",
        "yggdrasil status",
        "yggdrasil audit verify",
    ):
        assert command in text, command
