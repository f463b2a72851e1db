"""Global locks: leases with fencing tokens, priorities and deadlock detection, per network.

Owns the ``lock_sequences`` and ``lock_grants`` tables. One lock manager per network
(``locks/<network>``, a virtual actor) decides; the store holds the truth, so a lock has one
holder however managers restart or move between instances. Devices reach their network's
manager through their session (the relay's lock frames); the HTTP API through :class:`Locks`.
See ``docs/locks.md``.
"""

from .._addresses import locks_address
from ._manager import LOCK_NAME, MAX_PRIORITY, MIN_LEASE_MS, LockManager, WallClock, lock_managers
from ._messages import (
    LOCK_MESSAGES,
    Abandon,
    Acquire,
    FailureCode,
    Granted,
    LockFailed,
    LockInfo,
    LockLost,
    LockView,
    Release,
    Released,
    Renew,
    ViewLocks,
    WaiterInfo,
)
from ._service import LOCK_REPLY_S, LockError, Locks
from ._store import LockStore
from ._table import Deadlock, Grant, LockTable, Waiter

__all__ = [
    "LOCK_MESSAGES",
    "LOCK_NAME",
    "LOCK_REPLY_S",
    "MAX_PRIORITY",
    "MIN_LEASE_MS",
    "Abandon",
    "Acquire",
    "Deadlock",
    "FailureCode",
    "Grant",
    "Granted",
    "LockError",
    "LockFailed",
    "LockInfo",
    "LockLost",
    "LockManager",
    "LockStore",
    "LockTable",
    "LockView",
    "Locks",
    "Release",
    "Released",
    "Renew",
    "ViewLocks",
    "Waiter",
    "WaiterInfo",
    "WallClock",
    "lock_managers",
    "locks_address",
]
