"""The domain services over one open database, rebuilt whenever the store (re)starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._account_data import AccountData
from ._accounts import Accounts
from ._config import Config
from ._db import Database
from ._mail import Mailer
from ._oidc import Oidc
from ._operators import Operators
from ._store import Store
from ._tokens import TokenService


@dataclass(frozen=True)
class Domain:
    store: Store
    accounts: Accounts
    oidc: Oidc
    account_data: AccountData
    operators: Operators

    @classmethod
    def build(
        cls,
        db: Database,
        tokens: TokenService,
        mailer: Mailer,
        config: Config,
        *,
        on_revoke: Callable[[str, int], None] | None = None,
    ) -> Domain:
        """``on_revoke(subject, not_before_ms)``: how a revocation the accounts make reaches every
        instance (by default only this process's token check)."""
        accounts = Accounts(db, tokens, mailer, config.auth, on_revoke=on_revoke)
        return cls(
            store=Store(db),
            accounts=accounts,
            oidc=Oidc(accounts, config.oidc),
            account_data=AccountData(db),
            operators=Operators(db),
        )
