"""The one bridge from trio to the asyncio libraries of the store and the bus (asyncpg, nats-py):
an asyncio event loop on a thread of its own.

Why not trio-asyncio, which runs asyncio inside trio's loop: every hop pays for its loop
machinery (a fifth of the CPU of a PostgreSQL-bound request), while a loop on its own thread
costs one ``call_soon_threadsafe`` there and one ``run_sync_soon`` back, and asyncpg's protocol
code runs beside trio instead of inside it. Measured units of work (acquire, one indexed read,
release) per second from 16 trio tasks: ~3,200 through trio-asyncio, ~6,400 through this bridge
(``docs/performance.md`` has the figures and the alternatives). trio-asyncio stays only for
aiortc/aioice (WebRTC), whose objects are driven from trio tasks call by call.

Cancellation: when the calling trio task is cancelled, the asyncio task is cancelled in its own
loop (asyncpg then sends the server a cancel request), and the trio task waits until the
coroutine has really finished - its connection is back in its pool - before ``Cancelled``
propagates. A coroutine that swallows its cancellation and returns normally hands its result
back; the trio cancellation then takes effect at the caller's next checkpoint.

Calls the other way (nats-py's callbacks) must not touch trio objects from the loop thread: they
hand values to trio through a :class:`Handoff`, or call ``run_sync_soon`` on a trio token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")

_STOP_GRACE_S = 5.0

# asyncio's own running-loop lookup (C when available), whatever has replaced the public one.
_real_get_running_loop: Callable[[], asyncio.AbstractEventLoop | None] = (
    getattr(asyncio.events, "_c__get_running_loop", None)
    or vars(asyncio.events)["_py__get_running_loop"]
)


def _look_in_this_thread_first() -> None:
    """Make the running-loop lookup cheap on loop threads while trio-asyncio is imported.

    trio-asyncio (kept for aiortc) replaces ``asyncio.get_running_loop`` process-wide with a
    lookup that first asks trio for the current task, which raises and catches an exception
    in every thread that is not running trio. asyncpg calls it on every ``pool.acquire``
    (through ``asyncio.timeout``): a tenth of the CPU of a PostgreSQL-bound request. The lookup
    installed here asks asyncio's own first - set only in threads that run an asyncio loop
    themselves, such as ours, where it is the right answer - and falls back to the replaced
    one everywhere else, so trio-asyncio's loop inside trio is found as before."""
    replaced = asyncio.events._get_running_loop
    if replaced is _real_get_running_loop or getattr(replaced, "_thread_first", False):
        return

    def lookup() -> asyncio.AbstractEventLoop | None:
        loop = _real_get_running_loop()
        return loop if loop is not None else replaced()

    def lookup_or_raise() -> asyncio.AbstractEventLoop:
        loop = lookup()
        if loop is None:
            raise RuntimeError("no running event loop")
        return loop

    lookup._thread_first = True  # type: ignore[attr-defined]
    for module in (asyncio.events, asyncio):
        module._get_running_loop = lookup  # type: ignore[attr-defined]
        module.get_running_loop = lookup_or_raise  # type: ignore[attr-defined]


