"""Who is calling: the bearer token, the client address, the route's scope, and the rate limits.

The guard runs before every handler (:meth:`Guard.authorize`): it finds the route's declared
access in :mod:`api._scopes`, verifies the token, and refuses a principal the route does not
admit. Handlers never decide who may call them; they read the admitted principal from
:meth:`Guard.principal`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from quart import g, request
from quart_schema import HttpSecurityScheme, document_response

from yggdrasil import (
    Domain,
    DomainHandle,
    NotFound,
    Principal,
    RateLimiter,
    StoreUnavailable,
    TokenService,
)
from yggdrasil import InvalidToken as InvalidToken

from ._errors import ErrorBody, InsufficientScope
from ._scopes import PrincipalKind, access_for

F = TypeVar("F", bound=Callable[..., Any])

SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": HttpSecurityScheme(scheme="bearer", bearer_format="JWT")
}


def kind_of(principal: Principal) -> PrincipalKind:
    if principal.device_id is not None:
        return "device"
    return "operator" if principal.role == "operator" else "user"


def _refusal(kind: PrincipalKind, operator_route: bool) -> str:
    if kind == "device":
        return "a device's token may not call this route"
    if operator_route:
        return "this route is for operators only"
    return "only the device's own token may call this route"


class Guard:
    """Per-request checks shared by the routes."""

    def __init__(
        self,
        tokens: TokenService | None,
        domain: DomainHandle,
        per_client: RateLimiter,
        per_principal: RateLimiter,
        auth_per_client: RateLimiter,
        trusted_proxies: list[str] | None = None,
        revoke: Callable[[str, int], None] | None = None,
    ) -> None:
        self._tokens = tokens
        self._revoke = revoke
        self._domain = domain
        self.per_client = per_client
        self.per_principal = per_principal
        self.auth_per_client = auth_per_client
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies or []]

    def client(self) -> str:
        """The client's address: the socket peer, or - behind a trusted proxy - the nearest
        address in ``X-Forwarded-For`` that is not itself a trusted proxy."""
        peer = request.remote_addr or "unknown"
        return client_address(peer, request.headers.get("X-Forwarded-For", ""), self._proxies)

    def authorize(
        self, method: str, rule: str, path_args: Mapping[str, Any], network_id: str | None
    ) -> Principal | None:
        """Admit the caller of ``method`` on ``rule`` or raise; the admitted principal, or
        ``None`` on a public route.

        ``path_args`` are the route's path parameters and ``network_id`` the query's, if any.
        A device's token reaches only its own network (another one is :class:`NotFound`, as
        if it did not exist) and, on routes about one device, only itself
        (:class:`InsufficientScope`).
        """
        access = access_for(method, rule)
        if access is None:
            # create_app refuses undeclared routes, so this is a bug, never a default.
            raise RuntimeError(f"{method} {rule} has no declared scope")
        if access.public:
            return None
        principal = self._verify()
        g.caller = principal  # for the probing watch, even when this request is refused below
        kind = kind_of(principal)
        if not access.allows(kind):
            raise InsufficientScope(_refusal(kind, access.operator))
        if kind == "device":
            for requested in (path_args.get("network_id"), network_id):
                if requested is not None and requested != principal.network_id:
                    raise NotFound()
            device_id = path_args.get("device_id")
            if access.device == "self" and device_id != principal.device_id:
                raise InsufficientScope("a device's token acts only for that device")
        return principal

    def principal(self) -> Principal:
        """The caller :meth:`authorize` admitted for this request."""
        principal: Principal | None = g.get("principal")
        if principal is None:
            raise InvalidToken()
        return principal

    def _verify(self) -> Principal:
        """The verified caller, from the ``Authorization: Bearer`` header only."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        tokens = self._tokens
        if scheme.lower() != "bearer" or not token or tokens is None:
            raise InvalidToken()
        principal = tokens.verify(token.strip())
        self.per_principal.check(principal.user_id)
        return principal

    def sign_in_attempt(self) -> None:
        """Sign-in endpoints cost more: they send mail, hash secrets, and invite guessing."""
        self.auth_per_client.check(self.client())

    def tokens(self) -> TokenService:
        tokens = self._tokens
        if tokens is None:
            raise StoreUnavailable("the server is starting")
        return tokens

    def revoke(self, subject: str, not_before_ms: int) -> None:
        """Apply a revocation that was just committed: here at once, and on every instance."""
        if self._revoke is not None:
            self._revoke(subject, not_before_ms)
        else:
            self.tokens().revoke(subject, not_before_ms)

    def domain(self) -> Domain:
        """The domain services; ``StoreUnavailable`` (503) while the store is starting."""
        return self._domain.get()


Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]


def client_address(peer: str, forwarded_for: str, proxies: Networks) -> str:
    """``peer``, or - when it is one of the trusted ``proxies`` - the nearest address of the
    ``X-Forwarded-For`` header ``forwarded_for`` that is not itself a trusted proxy."""
    if not proxies or not _inside(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _inside(hop, proxies):
            return hop
    return peer


def _inside(address: str, networks: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def errors(*statuses: int) -> Callable[[F], F]:
    """Document the error responses a route can give, in the one error shape."""

    def decorate(handler: F) -> F:
        for status in statuses:
            handler = document_response(ErrorBody, status)(handler)
        return handler

    return decorate
