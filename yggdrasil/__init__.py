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
from ._config import Config, GatewayConfig, LimitsConfig, load_config
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
from ._oidc import Authorization, Oidc, OidcFailed, ProviderUnavailable
from ._operators import Operators
from ._ratelimit import RateLimited, RateLimiter
from ._secrets import Secrets, load_or_create
from ._store import Device, DeviceUpdate, Network, NewDevice, Store, User
from ._tokens import InvalidToken, Principal, TokenService
from ._version import VERSION
from .store import (
    MAX_PAGE,
    AuditChainBroken,
    AuditEntry,
    Database,
    Page,
    PostgresDatabase,
    Scope,
    SqliteDatabase,
    Tx,
    current_version,
    migrate,
)

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
    "load_config",
    "load_or_create",
    "migrate",
    "normalize_email",
]
