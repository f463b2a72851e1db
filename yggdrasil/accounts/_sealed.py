"""The accounts room's personal data at rest: which columns are sealed (``_crypto``), and
sealing them after migration 0011 and after a data key rotation.

users: e-mail address and display name (the address's blind index finds it); identities: the
OIDC subject (found by issuer and the subject's blind index) and e-mail address; login_codes:
only blind indexes of the address and of the client that asked, and the sealed display name.
"""

from __future__ import annotations

from ..store import SealedColumns
from ._users import USERS

IDENTITIES = SealedColumns(
    "identities",
    key=("issuer", "subject"),
    owner="user_id",
    columns=("subject", "email"),
    indexes={"subject": ("subject_index", "oidc-subject")},
)
LOGIN_CODES = SealedColumns(
    "login_codes", key=("code_id",), owner="code_id", columns=("display_name",)
)
ACCOUNT_SEALED = (USERS, IDENTITIES, LOGIN_CODES)
"""The room's sealed columns, for the composition's re-encryption (``store.reseal_all``)."""
