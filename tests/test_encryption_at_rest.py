"""Personal data at rest: a dump of the database shows no e-mail address, name, OIDC subject,
client address (of a sign-in or of a device's session, or reported by the device) or payout
detail; sign-in by e-mail and OIDC still work (blind indexes); a data
key rotation keeps every account readable and moves the rows to the new key while the server
runs; a database made before encryption (migrations up to 0010, plaintext rows) is converted at
start-up. Both store backends."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from benchmarks._harness import yggdrasil_command
from relay.protocol import Ack, Nack, ReportAddress
from tests.clients import RELAXED_LIMITS, User, device, read_code, sign_in
from tests.conftest import fresh_pg_database
from tests.devices import raw_device
from tests.oidc_issuer import CLIENT_ID, CLIENT_SECRET, Issuer
from tests.servers import running_server
from tests.test_oidc import REDIRECT, World, authorize, callback
from yggdrasil import (
    Database,
    DataKeyMissing,
    NewDevice,
    Scope,
    SqliteDatabase,
    Store,
    Tx,
    Vault,
    open_vault,
    rotate_data_key,
)
from yggdrasil._domain import SEALED_COLUMNS
from yggdrasil.ddns import DdnsData, open_addresses
from yggdrasil.server import Running
from yggdrasil.store import AuditLog, key_usage, reseal_all
from yggdrasil.store._migrations import available

ADA = "ada.lovelace@example.org"
ADA_NAME = "Ada Lovelace"
ALICE = "alice@example.org"
ALICE_NAME = "Alice Liddell"
ALICE_SUB = "alice-sub-4711"
KYC_REFERENCE = "KYC-CASE-ADA-LOVELACE-1815"
PAYOUT_LABEL = "Ada Lovelace PayPal"
DEVICE_NAME = "Ada Lovelace's analytical engine"
CLIENT_IP = "127.0.0.1"
REPORTED_IP = "198.51.100.47"
CHARLES = "charles@example.org"

SECRETS_IN_CLEAR = [
    ADA,
    ADA_NAME,
    ALICE,
    ALICE_NAME,
    ALICE_SUB,
    KYC_REFERENCE,
    PAYOUT_LABEL,
    "analytical engine",  # the device's name (a dump doubles its apostrophe)
    "Lovelace",
]


@asynccontextmanager
async def world_on(backend: str, data_dir: Path, **sections: Any) -> AsyncIterator[World]:
    """A server on ``backend`` with a local OIDC issuer whose user is Alice."""
    issuer = Issuer()
    issuer.user = {**issuer.user, "sub": ALICE_SUB, "email": ALICE, "name": ALICE_NAME}
    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        await nursery.start(issuer.serve)
        provider = {
            "issuer": issuer.url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [REDIRECT],
        }
        running = await stack.enter_async_context(
            running_server(
                data_dir,
                limits=RELAXED_LIMITS,
                database=database,
                oidc={"providers": {"test": provider}},
                **sections,
            )
        )
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=running.api_url, timeout=30)
        )
        world = World(http, issuer, data_dir / "outbox")
        world.running = running  # type: ignore[attr-defined]
        world.database_url = database.get("url", "")  # type: ignore[attr-defined]
        yield world


def running_of(world: World) -> Running:
    return world.running  # type: ignore[attr-defined, no-any-return]


def db_of(world: World) -> Database:
    return running_of(world).services.domain.get().store.db


async def dump(world: World, data_dir: Path) -> str:
    """The whole database as its own tools dump it: ``pg_dump`` or SQLite's ``iterdump``."""
    await running_of(world).services.domain.get().store.audit_log.seal()
    url: str = world.database_url  # type: ignore[attr-defined]
    if url:
        done = await trio.run_process(["pg_dump", "--data-only", url], capture_stdout=True)
        return done.stdout.decode()
    connection = sqlite3.connect(data_dir / "yggdrasil.sqlite3")
    try:
        return "\n".join(connection.iterdump())
    finally:
        connection.close()


