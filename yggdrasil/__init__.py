"""Yggdrasil, the central server of the Edda device network: the domain package.

Infrastructure sits at the top as private modules (config, errors, ids, tokens, hashing, rate
limits, mail, metrics, secrets, logging) beside the store core (``store``). Each capability is a
subpackage that owns its tables and SQL: ``accounts``, ``networks``, ``devices``; ``turn`` is the
room of TURN for the devices (addresses, credentials, ICE servers, peer policy). ``_domain``
composes the capabilities (``Domain``, and ``Store``, one front over the rooms' repositories);
``server`` composes the whole process and ``cli`` is its command line; only those two import
``relay`` and ``api``.
"""

from ._addresses import (
    device_address,
    network_address,
    provider_address,
    service_address,
    tenant_of,
    tenant_rule,
)
from ._asyncio_thread import AsyncioThread, open_asyncio_thread
from ._config import Config, GatewayConfig, LimitsConfig, load_config
from ._crypto import DataKeyMissing, Vault, open_vault, rotate_data_key
from ._domain import Domain, DomainHandle, Store
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
from ._monitoring import Blocked, ProbeWatch
from ._ratelimit import RateLimited, RateLimiter
from ._secrets import Secrets, load_or_create
from ._tokens import InvalidToken, Principal, TokenService
from ._version import VERSION
from .accounts import (
    AccountData,
    Accounts,
    AccountSuspended,
    Authorization,
    EnrollmentKey,
    EnrollmentKeyInfo,
    InvalidCode,
    InvalidGrant,
    InvalidKey,
    Oidc,
    OidcFailed,
    Operators,
    ProviderUnavailable,
    Session,
    User,
    UserDetail,
    normalize_email,
)
from .devices import Device, DeviceUpdate, NewDevice
from .networks import Network, NetworkInfo
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
    "AsyncioThread",
    "AuditChainBroken",
    "AuditEntry",
    "Authorization",
    "Blocked",
    "Config",
    "ConfigError",
    "DataKeyMissing",
    "Database",
    "Device",
    "DeviceUpdate",
    "Domain",
    "DomainHandle",
    "EnrollmentKey",
    "EnrollmentKeyInfo",
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
    "NetworkInfo",
    "NewDevice",
    "NotFound",
    "Oidc",
    "OidcFailed",
    "Operators",
    "Page",
    "PostgresDatabase",
    "Principal",
    "ProbeWatch",
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
    "UserDetail",
    "Vault",
    "YggdrasilError",
    "current_version",
    "device_address",
    "load_config",
    "load_or_create",
    "migrate",
    "network_address",
    "normalize_email",
    "open_asyncio_thread",
    "open_vault",
    "provider_address",
    "rotate_data_key",
    "service_address",
    "tenant_of",
    "tenant_rule",
]