class AsyncioThread:
    """An asyncio event loop running on its own daemon thread; open it with
    :func:`open_asyncio_thread`, which also stops it."""

    def __init__(self, name: str) -> None:
        self.name = name
        # Made directly, not through the policy: trio-asyncio's refuses inside a trio run.
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._ready = threading.Event()
        # Calls wait in the inbox; the loop is woken (a write to its self-pipe) only when no
        # drain is pending, so a burst of calls costs one wake-up. Finished calls go back the
        # same way (one trio wake-up per burst), through ``_finished``.
        self._inbox: deque[Callable[[], None]] = deque()
        self._inbox_scheduled = False
        self._finished: Handoff[trio.lowlevel.Task] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop thread and return its result (or raise its exception)
        in the calling trio task. Cancellation as in the module's docstring."""
        await trio.lowlevel.checkpoint_if_cancelled()
        finished = self._finished
        if finished is None or self._loop.is_closed():
            raise RuntimeError(f"{self.name}: the asyncio loop is not running")
        call = _Call(self._loop, fn, args, finished)
        self._inbox.append(call.start)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain_inbox)
            except RuntimeError:  # the loop closed just now
                self._inbox_scheduled = False
                self._inbox.clear()
                raise RuntimeError(f"{self.name}: the asyncio loop has stopped") from None
        await trio.lowlevel.wait_task_rescheduled(call.abort)
        task = call.task
        assert task is not None
        if task.cancelled():
            await trio.lowlevel.checkpoint()  # raises Cancelled: we asked for it
            raise RuntimeError(f"{self.name}: the asyncio loop cancelled the call")
        return task.result()  # type: ignore[no-any-return]

    def _drain_inbox(self) -> None:  # on the loop thread
        # The flag first, as in Handoff._drain: a call appended after this line schedules
        # another drain, one appended before it is in the inbox this drain empties.
        self._inbox_scheduled = False
        inbox = self._inbox
        while inbox:
            inbox.popleft()()

    def _main(self) -> None:
        self._loop.call_soon(self._ready.set)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _start(self, token: trio.lowlevel.TrioToken) -> None:
        self._finished = Handoff(token, trio.lowlevel.reschedule)
        _look_in_this_thread_first()
        self._thread.start()
        self._ready.wait()

    def _stop(self) -> None:
        """From any thread but the loop's: cancel what still runs there (bounded), then stop."""

        async def cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            if rest:
                await asyncio.wait(rest, timeout=_STOP_GRACE_S)

        if not self._thread.is_alive():
            return
        done = asyncio.run_coroutine_threadsafe(cancel_rest(), self._loop)
        try:
            done.result(timeout=_STOP_GRACE_S + 1)
        except Exception:  # a task that would not stop; the loop stops anyway
            log.warning("%s: tasks still running at stop", self.name, exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=_STOP_GRACE_S)


class _Call:
    """One trio task waiting for one coroutine on the loop thread."""

    __slots__ = ("_args", "_finished", "_fn", "_loop", "_trio_task", "task")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[..., Awaitable[Any]],
        args: Any,
        finished: Handoff[trio.lowlevel.Task],
    ) -> None:
        self._loop = loop
        self._fn = fn
        self._args = args
        self._finished = finished
        self._trio_task = trio.lowlevel.current_task()
        self.task: asyncio.Future[Any] | None = None

    def start(self) -> None:  # on the loop thread
        try:
            self.task = asyncio.ensure_future(self._fn(*self._args))
        except BaseException as exc:  # fn itself raised before it became a coroutine
            failed: asyncio.Future[Any] = self._loop.create_future()
            failed.set_exception(exc)
            self.task = failed
        self.task.add_done_callback(self._done)

    def _done(self, _: object) -> None:  # on the loop thread
        self._finished.put(self._trio_task)

    def abort(self, _: object) -> trio.lowlevel.Abort:  # on the trio thread
        # Cancel it where it runs, then keep waiting: _done reschedules us once it has finished.
        self._loop.call_soon_threadsafe(self._cancel)
        return trio.lowlevel.Abort.FAILED

    def _cancel(self) -> None:  # on the loop thread, always after start
        if self.task is not None:
            self.task.cancel()


@asynccontextmanager
async def open_asyncio_thread(name: str = "yggdrasil-asyncio") -> AsyncIterator[AsyncioThread]:
    """Start a loop thread for the duration of the block. On the way out, whatever still runs on
    it is cancelled (for at most a few seconds) and the thread ends; close what you opened on it
    (pools, connections) before that, inside the block."""
    bridge = AsyncioThread(name)
    await trio.to_thread.run_sync(bridge._start, trio.lowlevel.current_trio_token())
    try:
        yield bridge
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(bridge._stop)


class Handoff(Generic[V]):
    """Values from the loop thread to a trio consumer, in order, with one trio wake-up per burst
    rather than per value.

    ``put`` may be called from any thread; ``deliver(value)`` runs on the trio thread (it must
    not block: ``send_nowait`` into a bounded channel, drop and count when full).
    """

    def __init__(self, token: trio.lowlevel.TrioToken, deliver: Callable[[V], None]) -> None:
        self._token = token
        self._deliver = deliver
        self._queue: deque[V] = deque()
        self._scheduled = False

    def put(self, value: V) -> None:
        self._queue.append(value)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._token.run_sync_soon(self._drain)
            except trio.RunFinishedError:
                self._queue.clear()

    def _drain(self) -> None:  # on the trio thread
        # Clear the flag first: a put that lands after this line schedules another drain, one
        # that landed before it is already in the queue we are about to empty.
        self._scheduled = False
        queue = self._queue
        while queue:
            self._deliver(queue.popleft())
