"""The store core: database backends (and opening the configured one), migrations, the scope of
a read, and the audit log.

Infrastructure, not a capability: it owns no domain table. The rooms (``accounts``,
``networks``, ``devices``, ...) write their own SQL as units of work (``work(tx)``, see
:class:`Tx`) and run them on a :class:`Database`; every read of tenant data takes the caller's
:class:`Scope`. The numbered migrations (``yggdrasil/migrations/*.sql``) are one history for
every room's tables.

The audit log lives here (``_audit``) rather than in a room of its own: every room appends to it
inside its own transactions (:func:`append_audit`), so it is a service of the store that all of
them share, like the transaction itself, and it has no tenant of its own.
"""

from ._audit import (
    AuditChainBroken,
    AuditEntry,
    AuditLog,
    append_audit,
    audit_entries_about,
    seal_audit_forever,
)
from ._db import Database, Row, Tx
from ._json import from_json, to_json
from ._migrations import current_version, migrate
from ._open import check_database, open_database, open_database_retrying
from ._postgres import PostgresDatabase
from ._retention import Purge, Retention, retain_forever
from ._scope import MAX_PAGE, Page, Scope, decode_cursor, encode_cursor
from ._sealing import SealedColumns, key_usage, reseal, reseal_all
from ._sqlite import SqliteDatabase

__all__ = [
    "MAX_PAGE",
    "AuditChainBroken",
    "AuditEntry",
    "AuditLog",
    "Database",
    "Page",
    "PostgresDatabase",
    "Purge",
    "Retention",
    "Row",
    "Scope",
    "SealedColumns",
    "SqliteDatabase",
    "Tx",
    "append_audit",
    "audit_entries_about",
    "check_database",
    "current_version",
    "decode_cursor",
    "encode_cursor",
    "from_json",
    "key_usage",
    "migrate",
    "open_database",
    "open_database_retrying",
    "reseal",
    "reseal_all",
    "retain_forever",
    "seal_audit_forever",
    "to_json",
]
