"""Who may call which route: one table, enforced by the guard before any handler runs.

There are three kinds of caller (ARCHITECTURE.md, "Principals"): a **user** (an access token from
a sign-in, without a device), an **operator** (the same, for a user with the operator role) and
a **device** (a token bound to one device in one network, from a device's sign-in or enrolment).
A device acts as that device inside its one network and never account-wide: it cannot change,
export or delete the account, list its user's other networks, or act for another device.

Every route of the application must appear here; :func:`check_routes` refuses to build an app
with a route that does not, so a new route without a declared scope fails at start-up (and the
suite's route walk fails first).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

PrincipalKind = Literal["user", "operator", "device"]


class Access(msgspec.Struct, frozen=True):
    """Which principals may call one route.

    ``device``: ``"no"`` refuses device tokens; ``"network"`` lets a device act inside its own
    network (another network is not found, exactly like a nonexistent one); ``"self"`` lets a
    device act only on itself (the route's ``device_id``), in its own network.
    """

    public: bool = False
    """No token needed; a token sent anyway is ignored."""
    user: bool = False
    operator: bool = False
    device: Literal["no", "network", "self"] = "no"

    def allows(self, kind: PrincipalKind) -> bool:
        if kind == "device":
            return self.device != "no"
        return self.operator if kind == "operator" else self.user


PUBLIC = Access(public=True)
ACCOUNT = Access(user=True, operator=True)
"""The account itself: its profile, networks, keys. Never a device's token."""
NETWORK = Access(user=True, operator=True, device="network")
"""A user's networks; a device sees its own network only."""
OWN_DEVICE = Access(user=True, operator=True, device="self")
"""A user's devices; a device only itself."""
DEVICE_SESSION = Access(device="self")
"""Only the device itself (its own live session)."""
OPERATOR = Access(operator=True)

ROUTES: dict[tuple[str, str], Access] = {
    # operations and documents
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/assets/<name>"): PUBLIC,
    ("GET", "/.well-known/jwks.json"): PUBLIC,
    # signing in
    ("POST", "/api/v1/users/register"): PUBLIC,
    ("POST", "/api/v1/users/login"): PUBLIC,
    ("POST", "/api/v1/users/verify"): PUBLIC,
    ("POST", "/api/v1/auth/refresh"): PUBLIC,
    ("POST", "/api/v1/enroll"): PUBLIC,
    ("GET", "/api/v1/auth/oidc/<provider>/authorize"): PUBLIC,
    ("POST", "/api/v1/auth/oidc/<provider>/callback"): PUBLIC,
    ("POST", "/api/v1/auth/logout"): NETWORK,
    # the account
    ("GET", "/api/v1/users/me"): ACCOUNT,
    ("PUT", "/api/v1/users/me"): ACCOUNT,
    ("DELETE", "/api/v1/users/me"): ACCOUNT,
    ("GET", "/api/v1/users/me/export"): ACCOUNT,
    ("GET", "/api/v1/users/me/audit"): ACCOUNT,
    # networks
    ("GET", "/api/v1/networks"): NETWORK,
    ("POST", "/api/v1/networks"): ACCOUNT,
    ("GET", "/api/v1/networks/<network_id>"): NETWORK,
    ("PUT", "/api/v1/networks/<network_id>"): ACCOUNT,
    ("DELETE", "/api/v1/networks/<network_id>"): ACCOUNT,
    ("POST", "/api/v1/networks/<network_id>/enrollment-keys"): ACCOUNT,
    ("GET", "/api/v1/networks/<network_id>/enrollment-keys"): ACCOUNT,
    ("DELETE", "/api/v1/networks/<network_id>/enrollment-keys/<key_id>"): ACCOUNT,
    # devices
    ("GET", "/api/v1/devices"): NETWORK,
    ("POST", "/api/v1/devices"): ACCOUNT,
    ("GET", "/api/v1/devices/<device_id>"): NETWORK,
    ("PUT", "/api/v1/devices/<device_id>"): OWN_DEVICE,
    ("DELETE", "/api/v1/devices/<device_id>"): OWN_DEVICE,
    ("GET", "/api/v1/devices/<device_id>/ice-servers"): OWN_DEVICE,
    ("POST", "/api/v1/devices/<device_id>/webrtc"): DEVICE_SESSION,
    ("PUT", "/api/v1/devices/<device_id>/ddns"): OWN_DEVICE,
    ("GET", "/api/v1/devices/<device_id>/ddns"): OWN_DEVICE,
    ("DELETE", "/api/v1/devices/<device_id>/ddns"): OWN_DEVICE,
    # the ledger: the account's own money, never a device's token
    ("GET", "/api/v1/billing/balance"): ACCOUNT,
    ("GET", "/api/v1/billing/entries"): ACCOUNT,
    ("POST", "/api/v1/billing/holds"): ACCOUNT,
    ("GET", "/api/v1/billing/holds/<hold_id>"): ACCOUNT,
    ("POST", "/api/v1/billing/holds/<hold_id>/capture"): ACCOUNT,
    ("POST", "/api/v1/billing/holds/<hold_id>/release"): ACCOUNT,
    ("POST", "/api/v1/payments/process"): ACCOUNT,
    # payments (webhooks: authenticated by the provider's signature over the body)
    ("GET", "/api/v1/payments/providers"): ACCOUNT,
    ("GET", "/api/v1/payments/methods"): ACCOUNT,
    ("POST", "/api/v1/payments/methods"): ACCOUNT,
    ("GET", "/api/v1/payments/methods/<method_id>"): ACCOUNT,
    ("DELETE", "/api/v1/payments/methods/<method_id>"): ACCOUNT,
    ("POST", "/api/v1/payments/methods/<method_id>/default"): ACCOUNT,
    ("POST", "/api/v1/payments/methods/<method_id>/verify"): ACCOUNT,
    ("POST", "/api/v1/payments/webhooks/stripe"): PUBLIC,
    ("POST", "/api/v1/payments/webhooks/paypal"): PUBLIC,
    # subscriptions, usage, invoices: the account's own
    ("GET", "/api/v1/plans"): PUBLIC,
    ("GET", "/api/v1/subscriptions"): ACCOUNT,
    ("POST", "/api/v1/subscriptions"): ACCOUNT,
    ("PUT", "/api/v1/subscriptions"): ACCOUNT,
    ("DELETE", "/api/v1/subscriptions"): ACCOUNT,
    ("POST", "/api/v1/subscriptions/resume"): ACCOUNT,
    ("GET", "/api/v1/usage"): ACCOUNT,
    ("GET", "/api/v1/invoices"): ACCOUNT,
    ("GET", "/api/v1/invoices/<invoice_id>"): ACCOUNT,
    # payouts, KYC, netting and spending limits: the account's own, never a device's token
    ("GET", "/api/v1/payouts"): ACCOUNT,
    ("POST", "/api/v1/payouts"): ACCOUNT,
    ("GET", "/api/v1/payouts/settings"): ACCOUNT,
    ("PUT", "/api/v1/payouts/settings"): ACCOUNT,
    ("GET", "/api/v1/payouts/<payout_id>"): ACCOUNT,
    ("PUT", "/api/v1/billing/netting"): ACCOUNT,
    ("GET", "/api/v1/kyc"): ACCOUNT,
    ("POST", "/api/v1/kyc"): ACCOUNT,
    ("GET", "/api/v1/billing/limits"): ACCOUNT,
    ("PUT", "/api/v1/billing/limits"): ACCOUNT,
    # the compute marketplace: the account's own providers, requests and money, never a
    # device's token; the OpenAI-compatible door takes a user's access token as its API key
    ("POST", "/api/v1/marketplace/providers/register"): ACCOUNT,
    ("GET", "/api/v1/marketplace/providers"): ACCOUNT,
    ("GET", "/api/v1/marketplace/providers/<provider_id>"): ACCOUNT,
    ("PUT", "/api/v1/marketplace/providers/<provider_id>"): ACCOUNT,
    ("DELETE", "/api/v1/marketplace/providers/<provider_id>"): ACCOUNT,
    ("POST", "/api/v1/marketplace/requests"): ACCOUNT,
    ("GET", "/api/v1/marketplace/requests/<request_id>"): ACCOUNT,
    ("POST", "/api/v1/marketplace/requests/<request_id>/cancel"): ACCOUNT,
    ("POST", "/api/v1/marketplace/requests/<request_id>/feedback"): ACCOUNT,
    ("GET", "/api/v1/marketplace/transactions"): ACCOUNT,
    ("GET", "/api/v1/marketplace/transactions/<transaction_id>"): ACCOUNT,
    ("POST", "/api/v1/marketplace/transactions/<transaction_id>/dispute"): ACCOUNT,
    ("GET", "/api/v1/marketplace/disputes"): ACCOUNT,
    ("GET", "/api/v1/marketplace/analytics/provider"): ACCOUNT,
    ("GET", "/api/v1/marketplace/analytics/requester"): ACCOUNT,
    ("POST", "/openai/v1/chat/completions"): ACCOUNT,
    ("GET", "/openai/v1/models"): ACCOUNT,
    # locks
    ("POST", "/api/v1/locks/acquire"): NETWORK,
    ("POST", "/api/v1/locks/renew"): NETWORK,
    ("POST", "/api/v1/locks/release"): NETWORK,
    ("GET", "/api/v1/locks"): ACCOUNT,
    # operators
    ("GET", "/api/admin/users"): OPERATOR,
    ("POST", "/api/admin/users/<user_id>/suspend"): OPERATOR,
    ("POST", "/api/admin/users/<user_id>/reactivate"): OPERATOR,
    ("GET", "/api/admin/users/<user_id>/devices"): OPERATOR,
    ("GET", "/api/admin/users/<user_id>"): OPERATOR,
    ("DELETE", "/api/admin/users/<user_id>"): OPERATOR,
    ("POST", "/api/admin/users/<user_id>/kyc"): OPERATOR,
    ("GET", "/api/admin/devices"): OPERATOR,
    ("GET", "/api/admin/networks/<network_id>/devices/<device_id>"): OPERATOR,
    ("DELETE", "/api/admin/networks/<network_id>/devices/<device_id>"): OPERATOR,
    ("GET", "/api/admin/networks"): OPERATOR,
    ("GET", "/api/admin/networks/<network_id>"): OPERATOR,
    ("PUT", "/api/admin/networks/<network_id>"): OPERATOR,
    ("DELETE", "/api/admin/networks/<network_id>"): OPERATOR,
    ("GET", "/api/admin/enrollment-keys"): OPERATOR,
    ("DELETE", "/api/admin/enrollment-keys/<key_id>"): OPERATOR,
    ("GET", "/api/admin/networks/<network_id>/locks"): OPERATOR,
    ("POST", "/api/admin/marketplace/disputes/<dispute_id>/resolve"): OPERATOR,
    ("GET", "/api/admin/audit"): OPERATOR,
}

# Methods every route answers by itself, with the scope of the method they stand for.
_IMPLIED = {"HEAD": "GET"}
_AUTOMATIC = {"OPTIONS"}


def access_for(method: str, rule: str) -> Access | None:
    """The declared access of ``method`` on ``rule`` (a route's rule, e.g.
    ``/api/v1/devices/<device_id>``); ``None`` when nothing is declared."""
    if method in _AUTOMATIC:
        return PUBLIC  # answered by the framework: the allowed methods, no data
    return ROUTES.get((_IMPLIED.get(method, method), rule))


def check_routes(routes: Iterable[tuple[str, Iterable[str]]]) -> None:
    """Refuse an application whose routes and this table disagree.

    ``routes``: each route's rule and its methods. Raises ``RuntimeError`` naming every route
    without a declared scope and every declaration without a route.
    """
    seen: set[tuple[str, str]] = set()
    missing: list[str] = []
    for rule, methods in routes:
        for method in methods:
            if method in _AUTOMATIC or method in _IMPLIED:
                continue
            seen.add((method, rule))
            if (method, rule) not in ROUTES:
                missing.append(f"{method} {rule}")
    stale = [f"{method} {rule}" for method, rule in ROUTES if (method, rule) not in seen]
    problems = []
    if missing:
        problems.append("routes without a declared scope in api/_scopes.py: " + ", ".join(missing))
    if stale:
        problems.append("scopes declared for routes that do not exist: " + ", ".join(stale))
    if problems:
        raise RuntimeError("; ".join(problems))
