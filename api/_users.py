"""Accounts: e-mail codes, OpenID Connect, tokens, the profile, export and deletion."""

from __future__ import annotations

from quart import Quart, Response
from quart_schema import tag, validate_querystring, validate_request, validate_response

from ._audit_models import AuditQuery, MyAuditEntry, MyAuditPage, after_seq, seq_cursor
from ._auth import Guard, errors
from ._models import (
    Accepted,
    AuthorizationOut,
    AuthorizeQuery,
    EnrollIn,
    Export,
    Jwks,
    LoginIn,
    OidcCallbackIn,
    ProfileIn,
    RefreshIn,
    RegisterIn,
    SessionOut,
    UserOut,
    VerifyIn,
    convert,
)
from ._openapi import no_content

CODE_SENT = Accepted("code_sent")


def install(app: Quart, guard: Guard) -> None:
    @app.post("/api/v1/users/register")
    @tag(["accounts"])
    @validate_request(RegisterIn)
    @validate_response(Accepted, 202)
    @errors(400, 413, 422, 429, 503)
    async def register(data: RegisterIn) -> tuple[Accepted, int]:
        """Send a sign-in code to an e-mail address; verifying it creates the account.

        The answer is the same whether or not the address has an account already.
        """
        guard.sign_in_attempt()
        await guard.domain().accounts.request_code(
            data.email, source=guard.client(), display_name=data.display_name
        )
        return CODE_SENT, 202

    @app.post("/api/v1/users/login")
    @tag(["accounts"])
    @validate_request(LoginIn)
    @validate_response(Accepted, 202)
    @errors(400, 413, 422, 429, 503)
    async def login(data: LoginIn) -> tuple[Accepted, int]:
        """Send a sign-in code (same answer for known and unknown addresses)."""
        guard.sign_in_attempt()
        await guard.domain().accounts.request_code(data.email, source=guard.client())
        return CODE_SENT, 202

    @app.post("/api/v1/users/verify")
    @tag(["accounts"])
    @validate_request(VerifyIn)
    @validate_response(SessionOut, 200)
    @errors(400, 401, 403, 404, 409, 413, 422, 429, 503)
    async def verify(data: VerifyIn) -> SessionOut:
        """Exchange a code for tokens. With ``device``, the device joins ``network_id`` (or the
        home network) and the tokens are bound to it."""
        guard.sign_in_attempt()
        session = await guard.domain().accounts.verify_code(
            data.email,
            data.code,
            device=data.device.to_new() if data.device else None,
            network_id=data.network_id,
            source=guard.client(),
        )
        return convert(session, SessionOut)  # type: ignore[no-any-return]

    @app.post("/api/v1/auth/refresh")
    @tag(["accounts"])
    @validate_request(RefreshIn)
    @validate_response(SessionOut, 200)
    @errors(400, 401, 413, 422, 429, 503)
    async def refresh(data: RefreshIn) -> SessionOut:
        """Rotate a refresh token. A device's token needs that device's id and network."""
        guard.sign_in_attempt()
        session = await guard.domain().accounts.refresh(
            data.refresh_token, device_id=data.device_id, network_id=data.network_id
        )
        return convert(session, SessionOut)  # type: ignore[no-any-return]

    @app.post("/api/v1/auth/logout")
    @tag(["accounts"])
    @no_content
    @errors(503)
    async def logout() -> Response:
        """End this session: its refresh tokens and access tokens stop working at once."""
        principal = guard.principal()
        await guard.domain().accounts.logout(principal)
        return Response(b"", status=204)

    @app.post("/api/v1/enroll")
    @tag(["accounts"])
    @validate_request(EnrollIn)
    @validate_response(SessionOut, 200)
    @errors(400, 401, 409, 413, 422, 429, 503)
    async def enroll(data: EnrollIn) -> SessionOut:
        """A headless device redeems a single-use enrolment key and joins that network."""
        guard.sign_in_attempt()
        session = await guard.domain().accounts.enroll(data.key, data.device.to_new())
        return convert(session, SessionOut)  # type: ignore[no-any-return]

    @app.get("/api/v1/auth/oidc/<provider>/authorize")
    @tag(["accounts"])
    @validate_querystring(AuthorizeQuery)
    @validate_response(AuthorizationOut, 200)
    @errors(404, 422, 429, 502, 503)
    async def oidc_authorize(provider: str, query_args: AuthorizeQuery) -> AuthorizationOut:
        """Start signing in with an identity provider: open ``authorization_url`` in a browser."""
        guard.sign_in_attempt()
        found = await guard.domain().oidc.start(provider, query_args.redirect_uri)
        return AuthorizationOut(found.authorization_url, found.state)

    @app.post("/api/v1/auth/oidc/<provider>/callback")
    @tag(["accounts"])
    @validate_request(OidcCallbackIn)
    @validate_response(SessionOut, 200)
    @errors(400, 401, 403, 404, 409, 413, 422, 429, 502, 503)
    async def oidc_callback(provider: str, data: OidcCallbackIn) -> SessionOut:
        """Finish signing in: the ``state`` and ``code`` the provider sent to the redirect URI."""
        guard.sign_in_attempt()
        session = await guard.domain().oidc.finish(
            provider,
            state=data.state,
            code=data.code,
            device=data.device.to_new() if data.device else None,
            network_id=data.network_id,
            source=guard.client(),
        )
        return convert(session, SessionOut)  # type: ignore[no-any-return]

    @app.get("/api/v1/users/me")
    @tag(["accounts"])
    @validate_response(UserOut, 200)
    @errors(404, 503)
    async def me() -> UserOut:
        principal = guard.principal()
        user = await guard.domain().store.get_me(principal.scope)
        return convert(user, UserOut)  # type: ignore[no-any-return]

    @app.put("/api/v1/users/me")
    @tag(["accounts"])
    @validate_request(ProfileIn)
    @validate_response(UserOut, 200)
    @errors(400, 404, 413, 422, 503)
    async def update_me(data: ProfileIn) -> UserOut:
        principal = guard.principal()
        user = await guard.domain().account_data.update_profile(
            principal.scope, display_name=data.display_name
        )
        return convert(user, UserOut)  # type: ignore[no-any-return]

    @app.delete("/api/v1/users/me")
    @tag(["accounts"])
    @no_content
    @errors(404, 503)
    async def delete_me() -> Response:
        """Delete the account and everything linked to it; every token stops working at once."""
        principal = guard.principal()
        at = await guard.domain().account_data.delete(principal.scope)
        guard.revoke(f"user:{principal.user_id}", at)
        return Response(b"", status=204)

    @app.get("/api/v1/users/me/export")
    @tag(["accounts"])
    @validate_response(Export, 200)
    @errors(404, 503)
    async def export() -> Export:
        """Everything stored about the user, as JSON (GDPR data portability)."""
        principal = guard.principal()
        data = await guard.domain().account_data.export(principal.scope)
        return convert(data, Export)  # type: ignore[no-any-return]

    @app.get("/api/v1/users/me/audit")
    @tag(["accounts"])
    @validate_querystring(AuditQuery)
    @validate_response(MyAuditPage, 200)
    @errors(422, 503)
    async def my_audit(query_args: AuditQuery) -> MyAuditPage:
        """The user's own audit trail, oldest first: what they did and what was done about
        them (never another user's entries, nor who else acted). Entries older than the
        retention (``retention.audit_days``) are gone."""
        principal = guard.principal()
        after = after_seq(query_args.cursor)
        entries = await guard.domain().store.audit_log.entries_about(
            principal.user_id, after=after, limit=query_args.limit + 1
        )
        more = len(entries) > query_args.limit
        entries = entries[: query_args.limit]
        return MyAuditPage(
            [
                MyAuditEntry(
                    seq=entry.seq,
                    at=entry.at,
                    by="self" if entry.actor == principal.user_id else "other",
                    action=entry.action,
                    subject=entry.subject,
                    detail=entry.detail,
                )
                for entry in entries
            ],
            seq_cursor(entries[-1].seq) if more else None,
        )

    @app.get("/.well-known/jwks.json")
    @tag(["accounts"])
    @validate_response(Jwks, 200)
    async def jwks() -> Jwks:
        """The public keys that verify this server's access tokens."""
        return Jwks(guard.tokens().jwks()["keys"])
