"""The domain services over one open database, the handle through which the rest of the
instance reaches them (:class:`DomainHandle`), and the ``store`` child that opens the database
and rebuilds them whenever it (re)starts.

:class:`Store` is a thin front over the rooms' repositories (``accounts.UserStore``,
``networks.NetworkStore``, ``devices.DeviceStore``, ``store.AuditLog``): the API, the relay and
the tests keep one object with the names they use, while each room keeps its own SQL. It is
wired here, in the composition, because a device's deletion must revoke its tokens (the accounts
room) and the devices room does not import accounts.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from actors import ChildSpec

from ._asyncio_thread import AsyncioThread
from ._config import Config
from ._crypto import Vault
from ._errors import ConfigError, NotFound, StoreUnavailable
from ._mail import Mailer
from ._tokens import TokenService
from .accounts import (
    ACCOUNT_SEALED,
    AccountData,
    Accounts,
    Oidc,
    Operators,
    RoomData,
    UserStore,
    purge_login_codes,
    purge_oauth_states,
    purge_refresh_tokens,
    purge_token_revocations,
    revoke_device_tokens,
)
from .billing import (
    BILLING_SEALED,
    BillingData,
    Collector,
    KycService,
    Ledger,
    LedgerCharger,
    Limits,
    PaymentProvider,
    Payments,
    Payouts,
    Plans,
    ProviderCollector,
    ProviderDisburser,
    ProviderPayoutMethods,
    Subscriptions,
    UsageMeter,
    open_providers,
    purge_webhook_events,
    renew_forever,
)
from .ddns import ADDRESSES_SEALED, DdnsData
from .devices import DEVICES_SEALED, DeviceStore
from .locks import LockStore
from .marketplace import MarketplaceData, purge_requests
from .networks import NetworkStore
from .store import (
    AuditLog,
    Database,
    Purge,
    Retention,
    Scope,
    migrate,
    open_database_retrying,
    reseal_all,
    retain_forever,
    seal_audit_forever,
)

log = logging.getLogger(__name__)

SEALED_COLUMNS = (*ACCOUNT_SEALED, DEVICES_SEALED, *BILLING_SEALED, ADDRESSES_SEALED)
"""Every room's personal columns sealed with the data keys."""

_SEAL_INTERVAL_S = 0.25
"""How often the store's sealer moves pending audit entries into the hash chain."""


