"""``yggdrasil backup`` and ``yggdrasil restore``: a backup taken while the server runs and
writes holds every write acknowledged before it started, and a server started on the restored
data answers for it with the old tokens. SQLite (online backup API) and PostgreSQL (pg_dump,
pg_restore into a fresh database), real ``yggdrasil`` processes, real HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_asyncio

from benchmarks._harness import yggdrasil_command
from tests.clients import RELAXED_LIMITS, device, sign_in
from tests.conftest import _admin, pg_url, require_postgres
from tests.servers import server_process
from yggdrasil.cli import main

pytestmark = pytest.mark.slow

WRITERS = 8
ENV = {f"YGG_LIMITS_{key.upper()}": str(value) for key, value in RELAXED_LIMITS.items()}


def yggdrasil(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("YGG_")}
    return subprocess.run(
        [*yggdrasil_command(), *args],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=120,
    )


def one_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("yggdrasil: ")
    return lines[0]


@dataclass
class Load:
    """What the writers did: ids acknowledged (201) and when, relative to the backup."""

    session: dict[str, Any] = field(default_factory=dict)
    acknowledged: list[str] = field(default_factory=list)
    before_backup: set[str] = field(default_factory=set)
    during_backup: set[str] = field(default_factory=set)
    attempted: set[str] = field(default_factory=set)


async def write_and_back_up(api_url: str, outbox: Path, backup_args: list[str]) -> Load:
    """Sign a user in, register devices from parallel writers, run ``yggdrasil backup`` while
    they go on, and stop them a little after it has finished."""
    load = Load()
    target = 150
    reached = trio.Event()
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        user = await sign_in(http, outbox, "backup@example.org")
        load.session = dict(user.session)
        backing_up = False

        async def writer(number: int) -> None:
            index = 0
            while True:
                device_id = f"w{number}-{index:05d}"
                index += 1
                load.attempted.add(device_id)
                response = await user.post("/api/v1/devices", json=device(device_id))
                assert response.status_code == 201, response.text
                load.acknowledged.append(device_id)
                if len(load.acknowledged) >= target:
                    reached.set()
                if backing_up:
                    load.during_backup.add(device_id)

        async with trio.open_nursery() as nursery:
            for number in range(WRITERS):
                nursery.start_soon(writer, number)
            with trio.fail_after(60):
                await reached.wait()
            # Every write acknowledged until now came before the backup started.
            load.before_backup = set(load.acknowledged)
            backing_up = True
            result = await trio.run_process(
                [*yggdrasil_command(), "backup", *backup_args],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env={k: v for k, v in os.environ.items() if not k.startswith("YGG_")},
            )
            backing_up = False
            assert result.returncode == 0, result.stderr.decode()
            target, reached = len(load.acknowledged) + 20, trio.Event()
            with trio.fail_after(60):
                await reached.wait()
            nursery.cancel_scope.cancel()
    return load


async def check_restored(api_url: str, load: Load) -> set[str]:
    """Every acknowledged-before-backup device is there, read with the old access token; the
    old refresh token still rotates."""
    headers = {"Authorization": f"Bearer {load.session['access_token']}"}
    found: set[str] = set()
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = await http.get("/api/v1/devices", headers=headers, params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            found |= {item["device_id"] for item in body["items"]}
            cursor = body.get("next_cursor")
            if not cursor:
                break
        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": load.session["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text
        fresh = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
        assert (await http.get("/api/v1/users/me", headers=fresh)).status_code == 200
    return found


def secret_files(data_dir: Path) -> dict[str, bytes]:
    folder = data_dir / "secrets"
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def assert_round_trip(load: Load, found: set[str]) -> None:
    assert load.during_backup, "no write was acknowledged while the backup ran"
    missing = load.before_backup - found
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:3]}"
    assert found <= load.attempted  # nothing invented
    assert len(found) < len(load.acknowledged)  # a snapshot: the writes after it are not there


def test_sqlite_backup_under_write_load_restores_every_acknowledged_write(
    tmp_path: Path,
) -> None:
    data, restored, archive = tmp_path / "data", tmp_path / "restored", tmp_path / "b.tar.gz"
    with server_process(data, env=ENV) as server:
        # Whatever the secrets folder holds goes along, not a list of today's files.
        (data / "secrets" / "keyring").mkdir(mode=0o700)
        (data / "secrets" / "keyring" / "k2.key").write_bytes(secrets.token_bytes(32))
        load = trio.run(
            write_and_back_up,
            server.api_url,
            data / "outbox",
            ["--data-dir", str(data), "--to", str(archive)],
        )
        assert server.terminate() == 0
    assert archive.stat().st_mode & 0o777 == 0o600  # it holds the secrets

    done = yggdrasil("restore", str(archive), "--data-dir", str(restored))
    assert done.returncode == 0, done.stderr
    assert "restored the sqlite database" in done.stdout
    assert secret_files(restored) == secret_files(data)
    assert "keyring/k2.key" in secret_files(restored)
    for path in (restored / "secrets").rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600)
    with server_process(restored, env=ENV) as server:
        found = trio.run(check_restored, server.api_url, load)
        assert server.terminate() == 0
    assert_round_trip(load, found)


def test_postgres_backup_under_write_load_restores_into_a_fresh_database(
    tmp_path: Path,
) -> None:
    require_postgres()
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.fail("pg_dump and pg_restore are needed (Debian: postgresql-client)")
    data, restored, archive = tmp_path / "data", tmp_path / "restored", tmp_path / "b.tar.gz"

    stamp = secrets.token_hex(4)
    names = [f"ygg_backup_{stamp}_source", f"ygg_backup_{stamp}_target"]

    async def admin(statement: str) -> None:
        async with trio_asyncio.open_loop():
            for name in names:
                await _admin(statement.format(name))

    trio.run(admin, "CREATE DATABASE {}")
    source, target = (pg_url(name) for name in names)
    try:
        with server_process(data, "--database-url", source, env=ENV) as server:
            load = trio.run(
                write_and_back_up,
                server.api_url,
                data / "outbox",
                ["--data-dir", str(data), "--database-url", source, "--to", str(archive)],
            )
            assert server.terminate() == 0
        with tarfile.open(archive) as tar:
            assert tar.getnames()[:2] == ["MANIFEST.json", "database.pgdump"]

        done = yggdrasil(
            "restore", str(archive), "--data-dir", str(restored), "--database-url", target
        )
        assert done.returncode == 0, done.stderr
        assert "restored the postgres database" in done.stdout
        # A second restore into the now full database is refused and changes nothing.
        line = one_line(
            yggdrasil(
                "restore",
                str(archive),
                "--data-dir",
                str(tmp_path / "r2"),
                "--database-url",
                target,
            ),
            2,
        )
        assert "is not empty" in line
        assert not (tmp_path / "r2").exists()
        with server_process(restored, "--database-url", target, env=ENV) as server:
            found = trio.run(check_restored, server.api_url, load)
            assert server.terminate() == 0
        assert_round_trip(load, found)
    finally:
        trio.run(admin, "DROP DATABASE IF EXISTS {} WITH (FORCE)")


# ----------------------------------------------------------------------------- failures


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A data directory that a server has run on (a user signed in: audit entries), and a
    backup of it."""
    folder = tmp_path_factory.mktemp("backed-up")
    data, archive = folder / "data", folder / "b.tar.gz"

    async def sign_up(api_url: str) -> None:
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
            await sign_in(http, data / "outbox", "audited@example.org")  # audit entries

    with server_process(data) as server:
        trio.run(sign_up, server.api_url)
        assert server.terminate() == 0
    result = yggdrasil("backup", "--data-dir", str(data), "--to", str(archive))
    assert result.returncode == 0, result.stderr
    return data, archive