async def sign_up_everyone(world: World) -> tuple[User, User]:
    """Ada by e-mail code (with her name, a payout method and a KYC case), Alice by OIDC."""
    sent = await world.http.post(
        "/api/v1/users/register", json={"email": ADA, "display_name": ADA_NAME}
    )
    assert sent.status_code == 202
    await read_code(world.outbox, ADA)  # delivered, so that sign_in waits for its own code
    ada = await sign_in(world.http, world.outbox, ADA)
    engine = {"device_id": "engine", "name": "engine", "world_type": "asgard"}
    assert (await ada.post("/api/v1/devices", json=engine)).status_code == 201
    renamed = await ada.request("PUT", "/api/v1/devices/engine", json={"name": DEVICE_NAME})
    assert renamed.json()["name"] == DEVICE_NAME
    named = await ada.request("PUT", "/api/v1/users/me", json={"display_name": ADA_NAME})
    assert named.status_code == 200, named.text
    paypal = {
        "kind": "paypal",
        "token": "tok_sandbox_paypal",
        "purposes": ["payout"],
        "label": PAYOUT_LABEL,
    }
    added = await ada.post("/api/v1/payments/methods", json=paypal)
    assert added.status_code == 201, added.text
    kyc = await ada.post("/api/v1/kyc", json={"region": "DE", "reference": KYC_REFERENCE})
    assert kyc.status_code in (200, 201), kyc.text
    state, code = await authorize(world)
    signed = await callback(world, state, code)
    assert signed.status_code == 200, signed.text
    return ada, User(world.http, signed.json())


async def device_reports_its_address(world: World) -> User:
    """Charles's laptop joins (its session comes from ``CLIENT_IP``) and reports
    ``REPORTED_IP``; Charles, once his export shows both (the ddns worker recorded them)."""
    running = running_of(world)
    laptop = await sign_in(world.http, world.outbox, CHARLES, device_body=device("laptop"))
    charles = await sign_in(world.http, world.outbox, CHARLES)
    async with raw_device(running.gateway_url, laptop.session["access_token"]) as raw:
        await raw.send(ReportAddress(id=1, addresses=[REPORTED_IP]))
        assert await raw.receive_type((Ack, Nack)) == Ack(id=1)
        with trio.fail_after(10):
            while True:
                export = (await charles.get("/api/v1/users/me/export")).json()
                found = [a for a in export["ddns"]["addresses"] if a["device_id"] == "laptop"]
                if found and found[0]["reported"] == [REPORTED_IP]:
                    break
                await trio.sleep(0.05)
    assert found[0]["seen"] == CLIENT_IP  # the owner's export shows them in clear
    return charles


