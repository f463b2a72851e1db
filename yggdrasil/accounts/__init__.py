"""Accounts: users, sign-in (e-mail codes, OpenID Connect, enrolment keys), sessions and
their revocation, a user's own data (export, deletion, their networks and keys), what removing
an account, a network or a device entails, and what operators may do.

Owns the ``users``, ``login_codes``, ``refresh_tokens``, ``token_revocations``,
``enrollment_keys``, ``identities`` and ``oauth_states`` tables. A device that signs in is
registered through the devices room; memberships are checked through the networks room.
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
from ._keys import EnrollmentKeyInfo, KeyUsed
from ._oidc import Authorization, Oidc, OidcFailed, ProviderUnavailable
from ._operator_tools import CLI_OPERATOR, UserDetail
from ._operators import Operators
from ._removal import HomeNetwork, RoomData
from ._retention import (
    purge_login_codes,
    purge_oauth_states,
    purge_refresh_tokens,
    purge_token_revocations,
)
from ._revocations import revoke_device_tokens
from ._sealed import ACCOUNT_SEALED
from ._users import User, UserStore, insert_user

__all__ = [
    "ACCOUNT_SEALED",
    "CLI_OPERATOR",
    "AccountData",
    "AccountSuspended",
    "Accounts",
    "Authorization",
    "EnrollmentKey",
    "EnrollmentKeyInfo",
    "HomeNetwork",
    "InvalidCode",
    "InvalidGrant",
    "InvalidKey",
    "KeyUsed",
    "Oidc",
    "OidcFailed",
    "Operators",
    "ProviderUnavailable",
    "RoomData",
    "Session",
    "User",
    "UserDetail",
    "UserStore",
    "insert_user",
    "normalize_email",
    "purge_login_codes",
    "purge_oauth_states",
    "purge_refresh_tokens",
    "purge_token_revocations",
    "revoke_device_tokens",
]
