"""Sign-in with OAuth 2.0 / OpenID Connect: authorization code flow with PKCE (RFC 9700).

``start`` stores a fresh state, nonce and PKCE verifier and returns the provider's authorization
URL; the redirect URI must be one of the provider's configured URIs, exactly. ``finish`` consumes
the state (once), exchanges the code with the verifier, verifies the ID token against the
provider's JWKS (signature, ``iss``, ``aud``, ``exp``, ``nonce``), and finds the user by
(issuer, subject). A new identity is linked to an existing account only through a verified e-mail;
otherwise it gets an account of its own. Nothing is ever decided by an e-mail domain.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
from joserfc import jwk, jwt
from joserfc.errors import JoseError

from .._config import OidcConfig, OidcProviderConfig
from .._errors import Invalid, NotFound, YggdrasilError
from .._ids import now_ms
from ..devices import NewDevice
from ..store import Row, Tx, append_audit
from ._accounts import Accounts, Session
from ._sealed import IDENTITIES
from ._users import email_index, insert_user

log = logging.getLogger(__name__)

# Asymmetric algorithms only: "none" and HMAC (which would make a public key a shared secret)
# are never accepted, whatever the provider's metadata says.
_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "Ed25519"]


class OidcFailed(YggdrasilError):
    status = 401
    code = "oidc_failed"
    default_message = "sign-in with the identity provider failed; start again"


class ProviderUnavailable(YggdrasilError):
    status = 502
    code = "provider_unavailable"
    default_message = "the identity provider could not be reached"


class Authorization(msgspec.Struct, frozen=True):
    authorization_url: str
    state: str


class _Metadata(msgspec.Struct, frozen=True):
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Oidc:
    def __init__(self, accounts: Accounts, config: OidcConfig) -> None:
        self.accounts = accounts
        self.config = config
        self._metadata: dict[str, tuple[float, _Metadata]] = {}
        self._jwks: dict[str, tuple[float, jwk.KeySet]] = {}

    def provider(self, name: str) -> OidcProviderConfig:
        found = self.config.providers.get(name)
        if found is None:
            raise NotFound()
        return found

    async def start(self, name: str, redirect_uri: str) -> Authorization:
        provider = self.provider(name)
        if redirect_uri not in provider.redirect_uris:
            raise Invalid("redirect_uri is not registered for this provider")
        metadata = await self._discover(name, provider)
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        challenge = _b64url(hashlib.sha256(verifier.encode()).digest())
        at = now_ms()

        async def work(tx: Tx) -> None:
            await tx.execute("DELETE FROM oauth_states WHERE expires_at < $1", at)
            await tx.execute(
                "INSERT INTO oauth_states (state, provider, nonce, code_verifier, redirect_uri,"
                " created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                state,
                name,
                nonce,
                verifier,
                redirect_uri,
                at,
                at + self.config.state_ttl_s * 1000,
            )

        await self.accounts.db.write(work)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": provider.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(provider.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in metadata.authorization_endpoint else "?"
        return Authorization(f"{metadata.authorization_endpoint}{separator}{query}", state)

    async def finish(
        self,
        name: str,
        *,
        state: str,
        code: str,
        device: NewDevice | None = None,
        network_id: str | None = None,
        source: str = "",
    ) -> Session:
        """``source``: the client's address, recorded (sealed) in the sign-in's audit entry."""
        provider = self.provider(name)
        at = now_ms()

        async def take_state(tx: Tx) -> Row | None:
            row = await tx.fetchrow(
                "SELECT * FROM oauth_states WHERE state = $1 AND provider = $2", state, name
            )
            if row is None:
                return None
            taken = await tx.execute("DELETE FROM oauth_states WHERE state = $1", state)
            if taken != 1 or row["expires_at"] <= at:
                return None
            return row

        pending = await self.accounts.db.write(take_state)
        if pending is None:
            raise OidcFailed("unknown or expired state; start again")
        metadata = await self._discover(name, provider)
        id_token = await self._exchange(provider, metadata, code, pending)
        claims = await self._verify_id_token(name, provider, metadata, id_token, pending["nonce"])
        issuer, subject = metadata.issuer, str(claims["sub"])
        email = claims.get("email") if claims.get("email_verified") is True else None
        email = email.strip().lower() if isinstance(email, str) else None
        display_name = str(claims.get("name") or "")[:200]

        vault = self.accounts.db.vault
        subject_index = vault.index("oidc-subject", subject)

        async def find_or_create(tx: Tx) -> Row:
            linked = await tx.fetchrow(
                "SELECT u.user_id, u.role, u.status FROM identities i"
                " JOIN users u ON u.user_id = i.user_id"
                " WHERE i.issuer = $1 AND i.subject_index = $2",
                issuer,
                subject_index,
            )
            if linked is not None:
                return linked
            user = None
            if email is not None:
                user = await tx.fetchrow(
                    "SELECT user_id, role, status FROM users WHERE email_index = $1",
                    email_index(vault, email),
                )
            if user is None:
                user_id, _ = await insert_user(tx, vault, email, display_name)
                user = {"user_id": user_id, "role": "user", "status": "active"}
            else:
                await append_audit(
                    tx, user["user_id"], "identity.link", user["user_id"], {"issuer": issuer}
                )
            owner = user["user_id"]
            await tx.execute(
                "INSERT INTO identities (issuer, subject, subject_index, user_id, email,"
                " created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                issuer,
                vault.seal(subject, IDENTITIES.place("subject", owner)),
                subject_index,
                owner,
                vault.seal_optional(email, IDENTITIES.place("email", owner)),
                now_ms(),
            )
            return user

        return await self.accounts.sign_in_user(
            find_or_create,
            device=device,
            network_id=network_id,
            method=f"oidc:{name}",
            source=source,
        )

    # ----------------------------------------------------------------- provider calls

    async def _get_json(self, url: str) -> Any:
        try:
            async with httpx.AsyncClient(timeout=self.config.http_timeout_s) as client:
                response = await client.get(url)
                response.raise_for_status()
                return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("identity provider request failed: %s", type(exc).__name__)
            raise ProviderUnavailable() from None

    async def _discover(self, name: str, provider: OidcProviderConfig) -> _Metadata:
        cached = self._metadata.get(name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        url = provider.discovery_url or (
            provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
        )
        try:
            metadata = msgspec.convert(await self._get_json(url), _Metadata)
        except msgspec.ValidationError:
            raise ProviderUnavailable("the identity provider's metadata is unusable") from None
        if metadata.issuer != provider.issuer:
            # OpenID Connect Discovery 1.0, section 4.3: the issuer must match exactly.
            raise ProviderUnavailable("the identity provider's metadata names another issuer")
        self._metadata[name] = (time.monotonic() + 3600, metadata)
        return metadata

    async def _keys(self, name: str, metadata: _Metadata, *, refresh: bool) -> jwk.KeySet:
        cached = self._jwks.get(name)
        if cached is not None and not refresh and cached[0] > time.monotonic():
            return cached[1]
        document = await self._get_json(metadata.jwks_uri)
        try:
            keys = jwk.KeySet.import_key_set(document)
        except (JoseError, ValueError, TypeError, KeyError):
            raise ProviderUnavailable("the identity provider's keys are unusable") from None
        self._jwks[name] = (time.monotonic() + 3600, keys)
        return keys

    async def _exchange(
        self, provider: OidcProviderConfig, metadata: _Metadata, code: str, pending: Row
    ) -> str:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending["redirect_uri"],
            "client_id": provider.client_id,
            "code_verifier": pending["code_verifier"],
        }
        if provider.client_secret:
            form["client_secret"] = provider.client_secret
        try:
            async with httpx.AsyncClient(timeout=self.config.http_timeout_s) as client:
                response = await client.post(metadata.token_endpoint, data=form)
        except httpx.HTTPError:
            raise ProviderUnavailable() from None
        if response.status_code != 200:
            raise OidcFailed("the identity provider refused the code")
        try:
            token = response.json().get("id_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str):
            raise OidcFailed("the identity provider returned no ID token")
        return token

    async def _verify_id_token(
        self,
        name: str,
        provider: OidcProviderConfig,
        metadata: _Metadata,
        token: str,
        nonce: str,
    ) -> dict[str, Any]:
        decoded = None
        for refresh in (False, True):  # an unknown kid may mean the provider rotated its keys
            keys = await self._keys(name, metadata, refresh=refresh)
            try:
                decoded = jwt.decode(token, keys, algorithms=_ALGORITHMS)
                break
            except (JoseError, ValueError, KeyError, TypeError):
                continue
        if decoded is None:
            raise OidcFailed("the ID token's signature does not verify")
        registry = jwt.JWTClaimsRegistry(
            leeway=60,
            iss={"essential": True, "value": metadata.issuer},
            aud={"essential": True, "value": provider.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(decoded.claims)
        except JoseError:
            raise OidcFailed("the ID token's claims do not match this sign-in") from None
        audience = decoded.claims.get("aud")
        several = isinstance(audience, list) and len(audience) > 1
        if several and decoded.claims.get("azp") != provider.client_id:
            raise OidcFailed("the ID token was issued to another client")
        return decoded.claims
