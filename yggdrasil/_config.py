"""The configuration tree: TOML file, then ``YGG_`` environment, then command-line flags.

Every section rejects unknown keys, naming the key. Environment variables are
``YGG_<SECTION>_<KEY>``, e.g. ``YGG_API_PORT=9000`` or ``YGG_DATABASE_URL=postgresql://...``.
"""

from __future__ import annotations

import ipaddress
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from ._errors import ConfigError

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    """Address every listener binds to."""
    data_dir: str = "./yggdrasil-data"
    """SQLite database, generated secrets and the e-mail outbox live here."""
    instance_id: str = ""
    """Name of this instance on the bus; empty: generated at start-up."""
    grace_s: Seconds = 10.0
    """How long a graceful shutdown may take before everything left is cancelled."""


class ApiConfig(_Section, frozen=True):
    port: Port = 8080
    max_body_bytes: Positive = 1_048_576
    """Larger request bodies get 413."""
    body_timeout_s: Seconds = 30.0
    response_timeout_s: Seconds = 30.0
    trusted_proxies: list[str] = []
    """CIDRs of reverse proxies whose ``X-Forwarded-For`` names the real client (rate limits)."""


class GatewayConfig(_Section, frozen=True):
    port: Port = 8081
    max_data_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 1024 * 1024
    """Largest payload of one message; a bigger websocket message closes the session (1009)."""
    queue_size: Positive = 256
    """Frames waiting for one device; beyond it senders get ``overloaded``."""
    queue_bytes: Positive = 4 * 1024 * 1024
    """Bytes waiting for one device (an empty queue always takes one frame); beyond it senders
    get ``overloaded``."""
    queue_bytes_total: Positive = 256 * 1024 * 1024
    """Bytes waiting for all devices of this instance together; past it the devices with the
    longest backlogs are disconnected as slow consumers (4002) and their queues dropped."""
    send_timeout_s: Seconds = 10.0
    """A device that takes longer to accept one frame is disconnected as a slow consumer."""
    confirm_timeout_s: Seconds = 15.0
    """With receipts: a ``send`` its recipient has not confirmed by then is refused ``timeout``
    (it may still have arrived: a sender that sends again may deliver twice)."""
    handshake_timeout_s: Seconds = 10.0
    hello_timeout_s: Seconds = 10.0
    ping_interval_s: Seconds = 20.0
    ping_timeout_s: Seconds = 10.0
    messages_per_s: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    """Per session: frames a device may send per second (with a burst of twice that)."""
    max_sessions_per_user: Positive = 32
    max_pending_requests: Positive = 64
    """Requests one device may have waiting for answers at once."""
    tenant_messages_per_s: Annotated[float, msgspec.Meta(gt=0)] = 2000.0
    tenant_bytes_per_s: Annotated[float, msgspec.Meta(gt=0)] = 64.0 * 1024 * 1024
    network_idle_s: Seconds = 60.0
    """A network actor with no sessions stops after this long."""
    allowed_origins: list[str] = []
    """Browser origins allowed to connect; connections with another ``Origin`` are refused."""
    webrtc: bool = True
    """Accept device sessions over WebRTC data channels (``POST /api/v1/devices/{id}/webrtc``)."""
    webrtc_connect_timeout_s: Seconds = 15.0
    """A negotiated data channel that has not opened by then is given up."""


