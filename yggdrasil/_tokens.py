"""Access tokens: short-lived JWTs signed with Ed25519, verified in memory on every request.

RFC 8725 practice: one algorithm per key (``Ed25519``, the fully specified name of EdDSA over
Ed25519 in RFC 9864), the ``kid`` chooses among the current and retired keys, and ``iss``, ``aud``,
``exp``, ``iat`` and the header ``typ`` (``at+jwt``, RFC 9068) are always checked. Every failure
raises the same :class:`InvalidToken`, so a client learns nothing about why.

Revocation without a database read: a map from subject (``user:<id>``, every token of a user and
their devices; ``account:<id>``, the user's own tokens but not their devices';
``device:<net>/<dev>``; ``family:<id>``) to the millisecond before which tokens of that subject are
refused. It is filled
from the ``token_revocations`` table at start-up and kept current by the revocation sync job.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc import jwk, jwt
from joserfc.errors import JoseError

from ._errors import YggdrasilError
from ._secrets import Secrets
from .store import Scope

ALGORITHM = "Ed25519"
TOKEN_TYPE = "at+jwt"
_LEEWAY_S = 30
_KNOWN_TOKENS = 4096


class InvalidToken(YggdrasilError):
    status = 401
    code = "invalid_token"
    default_message = "the access token is missing, invalid or expired"


class Principal(msgspec.Struct, frozen=True):
    """The authenticated caller, exactly as the token says."""

    user_id: str
    role: Literal["user", "operator"]
    token_id: str
    family_id: str
    issued_ms: int
    network_id: str | None = None
    """Set for a device's token: the device acts only within this network."""
    device_id: str | None = None
    home_network_id: str | None = None
    """A user's token: their home network, where device requests without a network go."""

    @property
    def scope(self) -> Scope:
        return Scope(self.user_id, self.role, self.network_id)


def _import_public(key: Ed25519PublicKey) -> jwk.OKPKey:
    return jwk.OKPKey.import_key(key)


