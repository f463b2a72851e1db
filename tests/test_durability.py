"""A 2xx means committed: writes acknowledged before kill -9 are all there afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from yggdrasil import Scope, SqliteDatabase, Store, migrate, open_vault

pytestmark = pytest.mark.slow

WRITER = """
import sys, trio
from pathlib import Path
from yggdrasil import NewDevice, Scope, SqliteDatabase, Store, open_vault

async def main():
    db = await SqliteDatabase.open(Path(sys.argv[1]))
    db.vault = open_vault(Path(sys.argv[1]).parent)
    store = Store(db)
    scope = Scope(sys.argv[2])
    i = 0
    while True:
        await store.register_device(scope, sys.argv[3], NewDevice(f"d{i:06d}", "x", "midgard"))
        print(f"d{i:06d}", flush=True)   # acknowledged only after the commit returned
        i += 1

trio.run(main)
"""


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    vault = open_vault(tmp_path)
    assert vault is not None

    async def setup() -> tuple[str, str]:
        db = await SqliteDatabase.open(path)
        db.vault = vault  # the writer and the check seal and open with the same keyring
        await migrate(db)
        user, home = await Store(db).create_user("durable@example.org")
        await db.aclose()
        return user.user_id, home.network_id

    user_id, network_id = trio.run(setup)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), user_id, network_id],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert writer.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 30
    while len(acknowledged) < 200 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        if not line:
            break
        acknowledged.append(line.strip())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert len(acknowledged) >= 200

    async def check() -> set[str]:
        db = await SqliteDatabase.open(path)
        db.vault = vault
        store = Store(db)
        found: set[str] = set()
        cursor = None
        while True:
            page = await store.list_devices(Scope(user_id), network_id, cursor=cursor, limit=100)
            found |= {d.device_id for d in page.items}
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        await store.verify_audit_chain()
        await db.aclose()
        return found

    found = trio.run(check)
    assert set(acknowledged) <= found