class TurnConfig(_Section, frozen=True):
    port: Port = 3478
    """STUN and TURN over UDP and TCP (TLS on ``tls_port`` when a certificate is configured)."""
    realm: str = "yggdrasil"
    public_host: str = ""
    """The host name or address devices use to reach STUN/TURN; empty: ``server.host``."""
    relay_port_min: Port = 49152
    relay_port_max: Port = 65535
    static_users: list[str] = []
    """``user:password`` long-term credentials for operators and benchmarks (off by default)."""
    allow_peers: list[str] = []
    """CIDRs a relay may reach despite the deny list (tests, special deployments)."""
    tls_port: Port = 5349
    """TURN over TLS, served only when ``tls_cert_file`` and ``tls_key_file`` are set."""
    tls_public_port: Port = 0
    """The TLS port devices are told (``turns:``) when something in front of the server takes
    TLS connections on another port (a TCP load balancer or port forward on 443); 0: the bound
    ``tls_port``."""
    tls_cert_file: str = ""
    """PEM certificate chain for ``public_host``; a changed file is used for new connections."""
    tls_key_file: str = ""
    credential_ttl_s: Annotated[int, msgspec.Meta(ge=60)] = 24 * 3600
    """Lifetime of the ephemeral credentials issued to devices."""
    max_allocations: Positive = 10_000
    max_allocations_per_user: Positive = 64
    """Allocations of one account (all its devices' credentials; a static user is an account)."""
    max_allocations_per_device: Positive = 16
    max_allocations_per_static_user: Positive = 256
    """Allocations of one of ``static_users`` (instead of the per-account and per-device
    quotas); ``max_allocations`` still caps them all."""
    default_lifetime_s: Annotated[int, msgspec.Meta(ge=60)] = 600
    max_lifetime_s: Annotated[int, msgspec.Meta(ge=60)] = 3600
    unauthenticated_answers_per_s: Annotated[float, msgspec.Meta(gt=0)] = 100.0
    """Answers to unauthenticated requests (Binding, challenges) per client address."""
    allocation_bytes_per_s: Annotated[float, msgspec.Meta(gt=0)] = 4_000_000.0
    """Relayed payload per allocation and second, both directions; beyond it, dropped."""
    relay_ip: str = ""
    """IPv4 address relay sockets bind to; empty: ``server.host``, or when that is a wildcard,
    the address of the default route's interface."""
    external_ip: str = ""
    """The public IPv4 address of ``relay_ip`` behind a 1:1 NAT (a cloud VM): relayed addresses
    are advertised with it."""
    relay_ip_v6: str = ""
    """IPv6 address for IPv6 relays (REQUESTED-ADDRESS-FAMILY); empty: IPv4 relays only."""


class DatabaseConfig(_Section, frozen=True):
    url: str = ""
    """Empty: SQLite in the data directory. ``postgresql://user@host:port/db`` for PostgreSQL."""
    pool_min: Annotated[int, msgspec.Meta(ge=0)] = 1
    pool_max: Positive = 10
    connect_timeout_s: Seconds = 30.0
    """How long start-up keeps retrying an unreachable database before it gives up."""
    query_timeout_s: Seconds = 10.0


class BusConfig(_Section, frozen=True):
    url: str = ""
    """Empty: the in-process bus (a single instance). ``nats://host:4222`` (or ``tls://``):
    instances sharing one NATS server (with JetStream) and one database form a cluster."""
    prefix: str = "ygg"
    """Subjects and key-value buckets of this cluster start with it (several clusters may
    share one NATS server)."""
    user: str = ""
    password: str = ""
    token: str = ""
    nkey_seed_file: str = ""
    tls_ca_file: str = ""
    """CA bundle that signs the NATS server's certificate (TLS also with a ``tls://`` URL)."""
    tls_cert_file: str = ""
    """Client certificate, where the NATS server asks for one."""
    tls_key_file: str = ""
    heartbeat_s: Seconds = 1.0
    """How often this instance says it is alive."""
    instance_timeout_s: Seconds = 3.0
    """An instance not heard from for this long is dead: its addresses are given up."""
    connect_timeout_s: Seconds = 10.0
    reconnect_wait_s: Seconds = 2.0
    """Between reconnection attempts (shorter ones lose messages in flight across a restart)."""
    outbox_size: Positive = 10_000
    """Envelopes waiting to be published; past it senders get ``overloaded``."""
    inbox_size: Positive = 50_000
    """Envelopes received and waiting for delivery; past it they are dropped and counted."""


class AuthConfig(_Section, frozen=True):
    issuer: str = "yggdrasil"
    """``iss`` of the access tokens this server signs."""
    audience: str = "yggdrasil-api"
    access_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=3600)] = 900
    refresh_ttl_s: Annotated[int, msgspec.Meta(ge=3600)] = 30 * 24 * 3600
    code_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=3600)] = 600
    code_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 5
    codes_per_address: Annotated[int, msgspec.Meta(ge=1)] = 3
    """Codes one client address may have sent to one e-mail address per ``codes_window_s``."""
    codes_per_address_total: Annotated[int, msgspec.Meta(ge=1)] = 30
    """Codes one e-mail address may be sent per ``codes_window_s`` from all clients together:
    bounds the mail to one mailbox. Many clients together can still use it up."""
    codes_window_s: Annotated[int, msgspec.Meta(ge=60)] = 900
    enrollment_key_max_ttl_s: Annotated[int, msgspec.Meta(ge=60)] = 7 * 24 * 3600
    revocation_sync_s: Seconds = 5.0
    """How often revocations written by other instances are picked up."""
    hash_workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    """argon2id hashes running at once in the whole process (19 MiB each), on dedicated threads."""
    hash_queue: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 64
    """Hashes that may wait for a worker; beyond it sign-in answers 503 with ``Retry-After``."""


