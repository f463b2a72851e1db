"""Yggdrasil, the central server of the Edda device network: the domain package.

Config, the store and its migrations, accounts, networks and devices. ``server`` composes the
whole process and ``cli`` is its command line; only those two import ``relay`` and ``api``.
"""

from ._config import Config, load_config
from ._db import Database, Tx
from ._errors import (
    ConfigError,
    Invalid,
    NotFound,
    StoreError,
    StoreUnavailable,
    UniqueViolation,
    YggdrasilError,
)
from ._metrics import Metrics
from ._migrations import current_version, migrate
from ._postgres import PostgresDatabase
from ._secrets import Secrets, load_or_create
from ._sqlite import SqliteDatabase
from ._store import (
    MAX_PAGE,
    AuditChainBroken,
    AuditEntry,
    Device,
    Network,
    NewDevice,
    Page,
    Scope,
    Store,
    User,
)
from ._version import VERSION

__all__ = [
    "MAX_PAGE",
    "VERSION",
    "AuditChainBroken",
    "AuditEntry",
    "Config",
    "ConfigError",
    "Database",
    "Device",
    "Invalid",
    "Metrics",
    "Network",
    "NewDevice",
    "NotFound",
    "Page",
    "PostgresDatabase",
    "Scope",
    "Secrets",
    "SqliteDatabase",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Tx",
    "UniqueViolation",
    "User",
    "YggdrasilError",
    "current_version",
    "load_config",
    "load_or_create",
    "migrate",
]
