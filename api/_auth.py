"""Who is calling: the bearer token, the client address, and the rate limits on both."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

from quart import request
from quart_schema import HttpSecurityScheme, document_response, security_scheme

from yggdrasil import Domain, Principal, RateLimiter, StoreUnavailable, TokenService
from yggdrasil import InvalidToken as InvalidToken

from ._errors import ErrorBody

F = TypeVar("F", bound=Callable[..., Any])

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": HttpSecurityScheme(scheme="bearer", bearer_format="JWT")
}


class Guard:
    """Per-request checks shared by the routes."""

    def __init__(
        self,
        tokens: Callable[[], TokenService | None],
        domain: Callable[[], Domain | None],
        per_client: RateLimiter,
        per_principal: RateLimiter,
        auth_per_client: RateLimiter,
        trusted_proxies: list[str] | None = None,
    ) -> None:
        self._tokens = tokens
        self._domain = domain
        self.per_client = per_client
        self.per_principal = per_principal
        self.auth_per_client = auth_per_client
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies or []]

    def client(self) -> str:
        """The client's address: the socket peer, or - behind a trusted proxy - the nearest
        address in ``X-Forwarded-For`` that is not itself a trusted proxy."""
        peer = request.remote_addr or "unknown"
        if not self._proxies or not _inside(peer, self._proxies):
            return peer
        hops = [
            h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()
        ]
        for hop in reversed(hops):
            if not _inside(hop, self._proxies):
                return hop
        return peer

    def principal(self) -> Principal:
        """The verified caller, from the ``Authorization: Bearer`` header only."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        tokens = self._tokens()
        if scheme.lower() != "bearer" or not token or tokens is None:
            raise InvalidToken()
        principal = tokens.verify(token.strip())
        self.per_principal.check(principal.user_id)
        return principal

    def sign_in_attempt(self) -> None:
        """Sign-in endpoints cost more: they send mail, hash secrets, and invite guessing."""
        self.auth_per_client.check(self.client())

    def tokens(self) -> TokenService:
        tokens = self._tokens()
        if tokens is None:
            raise StoreUnavailable("the server is starting")
        return tokens

    def revoke(self, subject: str, not_before_ms: int) -> None:
        """Apply a revocation that was just committed to this process's token check at once."""
        self.tokens().revoke(subject, not_before_ms)

    def domain(self) -> Domain:
        found = self._domain()
        if found is None:
            raise StoreUnavailable("the data store is starting")
        return found


def _inside(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
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


def authenticated(handler: F) -> F:
    """Mark a route as needing a bearer token in the OpenAPI document."""
    return errors(401, 429)(security_scheme(BEARER)(handler))