def rewrite(archive: Path, target: Path, change: Any) -> None:
    """Copy ``archive`` to ``target``, passing each member's (info, bytes) through ``change``
    (``None`` drops it)."""
    with tarfile.open(archive) as source, tarfile.open(target, "w:gz") as out:
        for info in source:
            extracted = source.extractfile(info)
            body = extracted.read() if extracted else b""
            changed = change(info, body)
            if changed is not None:
                info.size = len(changed)
                out.addfile(info, io.BytesIO(changed))


def fails(capsys: pytest.CaptureFixture[str], status: int, *args: str) -> str:
    """``yggdrasil *args`` in this process (quicker than a subprocess; the subprocess tests
    above and below show the real command behaves the same): its one line on stderr."""
    capsys.readouterr()
    assert main(list(args)) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("yggdrasil: ")
    return lines[0]


def test_backup_refuses_what_it_cannot_do(
    tmp_path: Path, backed_up: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, archive = backed_up
    line = one_line(yggdrasil("backup", "--data-dir", str(data), "--to", str(archive)), 2)
    assert "exists already" in line
    line = fails(
        capsys, 2, "backup", "--data-dir", str(tmp_path / "nowhere"), "--to", str(tmp_path / "x")
    )
    assert "nowhere" in line
    assert not (tmp_path / "x").exists()
    line = fails(
        capsys,
        2,
        "backup",
        "--data-dir",
        str(data),
        "--to",
        str(tmp_path / "no" / "dir" / "b.tar.gz"),
    )
    assert "no directory" in line
    line = fails(
        capsys,
        1,
        "backup",
        "--data-dir",
        str(data),
        "--database-url",
        "postgresql://postgres@127.0.0.1:1/none",
        "--to",
        str(tmp_path / "pg.tar.gz"),
    )
    assert line.startswith("yggdrasil: pg_dump of postgresql://postgres@127.0.0.1:1/none failed")
    assert not (tmp_path / "pg.tar.gz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_restore_refuses_a_non_empty_directory_and_a_damaged_archive(
    tmp_path: Path, backed_up: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, archive = backed_up
    line = fails(capsys, 2, "restore", str(archive), "--data-dir", str(data))
    assert line == f"yggdrasil: the data directory {data} is not empty: restore into an empty one"
    line = fails(capsys, 2, "restore", str(tmp_path / "none"), "--data-dir", str(tmp_path))
    assert "no backup at" in line

    def flip_a_byte(info: tarfile.TarInfo, body: bytes) -> bytes:
        if info.name == "secrets/signing-key.pem":
            return body[:-2] + bytes([body[-2] ^ 1]) + body[-1:]
        return body

    def drop_secrets(info: tarfile.TarInfo, body: bytes) -> bytes | None:
        return None if info.name.startswith("secrets/") else body

    def add_stranger(info: tarfile.TarInfo, body: bytes) -> bytes:
        if info.name.startswith("secrets/"):
            info.name = "../" + info.name
        return body

    def garble_manifest(info: tarfile.TarInfo, body: bytes) -> bytes:
        return b"{not json" if info.name == "MANIFEST.json" else body

    cases = [
        (garble_manifest, "has an unreadable manifest"),
        (flip_a_byte, "does not match its checksum"),
        (drop_secrets, "lacks secrets/"),
        (add_stranger, "which its manifest lacks"),
    ]
    for change, expected in cases:
        bad = tmp_path / f"{change.__name__}.tar.gz"
        rewrite(archive, bad, change)
        target = tmp_path / f"into-{change.__name__}"
        line = fails(capsys, 1, "restore", str(bad), "--data-dir", str(target))
        assert expected in line, line
        assert not target.exists()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    line = fails(capsys, 1, "restore", str(truncated), "--data-dir", str(tmp_path / "t"))
    assert "is not a readable backup" in line
    not_ours = tmp_path / "other.tar.gz"
    with tarfile.open(not_ours, "w:gz") as tar:
        tar.add(data / "secrets", arcname="secrets")
    line = fails(capsys, 1, "restore", str(not_ours), "--data-dir", str(tmp_path / "o"))
    assert "is not a Yggdrasil backup" in line
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_restore_refuses_a_database_whose_audit_chain_or_pages_are_broken(
    tmp_path: Path, backed_up: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A database changed inside the archive with a matching checksum (so only the deeper
    checks can see it): a forged audit entry, and pages that fail PRAGMA integrity_check."""
    _, archive = backed_up

    def forge(edit: Any) -> Path:
        work = tmp_path / f"work-{edit.__name__}"
        work.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        edit(work / "yggdrasil.sqlite3")
        manifest = json.loads((work / "MANIFEST.json").read_text())
        for member in manifest["files"]:
            body = (work / member["path"]).read_bytes()
            member["size"], member["sha256"] = len(body), hashlib.sha256(body).hexdigest()
        (work / "MANIFEST.json").write_text(json.dumps(manifest))
        forged = tmp_path / f"{edit.__name__}.tar.gz"
        with tarfile.open(forged, "w:gz") as tar:
            tar.add(work / "MANIFEST.json", arcname="MANIFEST.json")
            for member in manifest["files"]:
                tar.add(work / member["path"], arcname=member["path"])
        return forged

    def audit_entry_edited(path: Path) -> None:
        connection = sqlite3.connect(path, isolation_level=None)
        # the triggers refuse updates: forge through a copy of the table without them
        triggers = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'"
        ).fetchall()
        for (name,) in triggers:
            connection.execute(f"DROP TRIGGER {name}")
        changed = connection.execute("UPDATE audit_log SET actor = 'someone else'").rowcount
        assert changed > 0, "the backup has audit entries to forge"
        connection.close()

    def pages_damaged(path: Path) -> None:
        connection = sqlite3.connect(path, isolation_level=None)
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'schema_migrations'"
        ).fetchone()[0]
        connection.close()
        raw = bytearray(path.read_bytes())
        start = (root - 1) * page_size
        raw[start + 8 : start + 64] = b"\xff" * 56  # the b-tree page header and cell pointers
        path.write_bytes(bytes(raw))

    for edit, expected in (
        (audit_entry_edited, "audit log"),
        (pages_damaged, "integrity_check"),
    ):
        forged = forge(edit)
        target = tmp_path / f"into-{edit.__name__}"
        line = fails(capsys, 1, "restore", str(forged), "--data-dir", str(target))
        assert expected in line, line
        assert not target.exists()