async def test_a_dump_shows_no_personal_data_in_clear(
    backend: str, data_dir: Path, asyncio_loop: None
) -> None:
    async with world_on(backend, data_dir) as world:
        ada, alice = await sign_up_everyone(world)
        charles = await device_reports_its_address(world)
        # (The OIDC issuer's own URL, stored with each identity, names the loopback too.)
        text = (await dump(world, data_dir)).replace(world.issuer.url, "<issuer>")
        assert "INSERT INTO" in text or "COPY public." in text  # the dump has the rows
        assert "device_addresses" in text  # ... the device's address among them
        assert text.count("enc:") >= 12  # ... sealed
        in_clear = [
            c for c in [*SECRETS_IN_CLEAR, CLIENT_IP, REPORTED_IP, "s***@example.org"] if c in text
        ]
        assert in_clear == []

        # What the owners see is the same as ever.
        me = (await ada.get("/api/v1/users/me")).json()
        assert (me["email"], me["display_name"]) == (ADA, ADA_NAME)
        devices = (await ada.get("/api/v1/devices")).json()["items"]
        assert [d["name"] for d in devices] == [DEVICE_NAME]
        export = (await charles.get("/api/v1/users/me/export")).json()
        [address] = export["ddns"]["addresses"]
        assert (address["seen"], address["reported"]) == (CLIENT_IP, [REPORTED_IP])
        export = (await ada.get("/api/v1/users/me/export")).json()
        logins = [e for e in export["audit_log"] if e["action"] == "login.success"]
        assert logins
        assert all(e["detail"]["ip"] == CLIENT_IP for e in logins)
        method = export["billing"]["payment_methods"][0]
        assert (method["label"], method["email_masked"]) == (PAYOUT_LABEL, "s***@example.org")
        assert export["billing"]["kyc"]["reference"] == KYC_REFERENCE
        trail = (await ada.get("/api/v1/users/me/audit")).json()["items"]
        assert {e["detail"]["ip"] for e in trail if e["action"] == "login.success"} == {CLIENT_IP}
        alice_export = (await alice.get("/api/v1/users/me/export")).json()
        assert alice_export["user"]["email"] == ALICE
        assert alice_export["user"]["display_name"] == ALICE_NAME
        assert [i["subject"] for i in alice_export["identities"]] == [ALICE_SUB]

        # Sign-in finds both accounts again through the blind indexes.
        again = await sign_in(world.http, world.outbox, ADA)
        assert again.session["user_id"] == ada.session["user_id"]
        state, code = await authorize(world)
        oidc_again = await callback(world, state, code)
        assert oidc_again.json()["user_id"] == alice.session["user_id"]
        # ... and an operator's search by address or part of it.
        operators = running_of(world).services.domain.get().operators
        operator = Scope("op", role="operator")
        found = await operators.find_users(operator, email=ADA.upper())
        assert [u.user_id for u in found] == [ada.session["user_id"]]
        page = await operators.list_users(operator, search="LOVELACE")
        assert [u.email for u in page.items] == [ADA]


async def test_rotation_keeps_accounts_readable_and_moves_rows_while_serving(
    backend: str, data_dir: Path, asyncio_loop: None
) -> None:
    fast = {"reencrypt_interval_s": 0.1, "reencrypt_batch": 2}
    async with world_on(backend, data_dir, encryption=fast) as world:
        ada, alice = await sign_up_everyone(world)
        charles = await device_reports_its_address(world)
        others = [await sign_in(world.http, world.outbox, f"u{i}@example.org") for i in range(4)]
        db = db_of(world)
        first = db.vault.current
        assert set(await key_usage(db, SEALED_COLUMNS)) == {first}

        old, new = rotate_data_key(data_dir)
        assert (old, new != first) == (first, True)
        with trio.fail_after(20):  # the running server reads the keyring again and re-seals
            while first in await key_usage(db, SEALED_COLUMNS, audit=False):  # noqa: ASYNC110
                await trio.sleep(0.1)
        usage = await key_usage(db, SEALED_COLUMNS)
        assert db.vault.current == new
        assert usage[new] >= 6
        # The audit log never changes: its sealed addresses keep the old key, which stays.
        assert usage.get(first, 0) > 0
        assert first in db.vault.key_ids

        for user, address in [(ada, ADA), (alice, ALICE)] + [
            (u, f"u{i}@example.org") for i, u in enumerate(others)
        ]:
            assert (await user.get("/api/v1/users/me")).json()["email"] == address
        assert (await sign_in(world.http, world.outbox, ADA)).session["user_id"] == (
            ada.session["user_id"]
        )
        [address] = (await charles.get("/api/v1/users/me/export")).json()["ddns"]["addresses"]
        assert (address["seen"], address["reported"]) == (CLIENT_IP, [REPORTED_IP])
        export = (await ada.get("/api/v1/users/me/export")).json()
        assert export["billing"]["kyc"]["reference"] == KYC_REFERENCE
        assert {e["detail"].get("ip") for e in export["audit_log"] if "ip" in e["detail"]} == {
            CLIENT_IP
        }

        # A keyring without the old key cannot open what it sealed: the key id matters.
        bare = Vault.ephemeral()
        sealed = await db.read(_one_sealed_detail)
        with pytest.raises(DataKeyMissing):
            bare.open(sealed, "audit.ip")


