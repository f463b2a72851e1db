"""A local OpenID Connect issuer with a test key, for sign-in tests (a stand-in for Google)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from hypercorn.config import Config
from hypercorn.trio import serve
from joserfc import jwk, jwt
from quart import Response, request
from quart_trio import QuartTrio

CLIENT_ID = "yggdrasil-test-client"
CLIENT_SECRET = "test-secret"


class Issuer:
    def __init__(self) -> None:
        self.url = ""
        self.key = jwk.RSAKey.import_key(
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        self.kid = "test-key-1"
        self.user: dict[str, Any] = {
            "sub": "alice-sub",
            "email": "alice@example.org",
            "email_verified": True,
        }
        self.tamper: dict[str, Any] = {}
        self.signing_key: Any = None  # sign with another key when set
        self.algorithm = "RS256"
        self.codes: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.app = self._build()

    def _build(self) -> QuartTrio:
        app = QuartTrio("issuer")

        @app.get("/.well-known/openid-configuration")
        async def discovery() -> dict[str, Any]:
            return {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
            }

        @app.get("/jwks")
        async def jwks() -> dict[str, Any]:
            public = dict(self.key.as_dict(private=False))
            public.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
            return {"keys": [public]}

        @app.get("/authorize")
        async def authorize() -> Response:
            args = request.args
            assert args["response_type"] == "code"
            assert args["code_challenge_method"] == "S256"
            code = secrets.token_urlsafe(16)
            self.codes[code] = {
                "challenge": args["code_challenge"],
                "nonce": args["nonce"],
                "redirect_uri": args["redirect_uri"],
                "client_id": args["client_id"],
                "user": dict(self.user),
            }
            location = f"{args['redirect_uri']}?{urlencode({'code': code, 'state': args['state']})}"
            return Response(b"", status=302, headers={"Location": location})

        @app.post("/token")
        async def token() -> Response | dict[str, Any]:
            form = await request.form
            self.token_requests.append(dict(form))
            grant = self.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            if (
                grant is None
                or challenge.decode().rstrip("=") != grant["challenge"]
                or form.get("redirect_uri") != grant["redirect_uri"]
                or form.get("client_id") != CLIENT_ID
                or form.get("client_secret") != CLIENT_SECRET
            ):
                return Response(
                    b'{"error": "invalid_grant"}', status=400, content_type="application/json"
                )
            now = int(time.time())
            claims = {
                "iss": self.url,
                "aud": CLIENT_ID,
                "iat": now,
                "exp": now + 300,
                "nonce": grant["nonce"],
                **grant["user"],
                **self.tamper,
            }
            header = {"alg": self.algorithm, "kid": self.kid}
            key = self.signing_key or self.key
            id_token = jwt.encode(header, claims, key, algorithms=[self.algorithm])
            return {"id_token": id_token, "access_token": "opaque", "token_type": "Bearer"}

        return app

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(self.app, config, task_status=task_status)

        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(run)
            self.url = binds[0]
            task_status.started(self.url)