class MailConfig(_Section, frozen=True):
    smtp_url: str = ""
    """Empty: write each message into ``<data-dir>/outbox/``. ``smtp://host:port``,
    ``smtp+starttls://user:password@host:587`` or ``smtps://user:password@host:465``."""
    sender: str = "Yggdrasil <no-reply@yggdrasil.invalid>"
    timeout_s: Seconds = 10.0
    queue_size: Positive = 1000


class LimitsConfig(_Section, frozen=True):
    """Token buckets: a sustained rate per second and a burst."""

    per_client_rate: Annotated[float, msgspec.Meta(gt=0)] = 50.0
    per_client_burst: Positive = 100
    per_principal_rate: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    per_principal_burst: Positive = 60
    auth_per_client_rate: Annotated[float, msgspec.Meta(gt=0)] = 0.2
    """Sign-in attempts (codes requested or verified, refreshes, enrolments) per client address."""
    auth_per_client_burst: Positive = 10
    tracked_keys: Positive = 100_000


class OidcProviderConfig(_Section, frozen=True):
    issuer: str
    client_id: str
    redirect_uris: list[str]
    client_secret: str = ""
    discovery_url: str = ""
    """Empty: ``<issuer>/.well-known/openid-configuration``."""
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "email", "profile"])


class OidcConfig(_Section, frozen=True):
    providers: dict[str, OidcProviderConfig] = {}
    http_timeout_s: Seconds = 10.0
    state_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=3600)] = 600


class LogConfig(_Section, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    access: bool = True
    """One line per HTTP request of the API (method, path, status, duration, client)."""


class OperatorConfig(_Section, frozen=True):
    """The operator listener: ``/metrics`` for Prometheus, apart from the public API."""

    enabled: bool = True
    """Serve the operator listener; false: no listener and no metrics endpoint at all."""
    host: str = "127.0.0.1"
    """Loopback by default, whatever ``server.host`` is: metrics are for operators only."""
    port: Port = 9464
    """0 picks a free port. Not 9090, which is Prometheus's own."""
    token: str = ""
    """When set, ``/metrics`` asks for ``Authorization: Bearer <token>`` (a listener reachable
    beyond the host)."""


class LedgerConfig(_Section, frozen=True):
    """The double-entry ledger: amounts are integer cents of one currency."""

    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] = "EUR"
    """ISO 4217 code of the currency every amount is in."""
    company_fee_bp: Annotated[int, msgspec.Meta(ge=1000, le=1500)] = 1000
    """The company's share of a marketplace settlement in basis points (1000 = 10 %), rounded
    half up to a whole cent; the provider earns the rest."""
    hold_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=30 * 24 * 3600)] = 3600
    """How long a hold (pre-authorization) stays open; past it, the reconciliation at start-up
    and every ``reconcile_interval_s`` releases what was not captured."""
    reconcile_interval_s: Seconds = 60.0
    """How often expired holds are released and expired idempotency keys removed."""
    idempotency_ttl_s: Annotated[int, msgspec.Meta(ge=24 * 3600)] = 24 * 3600
    """How long the answer to a money-moving request is kept for replays (at least a day)."""