async def _one_sealed_detail(tx: Tx) -> str:
    row = await tx.fetchrow("SELECT detail FROM audit_log WHERE detail LIKE '%\"ip\"%' LIMIT 1")
    assert row is not None
    return str(json.loads(row["detail"])["ip"])


# ----------------------------------------------------------------------------- conversion

GRACE = "grace@example.org"
GRACE_NAME = "Grace Hopper"
GRACE_SUB = "grace-sub-1906"
GRACE_IP = "192.0.2.77"
GRACE_KYC = "KYC-CASE-GRACE-HOPPER"
OLD_REPORTED = "203.0.113.19"
GRACE_LABEL = "Grace Hopper bank account"
GRACE_DEVICE = "Grace Hopper's UNIVAC"
OLD_CLEAR = [
    GRACE_DEVICE,
    GRACE,
    GRACE_NAME,
    GRACE_SUB,
    GRACE_IP,
    GRACE_KYC,
    GRACE_LABEL,
    "g***@example.org",
]


async def make_old_database(db: Database) -> None:
    """The schema of migrations 0001 to 0010, with rows as the code before 0011 wrote them:
    everything in clear."""

    async def bootstrap(tx: Tx) -> None:
        await tx.execute_script(
            "CREATE TABLE schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL);\n"
        )

    await db.write(bootstrap)
    for migration in [m for m in available() if m.version <= 10]:

        async def apply(tx: Tx, migration: Any = migration) -> None:
            await tx.execute_script(migration.script(db.dialect))
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, 0)",
                migration.version,
                migration.name,
            )

        await db.write(apply)

    async def rows(tx: Tx) -> None:
        await tx.execute(
            "INSERT INTO users (user_id, email, display_name, home_network_id, created_at,"
            " updated_at) VALUES ('u_grace', $1, $2, 'n_grace', 1, 1)",
            GRACE,
            GRACE_NAME,
        )
        await tx.execute(
            "INSERT INTO networks (network_id, name, owner_id, created_at)"
            " VALUES ('n_grace', 'Home', 'u_grace', 1)"
        )
        await tx.execute(
            "INSERT INTO memberships (network_id, user_id, role, created_at)"
            " VALUES ('n_grace', 'u_grace', 'owner', 1)"
        )
        await tx.execute(
            "INSERT INTO devices (network_id, device_id, user_id, name, world_type,"
            " registered_at) VALUES ('n_grace', 'univac', 'u_grace', $1, 'jotnar', 1)",
            GRACE_DEVICE,
        )
        await tx.execute(
            "INSERT INTO identities (issuer, subject, user_id, email, created_at)"
            " VALUES ('https://id.example', $1, 'u_grace', $2, 1)",
            GRACE_SUB,
            GRACE,
        )
        await tx.execute(
            "INSERT INTO login_codes (code_id, email, code_hash, created_at, expires_at, source)"
            " VALUES ('c_old', $1, 'x', 1, 2, $2)",
            GRACE,
            GRACE_IP,
        )
        await tx.execute(
            "INSERT INTO payment_methods (method_id, user_id, provider, kind, token, payer,"
            " payout, status, label, email_masked, test_mode, created_at, updated_at)"
            " VALUES ('pm_grace', 'u_grace', 'sandbox', 'paypal', 'tok_grace', 0, 1, 'verified',"
            " $1, 'g***@example.org', 1, 1, 1)",
            GRACE_LABEL,
        )
        await tx.execute(
            "INSERT INTO kyc (user_id, region, status, reference, submitted_at)"
            " VALUES ('u_grace', 'DE', 'pending', $1, 1)",
            GRACE_KYC,
        )

    await db.write(rows)


