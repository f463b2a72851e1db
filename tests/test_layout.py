"""The package layout of ARCHITECTURE.md and STYLE.md, checked."""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "stun_turn", "yggdrasil", "relay", "api")

# package -> our packages it may import (ARCHITECTURE.md, "Packages and the direction of imports")
ALLOWED: dict[str, set[str]] = {
    "actors": set(),
    "stun_turn": {
        "Attr",
        "Class",
        "MAGIC_COOKIE",
        "Message",
        "Method",
        "StunDecodeError",
        "StunError",
        "comprehension_required",
        "decode",
        "decode_channel_data",
        "encode",
        "encode_channel_data",
        "is_channel_data",
        "is_stun",
        "long_term_key",
        "pack_error_code",
        "pack_unknown_attributes",
        "pack_xor_address",
        "stream_frame_length",
        "unpack_error_code",
        "unpack_xor_address",
        "verify_integrity",
    },
    "yggdrasil": {"actors", "stun_turn"},
    "relay": {"actors", "yggdrasil"},
    "api": {"yggdrasil"},
}
# The composition root may import everything.
COMPOSITION_ROOT = {"yggdrasil/server.py", "yggdrasil/cli.py", "yggdrasil/_admin_cli.py"}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package: str) -> None:
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in COMPOSITION_ROOT:
            continue
        for other in imported_packages(path) - {package} - ALLOWED[package]:
            violations.append(f"{relative} imports {other}")
    assert violations == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import trio\nfrom yggdrasil import Store\nfrom . import local\n")
    assert imported_packages(sample) == {"yggdrasil"}


# Subpackages with a public surface of their own (STYLE.md rule 1 holds for them too).
SUBPACKAGES = (
    "relay.client",
    "relay.protocol",
    "yggdrasil.accounts",
    "yggdrasil.billing",
    "yggdrasil.ddns",
    "yggdrasil.devices",
    "yggdrasil.locks",
    "yggdrasil.marketplace",
    "yggdrasil.networks",
    "yggdrasil.store",
    "yggdrasil.turn",
)

