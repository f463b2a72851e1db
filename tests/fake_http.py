"""What the payment providers' fakes share: a small HTTP/1.1 server on trio + h11 (loopback, port
0), replay of POSTs by idempotency key like the real providers, and injectable faults."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import h11
import trio


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode()))


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Fault:
    """What the next request meets. ``status``: answer it with this error; ``saved``: the error
    happened after the operation began, so it is saved under the idempotency key and replayed
    (real Stripe does this with a 500); ``delay_s``: process the request, then hold the answer
    back this long (a client timeout); ``headers``: added to the answer."""

    status: int | None = None
    delay_s: float = 0.0
    saved: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)


class FakeServer:
    """Subclasses answer :meth:`handle` and name the idempotency header."""

    idempotency_header = "idempotency-key"
    replay_header = "idempotent-replayed"

    def __init__(self) -> None:
        self.log: list[Request] = []
        self.faults: list[Fault] = []
        self.saved: dict[tuple[str, str], Reply] = {}
        self.url = ""

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    def error(self, status: int) -> Reply:
        return Reply(status, {"error": {"type": "api_error", "message": "injected fault"}})

    def keyed(self, path: str) -> list[str]:
        """The idempotency keys the POSTs to ``path`` carried, in order."""
        return [
            r.headers.get(self.idempotency_header, "")
            for r in self.log
            if r.method == "POST" and r.path == path
        ]

    def _answer(self, request: Request, fault: Fault | None) -> Reply:
        if fault is not None and fault.status is not None and not fault.saved:
            return self.error(fault.status)
        key = request.headers.get(self.idempotency_header)
        if request.method == "POST" and key:
            saved = self.saved.get((request.path, key))
            if saved is not None:
                return Reply(
                    saved.status, saved.body, [*saved.headers, (self.replay_header, "true")]
                )
        if fault is not None and fault.status is not None:
            reply = self.error(fault.status)
        else:
            reply = self.handle(request)
        if request.method == "POST" and key:
            self.saved[(request.path, key)] = reply
        return reply

    async def _send(self, stream: trio.SocketStream, conn: h11.Connection, reply: Reply) -> None:
        data = b"" if reply.body is None else json.dumps(reply.body).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        headers += reply.headers
        for event in (
            h11.Response(status_code=reply.status, headers=headers),
            h11.Data(data=data),
            h11.EndOfMessage(),
        ):
            await stream.send_all(conn.send(event))

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                head: h11.Request | None = None
                body = b""
                while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                    if event is h11.NEED_DATA:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            return
                        conn.receive_data(chunk)
                    elif isinstance(event, h11.Request):
                        head = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert head is not None
                target = urllib.parse.urlsplit(head.target.decode())
                request = Request(
                    head.method.decode(),
                    target.path,
                    dict(urllib.parse.parse_qsl(target.query)),
                    {k.decode().lower(): v.decode() for k, v in head.headers},
                    body,
                )
                self.log.append(request)
                fault = self.faults.pop(0) if self.faults else None
                reply = self._answer(request, fault)
                if fault is not None:
                    reply = Reply(reply.status, reply.body, [*reply.headers, *fault.headers])
                    if fault.delay_s:
                        await trio.sleep(fault.delay_s)
                await self._send(stream, conn, reply)
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free loopback port; reports (and keeps in ``url``) the base URL."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        task_status.started(self.url)
        await trio.serve_listeners(self._connection, listeners)