class PaymentsConfig(_Section, frozen=True):
    """Payment providers (docs/payments.md). With nothing configured, the embedded sandbox
    provider answers in test mode: no money moves anywhere."""

    sandbox: bool = True
    """Offer the sandbox provider (test mode, test tokens only). It is the default provider
    unless Stripe or PayPal is configured; set false in production."""
    stripe_secret_key: str = ""
    """Stripe's secret API key (``sk_live_...`` or ``sk_test_...``); set: Stripe is enabled and is
    the default provider for cards and SEPA debits."""
    stripe_webhook_secret: str = ""
    """The signing secret of the Stripe webhook endpoint (``whsec_...``); empty: Stripe's webhook
    answers 404."""
    stripe_api_base: str = "https://api.stripe.com"
    """Where Stripe's API is reached (tests point it at a local fake)."""
    paypal_client_id: str = ""
    paypal_client_secret: str = ""
    """Both set: PayPal is enabled (REST API, OAuth2 client credentials)."""
    paypal_webhook_id: str = ""
    """The id PayPal gave the webhook endpoint, which its signature check needs; empty: PayPal's
    webhook answers 404."""
    paypal_api_base: str = "https://api-m.paypal.com"
    """``https://api-m.sandbox.paypal.com`` for PayPal's sandbox; tests use a local fake."""
    timeout_s: Seconds = 20.0
    """One attempt of one call to a provider; past it the attempt counts as failed."""
    deadline_s: Seconds = 60.0
    """One operation with a provider, retries included; past it the API answers 503."""
    retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 2
    """Retries of a call that failed on the network or with a 5xx, with the same idempotency key."""
    webhook_tolerance_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 300
    """A webhook whose signed timestamp is further from now than this, either way, is refused."""
    micro_deposit_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    """Wrong confirmations of a SEPA account's micro-deposits before its verification fails."""


PlanId = Annotated[str, msgspec.Meta(pattern="^[a-z][a-z0-9_]{0,31}$")]
Cents = Annotated[int, msgspec.Meta(ge=0, le=10**9)]


class PlanConfig(_Section, frozen=True):
    """One subscription plan (one entry of ``subscriptions.plans``)."""

    id: PlanId
    """What the API calls it (``premium``); ``free`` is the plan of everyone without another."""
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    """Its name on pages and invoices."""
    price_cents: Cents = 0
    """The fee per period (a calendar month), charged at the start of the period."""
    tokens: Annotated[int, msgspec.Meta(ge=0, le=10**12)] = 0
    """Cloud-LLM tokens included per period; consumption past them is refused."""
    token_price_cents: Cents = 0
    """Pay-per-token: when above 0, tokens are not limited but counted, and charged at the end
    of the period at this price per 1,000 tokens (rounded up to a whole cent)."""
    features: list[str] = []
    """Features this plan grants beyond ``subscriptions.core_features`` (``cloud_llm``,
    ``priority_relay``, ``priority_support``)."""


def _default_plans() -> list[PlanConfig]:
    return [
        PlanConfig(id="free", name="Free"),
        PlanConfig(
            id="premium", name="Premium", price_cents=3000, tokens=400_000, features=["cloud_llm"]
        ),
        PlanConfig(
            id="pro",
            name="Pro",
            price_cents=12000,
            tokens=1_700_000,
            features=["cloud_llm", "priority_relay"],
        ),
        PlanConfig(
            id="enterprise",
            name="Enterprise",
            price_cents=25000,
            tokens=3_500_000,
            features=["cloud_llm", "priority_relay", "priority_support"],
        ),
        PlanConfig(
            id="pay_per_token", name="Pay-per-Token", token_price_cents=1, features=["cloud_llm"]
        ),
    ]


class SubscriptionsConfig(_Section, frozen=True):
    """Subscription plans, feature access and token quotas, renewals."""

    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] = "EUR"
    """ISO 4217 code of every plan price and invoice."""
    plans: list[PlanConfig] = msgspec.field(default_factory=_default_plans)
    """The plans users may choose (``[[subscriptions.plans]]`` tables); one must be ``free``,
    with no price and no tokens."""
    core_features: list[str] = msgspec.field(
        default_factory=lambda: ["relay", "turn", "marketplace"]
    )
    """Features every plan grants, ``free`` included."""
    grace_s: Annotated[int, msgspec.Meta(ge=0)] = 7 * 24 * 3600
    """After a renewal charge fails, the subscription stays usable this long (past due) while
    the charge is retried; then it ends and the user is on ``free``."""
    retry_after_s: list[Annotated[int, msgspec.Meta(ge=1)]] = msgspec.field(
        default_factory=lambda: [24 * 3600, 3 * 24 * 3600, 5 * 24 * 3600]
    )
    """When a failed renewal charge is retried, in seconds after the renewal date (each within
    ``grace_s``)."""
    renewal_interval_s: Seconds = 60.0
    """How often the renewal job looks for subscriptions due."""
    lease_s: Annotated[int, msgspec.Meta(ge=5)] = 120
    """How long one instance holds a user's billing (a renewal, a plan change) before another
    may take it over: longer than a charge may take."""
    request_ttl_s: Annotated[int, msgspec.Meta(ge=24 * 3600)] = 48 * 3600
    """How long the answers to subscription requests are kept for replays (at least a day)."""