async def test_an_old_database_is_converted_at_start(
    backend: str, data_dir: Path, asyncio_loop: None, bridge: Any
) -> None:
    from yggdrasil import PostgresDatabase, SqliteDatabase

    async with AsyncExitStack() as stack:
        database: dict[str, str] = {}
        old: Database
        if backend == "postgres":
            database["url"] = await stack.enter_async_context(fresh_pg_database())
            old = await PostgresDatabase.open(
                database["url"], bridge, min_size=1, max_size=2, query_timeout_s=10.0
            )
        else:
            await trio.Path(data_dir).mkdir(parents=True)
            old = await SqliteDatabase.open(data_dir / "yggdrasil.sqlite3")
        try:
            await make_old_database(old)
        finally:
            await old.aclose()

        running = await stack.enter_async_context(
            running_server(data_dir, limits=RELAXED_LIMITS, database=database)
        )
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=running.api_url, timeout=30)
        )
        world = World(http, Issuer(), data_dir / "outbox")
        world.running = running  # type: ignore[attr-defined]
        world.database_url = database.get("url", "")  # type: ignore[attr-defined]
        text = await dump(world, data_dir)
        assert [c for c in OLD_CLEAR if c in text] == []
        assert "plain:" not in text
        assert text.count("enc:") >= 7

        grace = await sign_in(http, world.outbox, GRACE)  # found by the new blind index
        assert grace.session["user_id"] == "u_grace"
        me = (await grace.get("/api/v1/users/me")).json()
        assert (me["email"], me["display_name"]) == (GRACE, GRACE_NAME)
        export = (await grace.get("/api/v1/users/me/export")).json()
        assert [(i["subject"], i["email"]) for i in export["identities"]] == [(GRACE_SUB, GRACE)]
        assert [d["name"] for d in export["devices"]] == [GRACE_DEVICE]
        method = export["billing"]["payment_methods"][0]
        assert (method["label"], method["email_masked"]) == (GRACE_LABEL, "g***@example.org")
        assert export["billing"]["kyc"]["reference"] == GRACE_KYC
        # The code in flight before the conversion (its address in clear) was dropped.
        assert [c["code_id"] for c in export["login_codes"]] != ["c_old"]
        assert "c_old" not in {c["code_id"] for c in export["login_codes"]}


async def test_device_addresses_written_before_0015_are_sealed_and_bound_to_their_device(
    database: Database,
) -> None:
    """Rows of ``device_addresses`` as the code of migration 0013 wrote them (in clear) are
    marked by 0015 and sealed by the start-up's :func:`reseal_all`; each opens only as the
    address of its own device, and the owner's export shows them in clear."""
    store = Store(database)
    user, home = await store.create_user(GRACE)
    scope, network_id = Scope(user.user_id), home.network_id
    for device_id in ("univac", "mark1"):
        await store.register_device(scope, network_id, NewDevice(device_id, "x", "midgard"))
    [marking] = [m for m in available() if m.version == 15]

    async def old_rows(tx: Tx) -> None:
        for device_id, seen in (("univac", GRACE_IP), ("mark1", "")):
            await tx.execute(
                "INSERT INTO device_addresses (network_id, device_id, seen, reported,"
                " updated_at) VALUES ($1, $2, $3, $4, 1)",
                network_id,
                device_id,
                seen,
                json.dumps([OLD_REPORTED]),
            )
        await tx.execute_script(marking.script(database.dialect))

    async def rows(tx: Tx) -> list[dict[str, Any]]:
        return await tx.fetch("SELECT * FROM device_addresses ORDER BY device_id DESC")

    await database.write(old_rows)
    assert await reseal_all(database, SEALED_COLUMNS, 1) == 2
    univac, mark1 = await database.read(rows)
    assert univac["seen"].startswith("enc:")
    assert univac["reported"].startswith("enc:")
    assert (mark1["seen"], mark1["reported"][:4]) == ("", "enc:")  # nothing to hide: left empty
    assert [c for c in (GRACE_IP, OLD_REPORTED) if c in repr([univac, mark1])] == []
    vault = database.vault
    assert open_addresses(univac, vault) == (GRACE_IP, [OLD_REPORTED])
    assert open_addresses(mark1, vault) == ("", [OLD_REPORTED])
    with pytest.raises(DataKeyMissing):  # another device's sealed address is not this one's
        open_addresses({**univac, "device_id": "mark1"}, vault)
    with pytest.raises(DataKeyMissing):  # ... nor that of the same device id in another network
        open_addresses({**univac, "network_id": "n_other"}, vault)

    async def export(tx: Tx) -> dict[str, Any]:
        return await DdnsData(database).export(tx, user.user_id)

    addresses = {a["device_id"]: a for a in (await database.read(export))["addresses"]}
    assert (addresses["univac"]["seen"], addresses["univac"]["reported"]) == (
        GRACE_IP,
        [OLD_REPORTED],
    )
    assert await reseal_all(database, SEALED_COLUMNS, 10) == 0  # nothing left to do


