"""argon2id for every secret that is verified by hash: one-time codes, refresh tokens, keys.

Hashing is a resource an attacker can spend: each argon2id run takes tens of milliseconds of CPU
and 19 MiB of memory. So callers look a secret up by its identifier part first and hash only
when there is a stored hash to check against, and every hash in the process runs in one bounded
pool (:class:`Hasher`): a few dedicated long-lived threads, never the event loop and never
trio's shared worker threads (each of those would keep its own 19 MiB arena after the hash),
with a bounded number of callers waiting. Past that bound the caller gets :class:`HashingBusy`,
which the API answers with 503 and ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar, TypeVarTuple

import argon2
import trio

from ._config import AuthConfig
from ._errors import YggdrasilError

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# OWASP's minimum for argon2id: m = 19 MiB, t = 2, p = 1.
_argon2 = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class HashingBusy(YggdrasilError):
    """Every hashing slot is taken and the queue is full; try again after ``retry_after_s``."""

    status = 503
    code = "busy"
    default_message = "the server is busy checking credentials; try again in a moment"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Hasher:
    """A bounded pool for CPU- and memory-heavy work: at most ``workers`` jobs run at once, on
    dedicated threads that live as long as the pool, and at most ``queue`` more wait.

    :meth:`run` awaits a job without blocking the trio loop. A caller cancelled while its job
    waits takes the job out of the queue; a job already running finishes in the background and
    frees its slot when it ends (a thread cannot be interrupted). Slots are counted with a lock,
    not with trio primitives, so one pool serves every trio run in the process.
    """

    def __init__(self, workers: int, queue: int) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("a hasher needs at least one worker and a non-negative queue")
        self.workers = workers
        self.queue = queue
        self.refused = 0
        """Jobs turned away with :class:`HashingBusy` so far."""
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="ygg-hash", initializer=_background_priority
        )
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now (at most ``workers + queue``)."""
        return self._admitted

    async def run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """``fn(*args)`` on one of the pool's threads; raises :class:`HashingBusy` at once when
        ``workers + queue`` jobs are admitted already."""
        token = trio.lowlevel.current_trio_token()
        with self._lock:
            if self._admitted >= self.workers + self.queue:
                self.refused += 1
                raise HashingBusy()
            self._admitted += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        # Callbacks run in the order they were added: the slot is free before the caller wakes.
        future.add_done_callback(self._done)
        done = trio.Event()

        def wake(_: Future[T]) -> None:
            # When the caller's run has ended, nobody waits for this result any more.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        finally:
            # Only a job that has not started can be cancelled; its callbacks free the slot now.
            future.cancel()
        return future.result()

    def close(self) -> None:
        """Stop the threads once the jobs already admitted have finished; does not block."""
        self._executor.shutdown(wait=False)

    def _done(self, _: Future[Any]) -> None:
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1


HASH_THREAD_NICENESS = 10


def _background_priority() -> None:
    """Hashing threads yield the CPU to the event loop: on Linux a thread has its own nice value
    (``setpriority`` on its thread id), and at +10 the scheduler gives the loop about ten times
    their share when both want a core. Lowering a priority needs no privilege."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)


_DEFAULTS = AuthConfig()
_pool = Hasher(_DEFAULTS.hash_workers, _DEFAULTS.hash_queue)


def configure(workers: int, queue: int) -> Hasher:
    """Size the process-wide pool (``auth.hash_workers``, ``auth.hash_queue``); called at
    start-up. A pool of another size replaces the current one, whose admitted jobs finish."""
    global _pool
    if (_pool.workers, _pool.queue) != (workers, queue):
        old, _pool = _pool, Hasher(workers, queue)
        old.close()
    return _pool


def pool() -> Hasher:
    """The process-wide pool every hash and verification runs in."""
    return _pool


def _hash(secret: str) -> str:
    return _argon2.hash(secret)


def _verify(encoded: str, secret: str) -> bool:
    try:
        return _argon2.verify(encoded, secret)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


async def hash_secret(secret: str) -> str:
    """The argon2id hash of ``secret``; :class:`HashingBusy` when the pool is full."""
    return await _pool.run(_hash, secret)


async def verify_secret(encoded: str, secret: str) -> bool:
    """Whether ``secret`` matches the stored hash ``encoded``; :class:`HashingBusy` when the
    pool is full. Callers check that there is something to verify first: an unknown id or an
    unusable code costs no hash."""
    return await _pool.run(_verify, encoded, secret)


def split_token(token: str, prefix: str) -> tuple[str, str] | None:
    """``<prefix>_<id>.<secret>`` into its id and secret, or ``None`` if it is not of that shape."""
    if not token.startswith(prefix + "_") or len(token) > 200:
        return None
    public, dot, secret = token[len(prefix) + 1 :].partition(".")
    if not dot or not public or not secret:
        return None
    return f"{prefix}_{public}", secret


def new_token(prefix: str) -> tuple[str, str, str]:
    """A fresh ``(id, secret, token)``; the token is what the client keeps."""
    public = secrets.token_urlsafe(12)
    secret = secrets.token_urlsafe(32)
    token_id = f"{prefix}_{public}"
    return token_id, secret, f"{token_id}.{secret}"