# The public surface of each package; a change here is a deliberate API change.
EXPORTS: dict[str, set[str]] = {
    "actors": {
        "Actor", "ActorError", "Address", "AddressInUse", "Bus", "ByteBudget", "ChildSpec",
        "ChildStatistics", "Codec", "Envelope", "Escalated", "InProcessBus", "InProcessHub", "Kind",
        "Mailbox", "MailboxStatistics", "Overflow", "Overloaded", "Placement", "RequestTimeout",
        "Restart", "Router", "RouterStatistics", "Rule", "Strategy", "Supervisor", "Unreachable",
        "Urgent", "actor_spec", "anyone", "is_urgent",
    },
    "api": {
        "ApiContext", "ApiServer", "ErrorBody", "ErrorDetail", "OperatorServer", "api_server",
        "create_app", "create_operator_app", "error_response", "operator_server", "serve_api",
    },
    "yggdrasil": {
        "DataKeyMissing", "Vault", "open_vault", "rotate_data_key",
        "AccountData", "AccountSuspended", "Accounts", "AsyncioThread", "AuditChainBroken",
        "AuditEntry", "Blocked", "ProbeWatch",
        "Authorization", "Config", "ConfigError", "Database", "Device", "DeviceUpdate", "Domain",
        "DomainHandle", "EnrollmentKey", "EnrollmentKeyInfo", "Forbidden", "GatewayConfig",
        "HashingBusy", "Invalid",
        "InvalidCode", "InvalidGrant", "InvalidKey", "InvalidToken", "LimitsConfig", "MAX_PAGE",
        "Mail", "MailQueueFull", "Mailer", "Metrics", "Network", "NetworkInfo", "NewDevice",
        "NotFound", "Oidc",
        "OidcFailed", "Operators", "Page", "PostgresDatabase", "Principal", "ProviderUnavailable",
        "RateLimited", "RateLimiter", "Scope", "Secrets", "Session", "SqliteDatabase", "Store",
        "StoreError", "StoreUnavailable", "TokenService", "Tx", "Unavailable", "UniqueViolation",
        "User", "UserDetail", "VERSION", "YggdrasilError", "current_version", "device_address",
        "load_config",
        "load_or_create", "migrate", "network_address", "normalize_email", "provider_address",
        "service_address", "tenant_of", "tenant_rule", "open_asyncio_thread",
    },
    "relay": {
        "DeviceSession", "Gateway", "MESSAGE_TYPES", "NetworkActor", "TenantQuota",
        "gateway_child", "network_actors", "network_factory", "Geri", "geri_child",
    },
    "relay.client": {
        "BUILTIN_ACTIONS", "ClientError", "ComputeRefused", "Connected", "Credentials",
        "DeliveryFailed",
        "DeviceClient", "DirectChannel", "Disconnected", "Message", "NotConnected",
        "PresenceChanged", "Replaced", "RequestAnswered", "SessionRefused", "SignalReceived",
        "SignedOut", "accept_direct", "connect_direct", "device_cli", "open_webrtc", "provider_cli",
    },
    "relay.protocol": {
        "CHANNEL_LABEL", "CLOSE_GOING_AWAY", "CLOSE_NORMAL", "CLOSE_PING_TIMEOUT", "CLOSE_POLICY",
        "CLOSE_PROTOCOL_ERROR", "CLOSE_REPLACED", "CLOSE_REVOKED", "CLOSE_SLOW_CONSUMER",
        "CLOSE_TOO_BIG", "CLOSE_TRY_AGAIN", "MAX_FRAME_BYTES", "VERSION", "Ack", "Bye",
        "ClientFrame", "ComputeChunk", "ComputeDone", "ComputeFail", "ComputeRequest",
        "DataChannelTransport", "Deliver", "Error", "Hello", "Incoming",
        "InvalidOffer", "LockAcquire", "LockErrorCode", "LockExpired", "LockGranted",
        "LockRelease", "LockRenew", "LockResult", "Nack", "NackReason", "PeerState", "Ping",
        "Pong", "Presence", "ChatMessage", "Job", "JobCancel", "JobChunk", "JobDone", "JobFail",
        "ProtocolError", "Received", "Reply", "Request", "Response", "Send", "ServerFrame",
        "Signal", "SignalFrom", "ThorAction", "ThorResult", "Transport", "TransportClosed",
        "Welcome", "decode_client_frame", "decode_server_frame", "encode", "max_message_bytes",
        "ReportAddress", "AckMode", "Acks",
    },
    "yggdrasil.accounts": {
        "ACCOUNT_SEALED",
        "CLI_OPERATOR", "AccountData", "AccountSuspended", "Accounts", "Authorization",
        "EnrollmentKey", "EnrollmentKeyInfo", "HomeNetwork", "InvalidCode", "InvalidGrant",
        "InvalidKey", "KeyUsed", "Oidc", "OidcFailed", "Operators", "ProviderUnavailable",
        "RoomData", "Session", "User", "UserDetail", "UserStore", "insert_user", "normalize_email",
        "revoke_device_tokens", "purge_login_codes", "purge_oauth_states",
        "purge_refresh_tokens", "purge_token_revocations",
    },
    "yggdrasil.devices": {
        "DEVICES_SEALED",
        "Device", "DeviceStore", "DeviceUpdate", "NewDevice", "RevokeDevice", "WorldType",
        "claim_device", "delete_devices_of_user", "device_ids_of_network", "devices_of_user",
        "find_devices", "insert_device", "remove_device", "scoped_device",
    },
    "yggdrasil.networks": {
        "Network", "NetworkInfo", "NetworkStore", "all_networks", "delete_network_row",
        "insert_network", "is_member", "member_role", "network_info", "networks_of_user",
        "remove_user_from_networks", "require_member", "set_network_name",
    },
    "yggdrasil.store": {
        "MAX_PAGE", "AuditChainBroken", "AuditEntry", "AuditLog", "Database", "Page",
        "PostgresDatabase", "Row", "Scope", "SealedColumns", "SqliteDatabase", "Tx", "append_audit",
        "key_usage", "reseal", "reseal_all",
        "audit_entries_about", "check_database", "current_version", "decode_cursor",
        "encode_cursor", "from_json", "migrate", "open_database", "open_database_retrying",
        "seal_audit_forever",
        "to_json", "Purge", "Retention", "retain_forever",
    },
    "yggdrasil.billing": {
        "BILLING_SEALED",
        "KIND_RULES", "MAX_AMOUNT", "SIGN_RULES", "Balances", "Capture", "Cents", "Charge",
        "Codec", "Collected", "Collector", "Deposit", "Entry", "ExceedsHold", "ExceedsRefundable",
        "Hold", "HoldClosed", "IdempotencyKeyRequired", "IdempotencyKeyReused",
        "InsufficientFunds", "InvalidAmount", "Ledger", "LedgerCheck", "Netting", "NettingOff",
        "Payout", "Posting", "Refund", "SandboxCollector", "UnbalancedPostings", "check_cents",
        "check_key", "company_account", "compute_cost", "external_account", "fee", "idempotent",
        "post", "purge_idempotency_keys", "run_once", "sign_of", "split", "stored_answer",
        "struct_codec", "user_account",
        "MAX_WEBHOOK_BYTES", "MICRO_DEPOSITS_CENTS", "ChargeableMethod", "MethodCheck",
        "MicroDepositsMismatch", "NewMethod", "NotVerified", "PayPalProvider", "PaymentDeclined",
        "PaymentError", "PaymentInvalid", "PaymentMethod", "PaymentMethods", "PaymentProvider",
        "PaymentProviderUnavailable", "Payments", "ProviderCharge", "ProviderPayout",
        "ProviderRefund", "SandboxProvider", "StripeProvider", "WebhookEvent", "WebhookOutcome",
        "WebhookRefused", "Webhooks", "card_data_in", "open_providers", "NoPaymentMethod",
        "ProviderCollector", "LedgerCharger", "ProviderDisburser",
        "ProviderPayoutMethods",
        # subscriptions
        "ChargeResult", "Charger", "FeatureNotInPlan", "Invoice", "InvoiceLine", "Invoices",
        "Plan", "PlanChange", "Plans", "Proration", "QuotaExceeded", "Renewals", "SandboxCharger",
        "Subscribed", "SubscriptionRequests", "SubscriptionView", "Subscriptions", "Usage",
        "UsageMeter", "UsageReport", "add_months", "end_subscriptions_of_user", "issue_invoice",
        "prorate", "render_html", "renew_forever",
        # payouts, KYC, spending limits, the room's part of export and deletion
        "AutoTopup", "BelowMinimum", "BillingData", "Disbursed", "Disburser", "Kyc",
        "KycRequired", "KycService", "KycVerified", "Limits", "PayoutDeclined", "PayoutList",
        "PayoutMethod", "PayoutMethodRequired", "PayoutMethods", "PayoutRecord",
        "PayoutSettings", "PayoutUnreachable", "Payouts", "SandboxDisburser",
        "SandboxPayoutMethods", "SpendingHook", "SpendingLimitReached", "SpendingLimits",
        "Waiting", "purge_webhook_events",
    },
    "yggdrasil.locks": {
        "LOCK_MESSAGES", "LOCK_NAME", "LOCK_REPLY_S", "MAX_PRIORITY", "MIN_LEASE_MS", "Abandon",
        "Acquire", "Deadlock", "FailureCode", "Grant", "Granted", "LockError", "LockFailed",
        "LockInfo", "LockLost", "LockManager", "LockStore", "LockTable", "LockView", "Locks",
        "Release", "Released", "Renew", "ViewLocks", "Waiter", "WaiterInfo", "WallClock",
        "lock_managers", "locks_address",
    },
    "yggdrasil.marketplace": {
        # the routing engine
        "TIE_EPSILON", "BreakerSettings", "BreakerState", "Candidate", "Decay", "Decision",
        "Outcome", "ProviderRouter", "ProviderStats", "RouteRequest", "Scored", "Weights",
        "ECHO", "MARKETPLACE_MESSAGES", "Attempt", "ChatMessage", "ComputeRequest",
        "DeviceOffline", "Dispute", "Hardware", "JobCancel", "JobChunk", "JobDone", "JobFailed",
        "JobOffer", "JobResult", "Marketplace", "PayoutMethodRequired", "Provider",
        "ProviderAnalytics", "ProviderSpec", "ProviderTestFailed", "QualitySettings",
        "RequestFailed", "RequestState", "RequesterAnalytics", "RoutingDecision", "Score",
        "Transaction", "TransactionPage", "Usage", "Window", "count_tokens", "run_job",
        "DisputeRefused", "NotRunningHere", "RequestEnded", "MarketplaceData", "purge_requests",
    },
    "yggdrasil.ddns": {
        "MAX_ADDRESSES", "Ddns", "DdnsCollector", "DdnsData", "DdnsName", "DdnsStats",
        "InvalidAddress", "NameTaken", "UpdateFailed", "Updater", "check_addresses", "check_label",
        "current_addresses", "publishable",
        "ADDRESSES_SEALED", "open_addresses",
    },
    "yggdrasil.turn": {
        "TurnAddresses", "TurnService", "check_addresses", "own_addresses", "turn_addresses",
        "turn_child",
    },
    "stun_turn": {
        "Attr", "Class", "Client", "CloseRelay", "MAGIC_COOKIE", "Message", "Method", "PeerPolicy",
        "StunDecodeError", "StunError", "ToClient", "ToPeer", "TurnCore", "TurnListener",
        "TurnSettings", "TurnStats", "canonical", "comprehension_required", "decode",
        "decode_channel_data", "encode", "encode_channel_data", "is_channel_data", "is_stun",
        "long_term_key", "pack_error_code", "pack_unknown_attributes", "pack_xor_address",
        "stream_frame_length", "unpack_error_code", "unpack_xor_address", "verify_integrity",
        "Owner",
    },
}  # fmt: skip