class TokenService:
    def __init__(
        self,
        secrets_: Secrets,
        *,
        issuer: str,
        audience: str,
        access_ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.access_ttl_s = access_ttl_s
        self._clock = clock
        self._kid = secrets_.signing_kid
        self._signing = jwk.OKPKey.import_key(secrets_.signing_key)
        self._verifying: dict[str, jwk.OKPKey] = {
            kid: _import_public(public) for kid, public in secrets_.retired_keys.items()
        }
        self._verifying[self._kid] = _import_public(secrets_.signing_key.public_key())
        self._not_before: dict[str, int] = {}
        self._known: dict[str, tuple[Principal, int]] = {}
        """Verified tokens -> their principal and ``exp``, oldest first (see :meth:`verify`)."""
        self.revision = 0
        """Grows with every revocation that changed what this process refuses."""

    # ----------------------------------------------------------------- issuing

    def issue(
        self,
        *,
        user_id: str,
        role: str,
        family_id: str,
        network_id: str | None = None,
        device_id: str | None = None,
        home_network_id: str | None = None,
    ) -> tuple[str, int]:
        """A signed access token and its lifetime in seconds. A device's token carries its
        network and device; a user's token their home network."""
        now = self._clock()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "iat": int(now),
            "exp": int(now) + self.access_ttl_s,
            "jti": secrets.token_urlsafe(12),
            "ims": int(now * 1000),
            "role": role,
            "fam": family_id,
        }
        if device_id is not None:
            claims["nid"] = network_id
            claims["did"] = device_id
        elif home_network_id is not None:
            claims["hnid"] = home_network_id
        header = {"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": self._kid}
        token = jwt.encode(header, claims, self._signing, algorithms=[ALGORITHM])
        return token, self.access_ttl_s

    def jwks(self) -> dict[str, Any]:
        """The public keys, for anyone who wants to verify our tokens."""
        keys = []
        for kid, key in self._verifying.items():
            entry = dict(key.as_dict(private=False))
            entry.update({"kid": kid, "alg": ALGORITHM, "use": "sig"})
            keys.append(entry)
        return {"keys": keys}

    # ----------------------------------------------------------------- verifying

    def verify(self, token: str) -> Principal:
        """The principal of a valid, unrevoked token; :class:`InvalidToken` otherwise.

        A token whose signature and claims were verified once is remembered (by its exact text,
        a bounded number of them) until it expires: the Ed25519 check is most of what an
        authenticated request costs here, and a client sends the same token many times. Expiry
        and revocation are still checked on every call; the keys never change in a running
        service, so neither can the signature's verdict.
        """
        if len(token) > 4096:
            raise InvalidToken()
        known = self._known.get(token)
        if known is not None:
            principal, expires = known
            if int(self._clock()) > expires + _LEEWAY_S:
                del self._known[token]
                raise InvalidToken()
            if self._revoked(principal):
                raise InvalidToken()
            return principal
        try:
            header_part = token.split(".", 1)[0]
            header = msgspec.json.decode(_b64decode(header_part))
            if not isinstance(header, dict):
                raise InvalidToken()
            if header.get("alg") != ALGORITHM or header.get("typ") != TOKEN_TYPE:
                raise InvalidToken()
            key = self._verifying.get(str(header.get("kid")))
            if key is None:
                raise InvalidToken()
            decoded = jwt.decode(token, key, algorithms=[ALGORITHM])
            now = int(self._clock())
            registry = jwt.JWTClaimsRegistry(
                now=now,
                leeway=_LEEWAY_S,
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.audience},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
                jti={"essential": True},
            )
            registry.validate(decoded.claims)
        except (JoseError, ValueError, msgspec.DecodeError):
            raise InvalidToken() from None
        claims = decoded.claims
        try:
            principal = Principal(
                user_id=_text(claims["sub"]),
                role="operator" if claims.get("role") == "operator" else "user",
                token_id=_text(claims["jti"]),
                family_id=_text(claims["fam"]),
                issued_ms=int(claims["ims"]),
                network_id=_optional_text(claims.get("nid")),
                device_id=_optional_text(claims.get("did")),
                home_network_id=_optional_text(claims.get("hnid")),
            )
            expires = int(claims["exp"])
        except (KeyError, TypeError, ValueError):
            raise InvalidToken() from None
        if self._revoked(principal):
            raise InvalidToken()
        if len(self._known) >= _KNOWN_TOKENS:
            del self._known[next(iter(self._known))]  # the longest known
        self._known[token] = (principal, expires)
        return principal

    # ----------------------------------------------------------------- revocation

    def revoke(self, subject: str, not_before_ms: int) -> bool:
        """Refuse tokens of ``subject`` issued before ``not_before_ms`` (in this process);
        whether that changed anything."""
        if not_before_ms > self._not_before.get(subject, 0):
            self._not_before[subject] = not_before_ms
            self.revision += 1
            return True
        return False

    def is_revoked(self, principal: Principal) -> bool:
        """Whether a principal verified earlier has been revoked since (long-lived sessions)."""
        return self._revoked(principal)

    def _revoked(self, principal: Principal) -> bool:
        subjects = [f"user:{principal.user_id}", f"family:{principal.family_id}"]
        if principal.device_id is not None:
            subjects.append(f"device:{principal.network_id}/{principal.device_id}")
        else:
            subjects.append(f"account:{principal.user_id}")
        return any(principal.issued_ms < self._not_before.get(s, 0) for s in subjects)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected text")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def user_subject(user_id: str) -> str:
    return f"user:{user_id}"


def account_subject(user_id: str) -> str:
    """The user's own tokens (a browser, a CLI), not those of their devices."""
    return f"account:{user_id}"


def device_subject(network_id: str, device_id: str) -> str:
    return f"device:{network_id}/{device_id}"


def family_subject(family_id: str) -> str:
    return f"family:{family_id}"
