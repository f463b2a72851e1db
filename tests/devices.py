"""Raw websocket devices for relay tests: frames in, frames out, nothing hidden."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from benchmarks._harness import hello as say_hello
from relay.protocol import AckMode, ServerFrame, Welcome, decode_server_frame, encode


class RawDevice:
    def __init__(self, ws: WebSocketConnection, welcome: Welcome) -> None:
        self.ws = ws
        self.welcome = welcome

    async def send(self, frame: Any) -> None:
        await self.ws.send_message(encode(frame))

    async def receive(self, timeout_s: float = 5.0) -> ServerFrame:
        with trio.fail_after(timeout_s):
            return decode_server_frame(await self.ws.get_message())

    async def receive_type(
        self, kind: type[Any] | tuple[type[Any], ...], timeout_s: float = 5.0
    ) -> Any:
        """The next frame of ``kind``, skipping presence and pings on the way."""
        with trio.fail_after(timeout_s):
            while True:
                frame = await self.receive(timeout_s)
                if isinstance(frame, kind):
                    return frame


@asynccontextmanager
async def raw_device(
    gateway_url: str,
    access_token: str,
    *,
    hello: bool = True,
    receipts: bool = False,
    acks: AckMode = "each",
) -> AsyncIterator[RawDevice]:
    headers = [(b"authorization", f"Bearer {access_token}".encode())]
    async with open_websocket_url(
        gateway_url, extra_headers=headers, max_message_size=4 * 1024 * 1024
    ) as ws:
        welcome: Any = await say_hello(ws, "test", receipts=receipts, acks=acks) if hello else None
        yield RawDevice(ws, welcome)


async def close_code(ws: WebSocketConnection, timeout_s: float = 5.0) -> int:
    """Read until the server closes the connection; the close code it gave."""
    with trio.fail_after(timeout_s):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code if closed.reason is not None else -1
