"""The package layout of ARCHITECTURE.md and STYLE.md, checked."""

from __future__ import annotations

import ast
import importlib
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
COMPOSITION_ROOT = {"yggdrasil/server.py", "yggdrasil/cli.py"}


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
        "ApiContext", "ErrorBody", "ErrorDetail", "create_app", "error_response", "serve_api",
    },
    "yggdrasil": {
        "AccountData", "AccountSuspended", "Accounts", "AuditChainBroken", "AuditEntry",
        "Authorization", "Config", "ConfigError", "Database", "Device", "DeviceUpdate", "Domain",
        "EnrollmentKey", "Forbidden", "GatewayConfig", "HashingBusy", "Invalid", "InvalidCode",
        "InvalidGrant", "InvalidKey", "InvalidToken", "LimitsConfig", "MAX_PAGE", "Mail",
        "MailQueueFull", "Mailer", "Metrics", "Network", "NewDevice", "NotFound", "Oidc",
        "OidcFailed", "Operators", "Page", "PostgresDatabase", "Principal", "ProviderUnavailable",
        "RateLimited", "RateLimiter", "Scope", "Secrets", "Session", "SqliteDatabase", "Store",
        "StoreError", "StoreUnavailable", "TokenService", "Tx", "Unavailable", "UniqueViolation",
        "User", "VERSION", "YggdrasilError", "current_version", "device_address", "load_config",
        "load_or_create", "migrate", "network_address", "normalize_email", "provider_address",
        "service_address", "tenant_of", "tenant_rule",
    },
    "relay": {
        "Ack", "BUILTIN_ACTIONS", "Bye", "ClientError", "ClientFrame", "Connected", "Credentials",
        "DataChannelTransport", "Deliver", "DeliveryFailed", "DeviceClient", "DeviceSession",
        "DirectChannel", "Disconnected", "Error", "Gateway", "Hello", "Incoming", "MESSAGE_TYPES",
        "Message", "Nack", "NetworkActor", "NotConnected", "PeerState", "Ping", "Pong", "Presence",
        "PresenceChanged", "ProtocolError", "Replaced", "Reply", "Request", "RequestAnswered",
        "Response", "Send", "ServerFrame", "SessionRefused", "Signal", "SignalFrom",
        "SignalReceived", "SignedOut", "TenantQuota", "ThorAction", "ThorResult", "Transport",
        "TransportClosed", "VERSION", "Welcome", "accept_direct", "connect_direct",
        "decode_client_frame", "decode_server_frame", "device_cli", "encode", "network_factory",
        "open_webrtc",
    },
    "stun_turn": {
        "Attr", "Class", "Client", "CloseRelay", "MAGIC_COOKIE", "Message", "Method", "PeerPolicy",
        "StunDecodeError", "StunError", "ToClient", "ToPeer", "TurnCore", "TurnListener",
        "TurnSettings", "TurnStats", "canonical", "comprehension_required", "decode",
        "decode_channel_data", "encode", "encode_channel_data", "is_channel_data", "is_stun",
        "long_term_key", "pack_error_code", "pack_unknown_attributes", "pack_xor_address",
        "stream_frame_length", "unpack_error_code", "unpack_xor_address", "verify_integrity",
    },
}  # fmt: skip


@pytest.mark.parametrize("package", PACKAGES)
def test_exports_are_pinned(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == EXPORTS[package]
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_are_private_and_typed(package: str) -> None:
    folder = ROOT / package
    assert (folder / "py.typed").exists()
    public = {
        p.name
        for p in folder.glob("*.py")
        if not p.name.startswith("_") and p.relative_to(ROOT).as_posix() not in COMPOSITION_ROOT
    }
    assert public == set()