class PayoutsConfig(_Section, frozen=True):
    """Payouts of earnings, KYC, spending limits and auto-top-up (billing)."""

    interval_s: Seconds = 60.0
    """How often the payout job looks for users whose payout is due and for pending payouts."""
    default_frequency: Literal["daily", "weekly", "monthly"] = "monthly"
    """How often earnings are paid out for users who chose nothing (periods in UTC; weeks are
    ISO weeks)."""
    default_minimum: Annotated[int, msgspec.Meta(ge=1, le=100_000_000_000)] = 1000
    """The smallest payout in cents for users who chose nothing (1000 = EUR 10)."""
    minimum_floor: Annotated[int, msgspec.Meta(ge=1, le=100_000_000_000)] = 100
    """The smallest minimum a user may choose, in cents."""
    kyc_regions: list[Annotated[str, msgspec.Meta(pattern="^([A-Z]{2}|\\*)$")]] = msgspec.field(
        default_factory=lambda: ["*"]
    )
    """Regions (ISO 3166 country codes) whose providers need a verified KYC before a payout;
    ``*`` is every region (and a user who has not said where they are)."""
    lease_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 300
    """How long one instance has a pending payout to itself while it asks the provider; past
    it (that instance died) another instance sends it again with the same key."""
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    """Tries of a payout whose provider cannot be reached before it fails and its booking is
    reversed (the money goes back to the earnings)."""
    alert_thresholds: list[Annotated[int, msgspec.Meta(ge=1, le=1000)]] = msgspec.field(
        default_factory=lambda: [50, 80, 100]
    )
    """Budget alerts, in percent of the monthly spending limit, for users who chose none."""
    max_topups_per_month: Annotated[int, msgspec.Meta(ge=0, le=100)] = 10
    """The most automatic top-ups a user may allow per month."""


class LocksConfig(_Section, frozen=True):
    """Global locks: one lock manager per network with locks in use (``locks/<network>``)."""

    idle_s: Seconds = 60.0
    """A lock manager with no grants and no waiters stops after this long."""
    max_lease_ms: Annotated[int, msgspec.Meta(ge=1000)] = 3_600_000
    """The longest lease one acquire or renewal may ask for."""
    max_wait_ms: Annotated[int, msgspec.Meta(ge=0)] = 60_000
    """The longest an acquire may wait for a held lock."""
    max_locks: Positive = 10_000
    """Locks held or waited for in one network at once; beyond it acquires get ``overloaded``."""
    max_waiters: Positive = 10_000
    """Acquires waiting in one network at once; beyond it they get ``overloaded``."""


class MarketplaceConfig(_Section, frozen=True):
    """The compute marketplace (``docs/marketplace.md``)."""

    first_token_timeout_s: Seconds = 10.0
    """A provider that sends nothing for this long after a job was offered fails over."""
    job_timeout_s: Seconds = 120.0
    """The longest one job may stream before it is cut off (and failed over or failed)."""
    test_timeout_s: Seconds = 10.0
    """How long the registration's test job may take."""
    max_running: Positive = 256
    """Requests running at once on one instance; beyond it new ones get 503."""
    stream_queue: Positive = 256
    """Chunks buffered for one streaming reader before it is cut off (a slow reader)."""
    max_attempts: Positive = 3
    """Providers tried for one request (failover) before it fails."""
    probe_interval_s: Seconds = 5.0
    """How often the instance looks for providers to probe (breakers half-open, idle ones)."""
    idle_probe_s: Seconds = 300.0
    """A provider with no job for this long gets a probe (a short test job)."""
    breaker_failures: Positive = 5
    """Failures in a row that open a provider's breaker (it gets no requests until a probe
    passes)."""
    breaker_cooldown_s: Seconds = 30.0
    """How long an opened breaker waits before its first probe (doubling after each failed
    probe, at most 10 minutes)."""


