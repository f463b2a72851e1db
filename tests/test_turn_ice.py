"""aioice, a real ICE stack, against ``yggdrasil serve``: it gathers a relay candidate, and two
agents restricted to relay candidates exchange data through Yggdrasil's TURN server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aioice
import pytest

from benchmarks._harness import free_port
from tests.servers import server_process

pytestmark = pytest.mark.slow


def run(coroutine: object) -> object:
    # A plain asyncio loop: trio-asyncio's event loop policy would hand out its own loop here.
    loop = asyncio.SelectorEventLoop()
    try:
        return loop.run_until_complete(coroutine)  # type: ignore[arg-type]
    finally:
        loop.close()


def agent(port: int, *, controlling: bool, relay_only: bool) -> aioice.Connection:
    return aioice.Connection(
        ice_controlling=controlling,
        stun_server=("127.0.0.1", port),
        turn_server=("127.0.0.1", port),
        turn_username="bench",
        turn_password="secret",
        use_ipv6=False,
        transport_policy=aioice.TransportPolicy.RELAY if relay_only else aioice.TransportPolicy.ALL,
    )


def test_aioice_gathers_a_relay_candidate_and_relays_data(tmp_path: Path) -> None:
    port = free_port()
    with server_process(
        tmp_path / "data",
        "--turn-port",
        str(port),
        "--turn-static-user",
        "bench:secret",
        "--turn-allow-peer",
        "127.0.0.0/8",
    ):

        async def gather() -> list[str]:
            connection = agent(port, controlling=True, relay_only=False)
            await connection.gather_candidates()
            kinds = [candidate.type for candidate in connection.local_candidates]
            await connection.close()
            return kinds

        kinds = run(gather())
        assert isinstance(kinds, list)
        assert "relay" in kinds
        assert "srflx" in kinds  # the STUN binding answered too

        async def talk() -> tuple[bytes, bytes]:
            left = agent(port, controlling=True, relay_only=True)
            right = agent(port, controlling=False, relay_only=True)
            await asyncio.gather(left.gather_candidates(), right.gather_candidates())
            assert all(c.type == "relay" for c in left.local_candidates)
            for candidate in left.local_candidates:
                await right.add_remote_candidate(candidate)
            for candidate in right.local_candidates:
                await left.add_remote_candidate(candidate)
            await left.add_remote_candidate(None)
            await right.add_remote_candidate(None)
            left.remote_username, left.remote_password = right.local_username, right.local_password
            right.remote_username, right.remote_password = left.local_username, left.local_password
            await asyncio.wait_for(asyncio.gather(left.connect(), right.connect()), 20)
            await left.send(b"through yggdrasil")
            got_right = await asyncio.wait_for(right.recv(), 5)
            await right.send(b"and back")
            got_left = await asyncio.wait_for(left.recv(), 5)
            await asyncio.gather(left.close(), right.close())
            return got_right, got_left

        assert run(talk()) == (b"through yggdrasil", b"and back")
