"""The relay issue's "done when", tried as a new user would: two ``yggdrasil device`` terminals."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import trio

from benchmarks._harness import free_port, yggdrasil_command
from tests.clients import count_mail, read_code
from tests.servers import server_process

pytestmark = pytest.mark.slow


class Terminal:
    """A ``yggdrasil device listen`` running in the background, its output collected."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def collect(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]

    async def expect(self, text: str, timeout_s: float = 15) -> None:
        with trio.fail_after(timeout_s):
            while not any(text in line for line in self.lines):  # noqa: ASYNC110
                await trio.sleep(0.05)


async def device_cmd(*args: str, stdin: bytes = b"") -> str:
    result = await trio.run_process(
        [*yggdrasil_command(), "device", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.stdout.decode()


async def login(api: str, gateway: str, outbox: Path, credentials: str, device_id: str) -> None:
    """``yggdrasil device login``, answering the code from the outbox when one is sent (the
    first login of the account; the next ones reuse its session)."""
    seen = count_mail(outbox, "me@example.org")
    args = ["login", "--api", api, "--gateway", gateway, "--email", "me@example.org"]
    process = await trio.lowlevel.open_process(
        [
            *yggdrasil_command(),
            "device",
            *args,
            "--device-id",
            device_id,
            "--credentials",
            credentials,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    async def answer() -> None:
        code = await read_code(outbox, "me@example.org", seen=seen)
        assert process.stdin is not None
        await process.stdin.send_all(f"{code}\n".encode())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        assert await process.wait() == 0
        nursery.cancel_scope.cancel()


async def test_two_terminals(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    outbox = data_dir / "outbox"
    api_port, gateway_port = free_port(), free_port()
    ports = ["--api-port", str(api_port), "--gateway-port", str(gateway_port)]
    env = {"YGG_GATEWAY_PING_INTERVAL_S": "0.5", "YGG_GATEWAY_PING_TIMEOUT_S": "1"}
    api, gateway = f"http://127.0.0.1:{api_port}", f"ws://127.0.0.1:{gateway_port}"
    laptop, phone = str(tmp_path / "laptop.json"), str(tmp_path / "phone.json")

    with server_process(data_dir, *ports, env=env) as server:
        await login(api, gateway, outbox, laptop, "laptop")
        await login(api, gateway, outbox, phone, "phone")
        assert count_mail(outbox, "me@example.org") == 1  # one code for the two devices
        async with trio.open_nursery() as nursery:
            terminals = {}
            for name, credentials in (("laptop", laptop), ("phone", phone)):
                process = await trio.lowlevel.open_process(
                    [*yggdrasil_command(), "device", "listen", "--credentials", credentials],
                    stdout=subprocess.PIPE,
                )
                terminals[name] = Terminal(process)
                nursery.start_soon(terminals[name].collect)
                await terminals[name].expect(f"connected as {name}")
            await terminals["laptop"].expect("phone is online")
            await terminals["phone"].expect("online: laptop, phone")

            peers = await device_cmd("peers", "--credentials", laptop)
            assert "phone\tonline" in peers
            # A third session for the laptop would replace the listening one; use the phone's
            # listener as the receiver and send from a short-lived laptop session instead.
            terminals["laptop"].process.send_signal(signal.SIGINT)
            await terminals["laptop"].process.wait()
            await terminals["phone"].expect("laptop is offline")
            assert "delivered" in await device_cmd(
                "send", "phone", "hello phone", "--credentials", laptop
            )
            await terminals["phone"].expect("message from laptop: hello phone")
            answer = await device_cmd(
                "request", "phone", "echo", '{"x": 1}', "--credentials", laptop
            )
            assert '"ok": true' in answer
            assert '"x": 1' in answer
            await terminals["phone"].expect("request from laptop: echo -> ok")
            assert await device_cmd("request", "ghost", "echo", "--credentials", laptop) == (
                '{"error": "unreachable", "ok": false}\n'
            )

            # The server restarts: the phone's terminal comes back by itself.
            assert server.terminate() == 0
            await terminals["phone"].expect("disconnected")
            with server_process(data_dir, *ports, env=env):
                with trio.fail_after(20):
                    while sum("connected as phone" in l for l in terminals["phone"].lines) < 2:  # noqa: ASYNC110, E741
                        await trio.sleep(0.05)
                terminals["phone"].process.send_signal(signal.SIGINT)
                await terminals["phone"].process.wait()


async def test_a_terminal_holds_its_session_over_webrtc_through_the_relay(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    outbox = data_dir / "outbox"
    api_port, gateway_port, turn_port = free_port(), free_port(), free_port()
    ports = ["--api-port", str(api_port), "--gateway-port", str(gateway_port)]
    ports += ["--turn-port", str(turn_port)]
    api, gateway = f"http://127.0.0.1:{api_port}", f"ws://127.0.0.1:{gateway_port}"
    laptop, phone = str(tmp_path / "laptop.json"), str(tmp_path / "phone.json")
    with server_process(data_dir, *ports):
        await login(api, gateway, outbox, laptop, "laptop")
        await login(api, gateway, outbox, phone, "phone")
        listen = ["device", "listen", "--transport", "webrtc", "--relay-only"]
        process = await trio.lowlevel.open_process(
            [*yggdrasil_command(), *listen, "--credentials", phone], stdout=subprocess.PIPE
        )
        terminal = Terminal(process)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(terminal.collect)
            await terminal.expect("connected as phone", timeout_s=30)
            assert "delivered" in await device_cmd(
                "send", "phone", "over the data channel", "--credentials", laptop
            )
            await terminal.expect("message from laptop: over the data channel")
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