class DdnsConfig(_Section, frozen=True):
    """Dynamic DNS for devices (``docs/ddns.md``): names ``<label>.<zone>`` updated through RFC
    2136 dynamic updates signed with TSIG (RFC 8945). Off while ``zone`` is empty."""

    zone: str = ""
    """The zone the names live in (a zone for device names only, e.g. ``dyn.example.org``);
    empty: DDNS is off and its routes answer 404."""
    server: str = ""
    """The zone's primary server that takes the updates, ``host:port`` (port 53 if omitted)."""
    key_name: str = ""
    """The TSIG key's name, as the DNS server knows it."""
    key_algorithm: Literal[
        "hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1"
    ] = "hmac-sha256"
    key_secret: str = ""
    """The TSIG key's secret, base64; or ``key_file``."""
    key_file: str = ""
    """A file that holds the base64 secret (read once at start-up)."""
    ttl_s: Annotated[int, msgspec.Meta(ge=0, le=86400)] = 60
    """The TTL of the A and AAAA records written."""
    timeout_s: Seconds = 5.0
    """How long one update may take before it counts as failed (and is retried)."""
    retry_max_s: Seconds = 300.0
    """Failed updates are retried after 1 s, doubling up to this."""
    publish_private: bool = False
    """Publish addresses that are not globally reachable (private, loopback): for a LAN's own
    DNS and for tests. Off: only global addresses go into the zone."""
    sweep_s: Seconds = 30.0
    """How often the names of deleted devices (and of deleted accounts and networks) are looked
    for; their records leave the zone then."""
    reserved_labels: list[str] = msgspec.field(
        default_factory=lambda: ["ns", "ns1", "ns2", "www", "mail", "mx"]
    )
    """Labels no user may take (the zone's own names)."""


class MonitoringConfig(_Section, frozen=True):
    """The watch for cross-network probing: per principal, refusals of ids it may not see."""

    probe_threshold: Positive = 30
    """Refusals (API 404s for ids that are foreign or absent, envelopes the router refuses as
    unreachable) within ``probe_window_s`` that make a principal a prober."""
    probe_window_s: Seconds = 60.0
    """The sliding window the refusals are counted over; one audit entry per window."""
    probe_block_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """How long a prober is refused (API 429 ``blocked``, envelopes to devices unreachable);
    0: never blocked, only audited and counted."""
    probe_tracked: Positive = 10_000
    """Principals tracked at once on an instance; the least recently refused is forgotten."""


Days = Annotated[int, msgspec.Meta(ge=0, le=36500)]


class RetentionConfig(_Section, frozen=True):
    """The retention job (``docs/operations.md``, "Retention"): what is deleted after how long.
    ``0`` keeps that kind of row for ever. One instance of a cluster runs it at a time."""

    enabled: bool = True
    """Run the retention job on this instance (any instance may take a round)."""
    interval_s: Seconds = 3600.0
    """How often the job looks for rows past their retention."""
    lease_s: Annotated[int, msgspec.Meta(ge=10, le=86400)] = 600
    """How long one instance has a round to itself; past it (that instance died) another may
    take over."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    """Rows deleted per transaction."""
    login_codes_days: Days = 1
    """E-mail one-time codes: days after they expired (at least ``auth.codes_window_s``)."""
    refresh_tokens_days: Days = 7
    """Refresh tokens: days after they expired or were revoked."""
    oauth_states_days: Days = 1
    """OpenID Connect sign-in states: days after they expired."""
    token_revocations_days: Days = 1
    """Token revocations: days after the last access token they could refuse expired."""
    webhook_events_days: Days = 90
    """Payment providers' webhook events (kept to drop redelivered ones): days after receipt;
    at least 7, longer than the providers retry."""
    marketplace_requests_days: Days = 365
    """Finished marketplace requests (their prompts and answers) without an open dispute: days
    after they were made. The ledger's entries stay."""
    audit_days: Days = 365
    """Audit log entries: days after they were written; the oldest go first (a prefix of the
    chain) and the cut is recorded, so the chain still verifies."""


class EncryptionConfig(_Section, frozen=True):
    key_file: str = ""
    """The data keyring (AES-256-GCM keys and the blind-index key, JSON); empty: the data
    directory's ``secrets/data-keyring.json``, generated on first start."""
    reencrypt_interval_s: Seconds = 30.0
    """How often the keyring is read again and rows under an older key are re-encrypted."""
    reencrypt_batch: Positive = 500
    """Rows re-encrypted per transaction."""