@pytest.mark.parametrize("package", [*PACKAGES, *SUBPACKAGES])
def test_exports_are_pinned(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == EXPORTS[package]
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize("package", [*PACKAGES, *SUBPACKAGES])
def test_modules_are_private_and_typed(package: str) -> None:
    folder = ROOT.joinpath(*package.split("."))
    assert (ROOT / package.split(".")[0] / "py.typed").exists()
    public = {
        p.name
        for p in folder.glob("*.py")
        if not p.name.startswith("_") and p.relative_to(ROOT).as_posix() not in COMPOSITION_ROOT
    }
    assert public == set()


# The rooms inside relay (ARCHITECTURE.md): the gateway, the device client library and the device
# protocol both share. room -> the other rooms it may import; across rooms only public names.
RELAY_ROOMS: dict[str, set[str]] = {
    "relay.protocol": set(),
    "relay.client": {"relay.protocol", "actors"},
    "relay": {"relay.protocol", "actors", "yggdrasil"},
}


def room(module: str) -> str:
    for subpackage in (name for name in RELAY_ROOMS if "." in name):
        if module == subpackage or module.startswith(subpackage + "."):
            return subpackage
    return module.split(".")[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """The modules of ours that ``source`` (the text of ``module``) imports, relative imports
    resolved: ``from . import _x`` names the module ``_x``, ``from .x import Name`` the module
    ``x``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*parts, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _exists(candidate) else base)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def room_violations(module: str, source: str, *, is_package: bool = False) -> list[str]:
    mine = room(module)
    violations = []
    for target in sorted(imported_modules(source, module, is_package=is_package)):
        theirs = room(target)
        if theirs == mine:
            continue
        if theirs not in RELAY_ROOMS[mine]:
            violations.append(f"{module} imports {target}")
        elif any(part.startswith("_") for part in target.split(".")):
            violations.append(f"{module} imports the private {target}")
    return violations


def test_relay_rooms_stay_apart() -> None:
    violations = []
    for path in sorted((ROOT / "relay").rglob("*.py")):
        violations += room_violations(
            module_name(path), path.read_text(), is_package=path.name == "__init__.py"
        )
    assert violations == []


def test_the_rooms_checker_sees_the_client_reach_into_the_gateway() -> None:
    source = (
        "import trio\nfrom ..protocol import Hello\nfrom . import _direct\n"
        "from .._gateway import Gateway\nfrom ..protocol._frames import MAX_NESTING\n"
    )
    assert imported_modules(source, "relay.client._sample") == {
        "relay.protocol",
        "relay.client._direct",
        "relay._gateway",
        "relay.protocol._frames",
    }
    assert room_violations("relay.client._sample", source) == [
        "relay.client._sample imports relay._gateway",
        "relay.client._sample imports the private relay.protocol._frames",
    ]
    assert room_violations("relay._sample", "from .client import DeviceClient\n") == [
        "relay._sample imports relay.client"
    ]


# The rooms inside yggdrasil (ARCHITECTURE.md): infrastructure at the top (its private modules and
# the store core), one subpackage per capability (TURN's room, which owns no table, counts as one),
# and the composition that wires them together.
# capability -> the capabilities it may import, through their public names only. Every room may
# use the infrastructure (the top's modules privately: yggdrasil/__init__.py imports the rooms, so
# they cannot import through it; the store core through its public names); the infrastructure
# imports no capability, and nothing imports the composition.
CAPABILITIES: dict[str, set[str]] = {
    "yggdrasil.networks": set(),
    "yggdrasil.devices": {"yggdrasil.networks"},
    "yggdrasil.accounts": {"yggdrasil.networks", "yggdrasil.devices"},
    "yggdrasil.turn": set(),
    "yggdrasil.billing": set(),
    "yggdrasil.locks": {"yggdrasil.networks"},
    "yggdrasil.marketplace": {"yggdrasil.billing"},
    "yggdrasil.ddns": {"yggdrasil.devices"},
}
COMPOSITION = {
    "yggdrasil",
    "yggdrasil.__main__",
    "yggdrasil._admin_cli",
    "yggdrasil._domain",
    "yggdrasil.cli",
    "yggdrasil.server",
}


def yggdrasil_room(module: str) -> str:
    if module in COMPOSITION:
        return "composition"
    for capability in CAPABILITIES:
        if module == capability or module.startswith(capability + "."):
            return capability
    return "infrastructure"


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def yggdrasil_violations(module: str, source: str, *, is_package: bool = False) -> list[str]:
    mine = yggdrasil_room(module)
    in_store = module == "yggdrasil.store" or module.startswith("yggdrasil.store.")
    violations = []
    for target in sorted(imported_modules(source, module, is_package=is_package)):
        if target.split(".")[0] != "yggdrasil":
            continue
        theirs = yggdrasil_room(target)
        if target.startswith("yggdrasil.store.") and _private(target) and not in_store:
            violations.append(f"{module} imports the private {target}")
        if theirs == mine:
            continue
        if theirs == "composition":
            violations.append(f"{module} imports {target}")
        elif theirs in CAPABILITIES:
            if mine != "composition" and theirs not in CAPABILITIES.get(mine, set()):
                violations.append(f"{module} imports {target}")
            elif _private(target):
                violations.append(f"{module} imports the private {target}")
    return violations


def test_yggdrasil_rooms_stay_apart() -> None:
    violations = []
    for path in sorted((ROOT / "yggdrasil").rglob("*.py")):
        violations += yggdrasil_violations(
            module_name(path), path.read_text(), is_package=path.name == "__init__.py"
        )
    assert violations == []


def test_the_rooms_checker_sees_a_capability_reach_into_another() -> None:
    devices = "from ..accounts import User\nfrom ..networks._networks import member_role\n"
    assert yggdrasil_violations("yggdrasil.devices._sample", devices) == [
        "yggdrasil.devices._sample imports yggdrasil.accounts",
        "yggdrasil.devices._sample imports the private yggdrasil.networks._networks",
    ]
    top = "from .devices import Device\nfrom .store._db import Tx\nfrom . import _domain\n"
    assert yggdrasil_violations("yggdrasil._sample", top) == [
        "yggdrasil._sample imports yggdrasil._domain",
        "yggdrasil._sample imports yggdrasil.devices",
        "yggdrasil._sample imports the private yggdrasil.store._db",
    ]
    fine = "from .._errors import NotFound\nfrom ..store import Tx\nfrom ..devices import Device\n"
    assert yggdrasil_violations("yggdrasil.accounts._sample", fine) == []


# Each table and the room that owns its SQL (STYLE.md rule C): no other module names it in SQL.
TABLE_OWNERS: dict[str, str] = {
    "schema_migrations": "yggdrasil.store",
    "audit_log": "yggdrasil.store",
    "audit_head": "yggdrasil.store",
    "audit_pending": "yggdrasil.store",
    "audit_cut": "yggdrasil.store",
    "retention_runs": "yggdrasil.store",
    "networks": "yggdrasil.networks",
    "memberships": "yggdrasil.networks",
    "devices": "yggdrasil.devices",
    "users": "yggdrasil.accounts",
    "identities": "yggdrasil.accounts",
    "login_codes": "yggdrasil.accounts",
    "refresh_tokens": "yggdrasil.accounts",
    "enrollment_keys": "yggdrasil.accounts",
    "oauth_states": "yggdrasil.accounts",
    "token_revocations": "yggdrasil.accounts",
    "ledger_transactions": "yggdrasil.billing",
    "ledger_entries": "yggdrasil.billing",
    "ledger_balances": "yggdrasil.billing",
    "ledger_holds": "yggdrasil.billing",
    "ledger_refundables": "yggdrasil.billing",
    "ledger_netting": "yggdrasil.billing",
    "idempotency_keys": "yggdrasil.billing",
    "payment_methods": "yggdrasil.billing",
    "payment_webhook_events": "yggdrasil.billing",
    "payment_provider_objects": "yggdrasil.billing",
    "subscriptions": "yggdrasil.billing",
    "subscription_leases": "yggdrasil.billing",
    "subscription_requests": "yggdrasil.billing",
    "subscription_usage": "yggdrasil.billing",
    "token_consumptions": "yggdrasil.billing",
    "subscription_charges": "yggdrasil.billing",
    "invoices": "yggdrasil.billing",
    "invoice_numbers": "yggdrasil.billing",
    "payout_settings": "yggdrasil.billing",
    "payouts": "yggdrasil.billing",
    "payout_runs": "yggdrasil.billing",
    "kyc": "yggdrasil.billing",
    "spending_limits": "yggdrasil.billing",
    "spending_months": "yggdrasil.billing",
    "spending_alerts": "yggdrasil.billing",
    "topups": "yggdrasil.billing",
    "lock_sequences": "yggdrasil.locks",
    "lock_grants": "yggdrasil.locks",
    "marketplace_providers": "yggdrasil.marketplace",
    "marketplace_requests": "yggdrasil.marketplace",
    "marketplace_disputes": "yggdrasil.marketplace",
    "device_addresses": "yggdrasil.ddns",
    "ddns_names": "yggdrasil.ddns",
}
_SQL_TABLE = re.compile(r"\b(FROM|JOIN|INTO|UPDATE|TABLE(?: IF NOT EXISTS)?)\s+([a-z_][a-z0-9_]*)")


def sql_tables(source: str) -> list[tuple[str, str]]:
    """``(keyword, table)`` for every table that the string constants of ``source`` name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [(m[1], m[2]) for m in _SQL_TABLE.finditer(node.value)]
    return found


def test_each_table_belongs_to_one_room() -> None:
    created = set()
    for path in (ROOT / "yggdrasil" / "migrations").glob("*.sql"):
        created |= {m[2] for m in _SQL_TABLE.finditer(path.read_text()) if m[1] == "TABLE"}
    assert created, "the migrations create tables"
    assert created <= set(TABLE_OWNERS), "a new table needs its owner in TABLE_OWNERS"
    strangers, device_inserts = [], []
    for path in sorted((ROOT / "yggdrasil").rglob("*.py")):
        module = module_name(path)
        for keyword, table in sql_tables(path.read_text()):
            owner = TABLE_OWNERS.get(table)
            if owner is not None and not (module == owner or module.startswith(owner + ".")):
                strangers.append(f"{module}: {keyword} {table}")
            if (keyword, table) == ("INTO", "devices"):
                device_inserts.append(module)
    assert strangers == []
    assert device_inserts == ["yggdrasil.devices._devices"], "one insert of a device row"


def test_the_table_checker_reads_sql() -> None:
    source = (
        'q = ("SELECT d.* FROM devices d JOIN memberships m"\n'
        '     " ON m.network_id = d.network_id")\n'
        'tx.execute("INSERT INTO users (user_id) VALUES ($1)")\n'
        'log.info("from the networks")\n'
    )
    assert sorted(sql_tables(source)) == [
        ("FROM", "devices"),
        ("INTO", "users"),
        ("JOIN", "memberships"),
    ]


def test_benchmarks_use_public_entry_points() -> None:
    private = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for target in imported_modules(path.read_text(), module_name(path)):
            if _private(target):
                private.append(f"{module_name(path)} imports {target}")
    assert private == []


def test_every_package_is_shipped() -> None:
    """``pip install .`` (the container image) installs every package and subpackage."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        module_name(init) for package in PACKAGES for init in (ROOT / package).rglob("__init__.py")
    }
    assert found - set(setuptools["packages"]) == set()