class Store:
    """Tenant-scoped operations over a :class:`Database`, each delegated to the room that owns
    the table. Every read of tenant data takes the principal's ``Scope``; the rooms' own
    repositories are reachable as ``users``, ``networks``, ``devices``, ``audit_log`` and
    ``locks``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.users = UserStore(db)
        self.networks = NetworkStore(db)
        self.devices = DeviceStore(db, revoke=revoke_device_tokens)
        self.audit_log = AuditLog(db)
        self.locks = LockStore(db)
        # users and networks
        self.create_user = self.users.create_user
        self.get_me = self.users.get_me
        self.list_networks = self.networks.list_networks
        self.create_network = self.networks.create_network
        self.get_network = self.networks.get_network
        # devices
        self.register_device = self.devices.register_device
        self.list_devices = self.devices.list_devices
        self.get_device = self.devices.get_device
        self.update_device = self.devices.update_device
        self.delete_device = self.devices.delete_device
        self.network_devices = self.devices.network_devices
        self.set_device_presence = self.devices.set_device_presence
        # audit
        self.audit = self.audit_log.append
        self.audit_entries = self.audit_log.entries
        self.verify_audit_chain = self.audit_log.verify_chain


@dataclass(frozen=True)
class Domain:
    store: Store
    accounts: Accounts
    oidc: Oidc
    account_data: AccountData
    operators: Operators
    ledger: Ledger
    payments: Payments
    collector: Collector
    """Takes money in for ``POST /api/v1/payments/process``: the user's default verified payer
    method, through its provider (the sandbox's test tokens in test mode)."""
    subscriptions: Subscriptions
    """Plans, subscriptions, invoices and the renewal job; charges the user's default payer
    method through the ledger (:class:`LedgerCharger`)."""
    usage: UsageMeter
    """Feature access and token quotas: what the rest of the server asks."""
    payouts: Payouts
    """Payouts of earnings and their job; sends to the user's verified payout method through
    its provider (the sandbox's test tokens in test mode)."""
    kyc: KycService
    limits: Limits
    retention: Retention
    """The retention job (``[retention]``): each room's purge, once per cluster at a time."""

    @classmethod
    def build(
        cls,
        db: Database,
        tokens: TokenService,
        mailer: Mailer,
        config: Config,
        *,
        on_revoke: Callable[[str, int], None] | None = None,
        payment_providers: dict[str, PaymentProvider] | None = None,
    ) -> Domain:
        """``on_revoke(subject, not_before_ms)``: how a revocation the accounts make reaches every
        instance (by default only this process's token check). ``payment_providers``: the open
        providers (:func:`open_providers`), which the caller closes; none by default."""
        accounts = Accounts(db, tokens, mailer, config.auth, on_revoke=on_revoke)
        payments = Payments(db, payment_providers or {}, config.payments)
        store = Store(db)

        async def email_of(user_id: str) -> str | None:
            try:
                return (await store.users.get_me(Scope(user_id))).email
            except NotFound:
                return None

        collector = ProviderCollector(payments)
        limits = Limits(
            db,
            config.payouts,
            collector=collector,
            currency=config.ledger.currency,
            mailer=mailer,
            email_of=email_of,
        )
        ledger = Ledger(db, config.ledger, spending=limits)
        kyc = KycService(db, config.payouts)
        payouts = Payouts(
            db,
            ledger,
            config.payouts,
            kyc=kyc,
            methods=ProviderPayoutMethods(payments),
            disburser=ProviderDisburser(payments),
            collector=collector,
        )
        rooms: dict[str, RoomData] = {
            "billing": BillingData(ledger, config.payouts),
            "marketplace": MarketplaceData(),
            "ddns": DdnsData(db),
        }
        return cls(
            store=store,
            accounts=accounts,
            oidc=Oidc(accounts, config.oidc),
            account_data=AccountData(db, rooms),
            operators=Operators(db, rooms),
            ledger=ledger,
            payments=payments,
            collector=collector,
            subscriptions=Subscriptions.build(
                db, config.subscriptions, LedgerCharger(ledger, collector)
            ),
            usage=UsageMeter(
                db,
                Plans(config.subscriptions),
                key_ttl_ms=config.subscriptions.request_ttl_s * 1000,
            ),
            payouts=payouts,
            kyc=kyc,
            limits=limits,
            retention=Retention(db, retention_purges(config), config.retention),
        )


def retention_purges(config: Config) -> list[Purge]:
    """Each room's purge with its age from ``[retention]`` (the audit log's is the store's
    own, added by :class:`Retention`)."""
    days, day_ms = config.retention, 86_400_000
    # A revocation matters until the last access token it refuses has expired.
    revocation_ms = days.token_revocations_days * day_ms
    if revocation_ms:
        revocation_ms += (config.auth.access_ttl_s + 60) * 1000
    return [
        Purge("login_codes", days.login_codes_days * day_ms, purge_login_codes),
        Purge("refresh_tokens", days.refresh_tokens_days * day_ms, purge_refresh_tokens),
        Purge("oauth_states", days.oauth_states_days * day_ms, purge_oauth_states),
        Purge("token_revocations", revocation_ms, purge_token_revocations),
        Purge("webhook_events", days.webhook_events_days * day_ms, purge_webhook_events),
        Purge("marketplace_requests", days.marketplace_requests_days * day_ms, purge_requests),
    ]


class DomainHandle:
    """The domain services of the running store, for everyone who outlives a store restart.

    The store child fills it once the database is open and migrated, and clears it when it
    stops; :meth:`get` in between returns the current :class:`Domain`, and otherwise raises
    :class:`StoreUnavailable` (the API answers 503 ``store_unavailable``). Ask at the moment of
    use: what :meth:`get` returned belongs to one run of the store.
    """

    def __init__(self) -> None:
        self._domain: Domain | None = None

    def get(self) -> Domain:
        domain = self._domain
        if domain is None:
            raise StoreUnavailable("the data store is starting")
        return domain

    def fill(self, domain: Domain) -> None:
        self._domain = domain

    def clear(self) -> None:
        self._domain = None


def store_child(
    domain: DomainHandle,
    config: Config,
    tokens: TokenService,
    mailer: Mailer,
    bridge: AsyncioThread,
    *,
    on_revoke: Callable[[str, int], None],
    shutdown_s: float,
    vault: Vault | None = None,
) -> ChildSpec:
    """The ``store`` child: opens the configured database (retrying for
    ``database.connect_timeout_s``), applies the migrations and fills ``domain`` with the
    services over it; on the way out (stopped, cancelled or crashed) it clears ``domain`` and
    closes the database. ``on_revoke`` as in :meth:`Domain.build`. ``vault`` seals personal
    data (``_crypto``): before the domain serves, what migration 0011 marked ``plain:`` is sealed,
    and while it runs, rows under an older data key move to the current one."""

    async def run(*, stopping: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        db = await open_database_retrying(config.database, config.data_path, bridge)
        if vault is not None:
            db.vault = vault
        try:
            applied = await migrate(db)
            sealed = await reseal_all(db, SEALED_COLUMNS, config.encryption.reencrypt_batch)
            if sealed:
                log.info("sealed personal data in %d rows at start-up", sealed)
            async with open_providers(config.payments) as providers:
                built = Domain.build(
                    db, tokens, mailer, config, on_revoke=on_revoke, payment_providers=providers
                )
                # Holds that expired while no instance ran (a crash in the middle of a
                # settlement) give their money back before the API answers again.
                released = await built.ledger.reconcile_holds()
                if released:
                    log.info("released %d expired holds at start-up", released)
                domain.fill(built)
                log.info(
                    "store ready: %s (%d migrations applied now)", db.description, len(applied)
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(seal_audit_forever, built.store.audit_log, _SEAL_INTERVAL_S)
                    nursery.start_soon(built.ledger.maintain_forever)
                    nursery.start_soon(built.payouts.run_forever)
                    nursery.start_soon(reseal_forever, db, config)
                    subscriptions = built.subscriptions
                    nursery.start_soon(
                        functools.partial(
                            renew_forever,
                            subscriptions.renewals,
                            config.subscriptions.renewal_interval_s,
                            purges=[subscriptions.requests.purge, built.usage.purge],
                        )
                    )
                    if config.retention.enabled:
                        nursery.start_soon(
                            retain_forever, built.retention, config.retention.interval_s
                        )
                    task_status.started()
                    await stopping.wait()
                    nursery.cancel_scope.cancel()
                with trio.move_on_after(2):  # what was appended until now joins the chain
                    try:
                        await built.store.audit_log.seal()
                    except StoreUnavailable:
                        log.info("audit entries stay pending: the store is unreachable")
                domain.clear()  # before the providers close
        finally:
            domain.clear()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await db.aclose()

    return ChildSpec("store", run, shutdown_s=shutdown_s, graceful=True)


_RESEAL_PASSES = 10
"""Intervals after a key change during which the tables are scanned for rows under an older
key: long enough for every instance sharing the keyring to have read it again (and so to have
stopped sealing with the old key)."""


async def reseal_forever(db: Database, config: Config) -> None:
    """Every ``encryption.reencrypt_interval_s``: read the keyring again (a rotation by
    ``yggdrasil keys rotate-data`` reaches a running instance so); after a change of the
    current key, move the rows sealed under an older key to it, for a few intervals (the
    start-up already sealed everything). An unreachable store only delays it."""
    passes, seen = 0, db.vault.current
    while True:
        await trio.sleep(config.encryption.reencrypt_interval_s)
        try:
            db.vault.reload()
            if db.vault.current != seen:  # (reading a new key's value may have reloaded it)
                seen = db.vault.current
                log.info("data key %s is current now", seen)
                passes = _RESEAL_PASSES
            if passes > 0:
                changed = await reseal_all(db, SEALED_COLUMNS, config.encryption.reencrypt_batch)
                passes -= 1
                if changed:
                    log.info("re-encrypted %d rows under data key %s", changed, db.vault.current)
        except StoreUnavailable as exc:
            log.info("re-encryption waits for the store: %s", exc.message)
        except (OSError, ConfigError) as exc:
            log.error("cannot read the data keyring again: %s", exc)