# ----------------------------------------------------------------------------- command line


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("YGG_")}
    with trio.fail_after(60):
        done = await trio.run_process(
            [*yggdrasil_command(), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**environment, **(env or {})},
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _usage(out: str) -> dict[str, int]:
    return {line.split("\t")[0]: int(line.split("\t")[1]) for line in out.splitlines()}


async def test_keys_rotate_data_usage_and_retire(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert (await _cli("migrate", "--data-dir", str(data)))[0] == 0
    vault = open_vault(data, create=False)
    assert vault is not None
    first = vault.current

    db = await SqliteDatabase.open(data / "yggdrasil.sqlite3")
    db.vault = vault
    try:
        user, _ = await Store(db).create_user(ADA, display_name=ADA_NAME)
        audit = AuditLog(db)
        await audit.append(
            user.user_id, "login.success", user.user_id, vault.seal_detail({"ip": CLIENT_IP})
        )
        await audit.seal()
    finally:
        await db.aclose()

    status, out, _ = await _cli("keys", "rotate-data", "--data-dir", str(data))
    assert status == 0
    assert f"key {first} stays" in out
    status, out, _ = await _cli("keys", "data-usage", "--data-dir", str(data))
    new = open_vault(data, create=False).current  # type: ignore[union-attr]
    assert _usage(out) == {first: 3, new: 0}  # e-mail, name, and the audit entry's address

    # Retiring a key that still seals something is refused, in one line.
    status, _, err = await _cli("keys", "retire-data", first, "--data-dir", str(data))
    assert status == 2
    assert err.strip().startswith("yggdrasil: data key")
    assert "still seals 3" in err

    # 'migrate' (like a running server) moves the users' rows; the audit entry keeps its key.
    assert (await _cli("migrate", "--data-dir", str(data)))[0] == 0
    status, out, _ = await _cli("keys", "data-usage", "--data-dir", str(data))
    assert _usage(out) == {first: 1, new: 2}

    reopened = await SqliteDatabase.open(data / "yggdrasil.sqlite3")
    reopened.vault = open_vault(data, create=False)  # type: ignore[assignment]
    try:
        me = await Store(reopened).get_me(Scope(user.user_id))
        assert (me.email, me.display_name) == (ADA, ADA_NAME)
    finally:
        await reopened.aclose()


async def test_a_missing_key_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "keyring.json"
    key_file = {"YGG_ENCRYPTION_KEY_FILE": str(missing)}
    status, _, err = await _cli(
        "migrate",
        "--data-dir",
        str(tmp_path / "data"),
        env=key_file,
    )
    assert status == 2
    assert err.strip() == (
        f"yggdrasil: no data keyring at {missing} (encryption.key_file): create it with"
        " 'yggdrasil keys rotate-data'"
    )
    # ... which makes one, and then the command runs with it.
    assert (await _cli("keys", "rotate-data", env=key_file))[0] == 0
    status, _, err = await _cli(
        "migrate",
        "--data-dir",
        str(tmp_path / "data"),
        env=key_file,
    )
    assert status == 0, err
    assert not (tmp_path / "data" / "secrets" / "data-keyring.json").exists()
