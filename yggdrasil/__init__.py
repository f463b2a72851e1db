"""Yggdrasil, the central server of the Edda device network: the domain package.

Config, the store and its migrations, accounts, networks and devices. ``server`` composes the
whole process and ``cli`` is its command line; only those two import ``relay`` and ``api``.
"""

from ._account_data import AccountData
from ._accounts import (
    Accounts,
    AccountSuspended,
    EnrollmentKey,
    InvalidCode,
    InvalidGrant,
    InvalidKey,
    Session,
    normalize_email,
)
from ._addresses import (
    device_address,
    network_address,
    provider_address,
    service_address,
    tenant_of,
    tenant_rule,
)
from ._config import Config, GatewayConfig, LimitsConfig, load_config
from ._db import Database, Tx
from ._domain import Domain
from ._errors import (
    ConfigError,
    Forbidden,
    Invalid,
    NotFound,
    StoreError,
    StoreUnavailable,
    Unavailable,
    UniqueViolation,
    YggdrasilError,
)
from ._hashing import HashingBusy
from ._mail import Mail, Mailer, MailQueueFull
from ._metrics import Metrics
from ._migrations import current_version, migrate
from ._oidc import Authorization, Oidc, OidcFailed, ProviderUnavailable
from ._operators import Operators
from ._postgres import PostgresDatabase
from ._ratelimit import RateLimited, RateLimiter
from ._secrets import Secrets, load_or_create
from ._sqlite import SqliteDatabase
from ._store import (
    MAX_PAGE,
    AuditChainBroken,
    AuditEntry,
    Device,
    DeviceUpdate,
    Network,
    NewDevice,
    Page,
    Scope,
    Store,
    User,
)
from ._tokens import InvalidToken, Principal, TokenService
from ._version import VERSION

__all__ = [
    "MAX_PAGE",
    "VERSION",
    "AccountData",
    "AccountSuspended",
    "Accounts",
    "AuditChainBroken",
    "AuditEntry",
    "Authorization",
    "Config",
    "ConfigError",
    "Database",
    "Device",
    "DeviceUpdate",
    "Domain",
    "EnrollmentKey",
    "Forbidden",
    "GatewayConfig",
    "HashingBusy",
    "Invalid",
    "InvalidCode",
    "InvalidGrant",
    "InvalidKey",
    "InvalidToken",
    "LimitsConfig",
    "Mail",
    "MailQueueFull",
    "Mailer",
    "Metrics",
    "Network",
    "NewDevice",
    "NotFound",
    "Oidc",
    "OidcFailed",
    "Operators",
    "Page",
    "PostgresDatabase",
    "Principal",
    "ProviderUnavailable",
    "RateLimited",
    "RateLimiter",
    "Scope",
    "Secrets",
    "Session",
    "SqliteDatabase",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TokenService",
    "Tx",
    "Unavailable",
    "UniqueViolation",
    "User",
    "YggdrasilError",
    "current_version",
    "device_address",
    "load_config",
    "load_or_create",
    "migrate",
    "network_address",
    "normalize_email",
    "provider_address",
    "service_address",
    "tenant_of",
    "tenant_rule",
]