class Config(_Section, frozen=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    turn: TurnConfig = msgspec.field(default_factory=TurnConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    mail: MailConfig = msgspec.field(default_factory=MailConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    oidc: OidcConfig = msgspec.field(default_factory=OidcConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    operator: OperatorConfig = msgspec.field(default_factory=OperatorConfig)
    ledger: LedgerConfig = msgspec.field(default_factory=LedgerConfig)
    payments: PaymentsConfig = msgspec.field(default_factory=PaymentsConfig)
    subscriptions: SubscriptionsConfig = msgspec.field(default_factory=SubscriptionsConfig)
    payouts: PayoutsConfig = msgspec.field(default_factory=PayoutsConfig)
    locks: LocksConfig = msgspec.field(default_factory=LocksConfig)
    marketplace: MarketplaceConfig = msgspec.field(default_factory=MarketplaceConfig)
    ddns: DdnsConfig = msgspec.field(default_factory=DdnsConfig)
    monitoring: MonitoringConfig = msgspec.field(default_factory=MonitoringConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    encryption: EncryptionConfig = msgspec.field(default_factory=EncryptionConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)


_SECTIONS: dict[str, type[_Section]] = {
    "server": ServerConfig,
    "api": ApiConfig,
    "gateway": GatewayConfig,
    "turn": TurnConfig,
    "database": DatabaseConfig,
    "bus": BusConfig,
    "auth": AuthConfig,
    "mail": MailConfig,
    "limits": LimitsConfig,
    "oidc": OidcConfig,
    "log": LogConfig,
    "operator": OperatorConfig,
    "ledger": LedgerConfig,
    "payments": PaymentsConfig,
    "subscriptions": SubscriptionsConfig,
    "payouts": PayoutsConfig,
    "locks": LocksConfig,
    "marketplace": MarketplaceConfig,
    "ddns": DdnsConfig,
    "monitoring": MonitoringConfig,
    "retention": RetentionConfig,
    "encryption": EncryptionConfig,
}


def _environment_layer(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The ``YGG_`` variables, each converted to its key's type (environment values are text:
    ``"8080"`` becomes the integer 8080); a value that does not convert is refused by name."""
    layer: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith("YGG_"):
            continue
        section, _, key = name[4:].lower().partition("_")
        typ = _SECTIONS.get(section)
        if typ is None or key not in typ.__struct_fields__:
            raise ConfigError(f"unknown configuration variable {name}")
        hint = typing.get_type_hints(typ, include_extras=True)[key]
        text = _list_or_text(name, hint, value)
        try:
            layer.setdefault(section, {})[key] = msgspec.convert(text, hint, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{name}={value!r}: {_detail(exc)}") from None
    return layer


def _list_or_text(name: str, hint: Any, value: str) -> Any:
    """A list setting from the environment: a JSON array, or items separated by commas."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is not list:
        return value
    if value.strip().startswith("["):
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{name} is not a JSON array: {exc}") from None
    return [item.strip() for item in value.split(",") if item.strip()]


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def _detail(exc: msgspec.ValidationError) -> str:
    """msgspec's message without its location: ``expected `int`, got `str```."""
    text = str(exc).split(" - at `$", 1)[0]
    return text[:1].lower() + text[1:]


def _where(exc: msgspec.ValidationError) -> list[str]:
    """The path msgspec names (``$.api.port`` -> ``["api", "port"]``), empty at the top."""
    _, _, path = str(exc).partition(" - at `$")
    return [part for part in path.rstrip("`").split(".") if part]


def _unknown(exc: msgspec.ValidationError) -> str | None:
    text = str(exc)
    if text.startswith("Object contains unknown field `"):
        return text.split("`", 2)[1]
    return None


def _file_error(
    path: str | Path, exc: msgspec.ValidationError, within: Sequence[str] = ()
) -> ConfigError:
    """``ygg.toml: [api] port: expected `int`, got `str```, or an unknown section or key.
    ``within``: the table that was validated on its own (``oidc.providers.<name>``)."""
    where, unknown = [*within, *_where(exc)], _unknown(exc)
    if unknown is not None:
        if not where:
            return ConfigError(f"{path}: unknown section [{unknown}]")
        return ConfigError(f"{path}: [{'.'.join(where)}] unknown key {unknown!r}")
    if len(where) < 2:
        return ConfigError(f"{path}: [{'.'.join(where)}] {_detail(exc)}")
    section, key = ".".join(where[:-1]), where[-1]
    return ConfigError(f"{path}: [{section}] {key}: {_detail(exc)}")


def _check_file(path: str | Path, data: dict[str, Any]) -> None:
    """The file's values have their keys' types (TOML has types: no conversion here)."""
    oidc = data.get("oidc")
    providers = oidc.get("providers") if isinstance(oidc, dict) else None
    if isinstance(providers, dict):
        # msgspec names a table under a dict key "[...]": each provider on its own names it.
        for name, provider in providers.items():
            try:
                msgspec.convert(provider, OidcProviderConfig, strict=True)
            except msgspec.ValidationError as exc:
                raise _file_error(path, exc, ("oidc", "providers", name)) from None
    try:
        msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise _file_error(path, exc) from None


def _error(exc: msgspec.ValidationError) -> ConfigError:
    where, unknown = _where(exc), _unknown(exc)
    if unknown is not None:
        return ConfigError(f"unknown configuration key {'.'.join([*where, unknown])}")
    return ConfigError(f"invalid {'.'.join(where) or 'configuration'}: {_detail(exc)}")


def _check_values(config: Config) -> None:
    """What a type cannot say: addresses, networks and credentials that must parse."""
    for key, host in (("server.host", config.server.host), ("operator.host", config.operator.host)):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"{key} must be an IP address (0.0.0.0 or :: for every interface), not {host!r}"
            ) from None
    for key, networks in (
        ("api.trusted_proxies", config.api.trusted_proxies),
        ("turn.allow_peers", config.turn.allow_peers),
    ):
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"{key}: {network!r} is not a CIDR (like 10.0.0.0/8)") from None
    payments = config.payments
    if bool(payments.paypal_client_id) != bool(payments.paypal_client_secret):
        raise ConfigError("payments: paypal_client_id and paypal_client_secret go together")
    for key, url in (
        ("payments.stripe_api_base", payments.stripe_api_base),
        ("payments.paypal_api_base", payments.paypal_api_base),
    ):
        if not url.startswith(("https://", "http://")) or "@" in url:
            raise ConfigError(f"{key} must be an http(s) URL without credentials, not {url!r}")
    for entry in config.turn.static_users:
        user, colon, password = entry.partition(":")
        if not user or not colon or not password:
            # Never echo what may be a password: only the part before the colon.
            raise ConfigError(
                f"turn.static_users: the entry for user {user!r} is not USER:PASSWORD"
                " (both parts are needed)"
            )


def _check_subscriptions(config: SubscriptionsConfig) -> None:
    """The plans table: unique ids, a free plan that costs nothing, retries within the grace."""
    ids = [plan.id for plan in config.plans]
    for plan_id in ids:
        if ids.count(plan_id) > 1:
            raise ConfigError(f"subscriptions.plans: the plan id {plan_id!r} appears twice")
    free = [plan for plan in config.plans if plan.id == "free"]
    if not free or free[0].price_cents or free[0].token_price_cents or free[0].tokens:
        raise ConfigError(
            "subscriptions.plans: a plan 'free' with no price and no tokens is required"
        )
    for retry in config.retry_after_s:
        if retry > config.grace_s:
            raise ConfigError(
                f"subscriptions.retry_after_s: {retry} is after the grace period"
                f" (grace_s = {config.grace_s})"
            )


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the configuration; raises :class:`ConfigError` naming the offending file, section
    and key, variable or setting.

    A file's values must have their key's type (``port = "8080"`` is refused); ``YGG_``
    variables are text and converted. ``overrides`` are the command-line flags, as
    ``{"section": {"key": value}}``.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        _check_file(path, data)
    _merge(data, _environment_layer(environ or {}))
    _merge(data, overrides or {})
    try:
        config = msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise _error(exc) from None
    _check_values(config)
    _check_subscriptions(config.subscriptions)
    _check_retention(config)
    return config


def _check_retention(config: Config) -> None:
    """Retention never removes what a running check still needs."""
    retention = config.retention
    codes_s = retention.login_codes_days * 86400
    if codes_s and codes_s < config.auth.codes_window_s:
        raise ConfigError(
            "retention.login_codes_days: codes are counted for auth.codes_window_s"
            f" ({config.auth.codes_window_s} s); keep them at least that long"
        )
    if 0 < retention.webhook_events_days < 7:
        raise ConfigError(
            "retention.webhook_events_days must be 0 (for ever) or at least 7: payment"
            " providers redeliver events for days"
        )
