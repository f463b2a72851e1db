"""OTP-style supervisors for trio tasks.

A supervisor owns one nursery. It starts its children in order (each reports ready through
``task_status`` before the next starts), restarts them by their restart type and the supervisor's
strategy, and gives up (raising :class:`Escalated` to its parent) when more than ``max_restarts``
restarts happen within ``period_s`` seconds. Between restarts it waits an exponential backoff with
jitter. Shutdown runs in reverse start order: a graceful child is asked to stop and given its
``shutdown_s``; then it, like any other child, is cancelled.

Cancelling the task that runs :meth:`Supervisor.run` kills the whole tree at once (trio
semantics); :meth:`Supervisor.request_stop` (or the ``stopping`` event of a supervised supervisor)
is the graceful path.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from ._errors import Escalated

log = logging.getLogger(__name__)


class Restart(enum.Enum):
    PERMANENT = "permanent"
    """Always restarted, even after a normal return."""
    TRANSIENT = "transient"
    """Restarted only after it raised; forgotten after a normal return."""
    TEMPORARY = "temporary"
    """Never restarted; forgotten when it ends."""


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child.

    ``start`` is awaited as ``start(task_status=...)``, or as
    ``start(stopping=..., task_status=...)`` when ``graceful`` is true; in that case the
    ``trio.Event`` ``stopping`` is set when the supervisor wants the child to finish on its own,
    and the child has ``shutdown_s`` seconds to return before it is cancelled. A child that never
    calls ``task_status.started()`` is ready when it returns.
    """

    id: str
    start: Callable[..., Awaitable[Any]]
    restart: Restart = Restart.PERMANENT
    shutdown_s: float = 5.0
    graceful: bool = False


class ChildStatistics(msgspec.Struct, frozen=True):
    id: str
    running: bool
    restarts: int


class _Ready:
    """Wraps a child's task_status to know whether it reported ready."""

    def __init__(self, inner: trio.TaskStatus[Any]) -> None:
        self.inner = inner
        self.started = False

    def started_(self, value: Any = None) -> None:
        self.started = True
        self.inner.started(value)


class _StatusProxy:
    def __init__(self, ready: _Ready) -> None:
        self._ready = ready

    def started(self, value: Any = None) -> None:
        self._ready.started_(value)


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    scope: trio.CancelScope | None = None
    done: trio.Event = field(default_factory=trio.Event)
    stopping: trio.Event = field(default_factory=trio.Event)
    running: bool = False
    expected_exit: bool = False
    restarts: int = 0
    recent: deque[float] = field(default_factory=deque)


