"""The accounts room's personal data at rest: which columns are sealed (``_crypto``), and
sealing them after migration 0011 and after a data key rotation.

users: e-mail address and display name (the address's blind index finds it); identities: the
OIDC subject (found by issuer and the subject's blind index) and e-mail address; login_codes:
only blind indexes of the address and of the client that asked, and the sealed display name.
"""

from __future__ import annotations

from ..store import Database, SealedColumns, Tx, count_by_key, reseal
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
SEALED = (USERS, IDENTITIES, LOGIN_CODES)


async def seal_personal_data(db: Database, batch: int = 500) -> int:
    """Seal what is ``plain:`` and re-seal what an older key sealed, in every sealed table of
    the room, a batch per transaction; how many rows changed. Safe to run anywhere, any time."""
    total = 0
    for spec in SEALED:

        async def work(tx: Tx, spec: SealedColumns = spec) -> int:
            return await reseal(tx, db.vault, spec, batch)

        while True:
            changed = await db.write(work)
            total += changed
            if changed < batch:
                break
    return total


async def sealed_key_usage(tx: Tx) -> dict[str, int]:
    """How many values each data key sealed in the room's tables."""
    usage: dict[str, int] = {}
    for spec in SEALED:
        for kid, count in (await count_by_key(tx, spec)).items():
            usage[kid] = usage.get(kid, 0) + count
    return usage