class Supervisor:
    """Supervises a list of children; see the module docstring."""

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period_s: float = 5.0,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 5.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if max_restarts < 0 or period_s <= 0:
            raise ValueError("restart intensity needs max_restarts >= 0 and period_s > 0")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter is a fraction between 0 and 1")
        ids = [spec.id for spec in children]
        if len(set(ids)) != len(ids):
            raise ValueError("child ids must be unique")
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.period_s = period_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._children: list[_Child] = [_Child(spec) for spec in children]
        self._restart_times: deque[float] = deque()
        self._exits: deque[tuple[_Child, BaseException | None]] = deque()
        self._wake = trio.Event()
        self._stop = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.restarts_total = 0

    # ----------------------------------------------------------------- public surface

    async def run(
        self,
        *,
        stopping: trio.Event | None = None,
        task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start the children in order, supervise them, and return after a graceful stop.

        Raises :class:`Escalated` when restart intensity is exceeded, after stopping every child.
        """
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if stopping is not None:
                nursery.start_soon(self._relay_stop, stopping)
            try:
                for child in list(self._children):
                    await self._start(child)
                task_status.started(self)
                await self._supervise()
            except Exception as exc:  # escalation, or a child that failed to start
                failure = exc
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop_children(list(self._children))
                nursery.cancel_scope.cancel()
                self._nursery = None
        if failure is not None:
            # Raised outside the nursery so the parent sees the error itself, not a group.
            raise failure

    def as_child(
        self, *, restart: Restart = Restart.PERMANENT, shutdown_s: float | None = None
    ) -> ChildSpec:
        """A spec that runs this supervisor under another one."""
        grace = shutdown_s
        if grace is None:
            grace = sum(c.spec.shutdown_s for c in self._children) + 1.0
        return ChildSpec(self.name, self.run, restart=restart, shutdown_s=grace, graceful=True)

    def request_stop(self) -> None:
        """Begin a graceful shutdown; :meth:`run` returns when every child has stopped."""
        self._stop.set()
        self._wake.set()

    async def start_child(self, spec: ChildSpec) -> Any:
        """Add and start a child while running; returns what the child passed to ``started()``."""
        if self._nursery is None or self._stop.is_set():
            raise RuntimeError(f"supervisor {self.name} is not running")
        if any(c.spec.id == spec.id for c in self._children):
            raise ValueError(f"child {spec.id!r} exists")
        child = _Child(spec)
        self._children.append(child)
        try:
            return await self._start(child)
        except BaseException:
            self._children.remove(child)
            raise

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child as in shutdown and forget it."""
        for child in self._children:
            if child.spec.id == child_id:
                self._children.remove(child)
                await self._stop_children([child])
                return
        raise KeyError(child_id)

    def statistics(self) -> list[ChildStatistics]:
        return [ChildStatistics(c.spec.id, c.running, c.restarts) for c in self._children]

    # ----------------------------------------------------------------- internals

    async def _relay_stop(self, stopping: trio.Event) -> None:
        await stopping.wait()
        self.request_stop()

    async def _start(self, child: _Child) -> Any:
        assert self._nursery is not None
        child.done = trio.Event()
        child.stopping = trio.Event()
        child.expected_exit = False
        return await self._nursery.start(self._run_child, child)

    async def _run_child(self, child: _Child, task_status: trio.TaskStatus[Any]) -> None:
        ready = _Ready(task_status)
        error: BaseException | None = None
        child.running = True
        try:
            with trio.CancelScope() as scope:
                child.scope = scope
                kwargs: dict[str, Any] = {"task_status": _StatusProxy(ready)}
                if child.spec.graceful:
                    kwargs["stopping"] = child.stopping
                try:
                    await child.spec.start(**kwargs)
                except Exception as exc:
                    if not ready.started:
                        raise
                    error = exc
        finally:
            child.running = False
            child.scope = None
            child.done.set()
        if not ready.started:
            ready.started_()
        if child.expected_exit:
            return
        if error is not None:
            log.error(
                "supervisor=%s child=%s crashed: %r",
                self.name,
                child.spec.id,
                error,
                exc_info=error,
            )
        self._exits.append((child, error))
        self._wake.set()

    async def _supervise(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._stop.is_set():
                return
            while self._exits:
                child, error = self._exits.popleft()
                if child not in self._children:
                    continue
                await self._on_exit(child, error)
                if self._stop.is_set():
                    return

    async def _on_exit(self, child: _Child, error: BaseException | None) -> None:
        restart = child.spec.restart
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and error is None):
            self._children.remove(child)
            return
        now = trio.current_time()
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] <= now - self.period_s:
            self._restart_times.popleft()
        if len(self._restart_times) > self.max_restarts:
            message = (
                f"supervisor {self.name}: more than {self.max_restarts} restarts "
                f"in {self.period_s:g} s (last: child {child.spec.id})"
            )
            log.error("%s", message)
            raise Escalated(message) from error
        child.recent.append(now)
        while child.recent and child.recent[0] <= now - self.period_s:
            child.recent.popleft()

        index = self._children.index(child)
        if self.strategy is Strategy.ONE_FOR_ONE:
            group = [child]
        elif self.strategy is Strategy.ONE_FOR_ALL:
            group = list(self._children)
        else:
            group = self._children[index:]
        await self._stop_children([c for c in group if c is not child])

        delay = self._backoff(len(child.recent))
        with trio.move_on_after(delay):
            await self._stop.wait()
        if self._stop.is_set():
            return
        for member in group:
            if member not in self._children:
                continue
            member.restarts += 1
            self.restarts_total += 1
            log.info(
                "supervisor=%s restarting child=%s after %.3f s", self.name, member.spec.id, delay
            )
            try:
                await self._start(member)
            except Exception as exc:
                # A failing restart counts as another crash of that child.
                self._exits.append((member, exc))
                self._wake.set()

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** max(0, attempt - 1))
        return delay * (1.0 - self.jitter * self._rng.random())

    async def _stop_children(self, children: Sequence[_Child]) -> None:
        """Stop in reverse order: ask graceful children first, then cancel what is left."""
        for child in reversed(children):
            if not child.running:
                continue
            child.expected_exit = True
            if child.spec.graceful:
                child.stopping.set()
                with trio.move_on_after(child.spec.shutdown_s) as grace:
                    await child.done.wait()
                if grace.cancelled_caught:
                    log.warning(
                        "supervisor=%s child=%s did not stop within %.1f s; cancelling it",
                        self.name,
                        child.spec.id,
                        child.spec.shutdown_s,
                    )
            if child.scope is not None:
                child.scope.cancel()
            await child.done.wait()
