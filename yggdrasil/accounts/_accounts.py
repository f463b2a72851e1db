"""Signing in: e-mail codes, sessions (access + refresh tokens), enrolment keys, revocation.

Every single-use thing (a code, a refresh token, an enrolment key) is consumed with one
compare-and-set ``UPDATE ... WHERE <still unused>``: of any number of parallel attempts exactly one
changes a row. Secrets are verified against argon2id hashes in the process-wide hashing pool
(``_hashing``), before the transaction, and only when there is something to verify: a token is
looked up by its id part first, and an unknown id, a malformed token, or a code that can no
longer be tried fails at once, with the same answer as a wrong secret, without costing a hash.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from .._config import AuthConfig
from .._errors import Forbidden, Invalid, NotFound, YggdrasilError
from .._hashing import hash_secret, new_token, split_token, verify_secret
from .._ids import new_id, now_ms
from .._mail import Mail, Mailer
from .._ratelimit import RateLimited
from .._tokens import Principal, TokenService, family_subject
from ..devices import NewDevice
from ..networks import member_role
from ..store import Database, Row, Scope, Tx, append_audit
from ._revocations import set_revocation
from ._sealed import LOGIN_CODES
from ._sessions import Grant, insert_refresh, new_refresh, open_session
from ._users import email_index, insert_user

log = logging.getLogger(__name__)

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s.]{1,63}$")


class InvalidCode(YggdrasilError):
    status = 401
    code = "invalid_code"
    default_message = "the code is wrong, expired or used up; request a new one"


class InvalidGrant(YggdrasilError):
    status = 401
    code = "invalid_grant"
    default_message = "the refresh token is invalid, expired or revoked; sign in again"


class InvalidKey(YggdrasilError):
    status = 401
    code = "invalid_key"
    default_message = "the enrolment key is invalid, expired or used"


class AccountSuspended(YggdrasilError):
    status = 403
    code = "account_suspended"
    default_message = "this account is suspended"


class Session(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: int
    refresh_token: str
    user_id: str
    network_id: str | None
    device_id: str | None
    token_type: str = "Bearer"


class EnrollmentKey(msgspec.Struct, frozen=True):
    key: str
    """Shown once; only its hash is stored."""
    key_id: str
    network_id: str
    expires_at: int


def normalize_email(email: str) -> str:
    address = email.strip().lower()
    if len(address) > 254 or not _EMAIL.match(address):
        raise Invalid("that is not an e-mail address")
    return address


class Accounts:
    def __init__(
        self,
        db: Database,
        tokens: TokenService,
        mailer: Mailer,
        config: AuthConfig,
        *,
        on_revoke: Callable[[str, int], None] | None = None,
    ) -> None:
        self.db = db
        self.tokens = tokens
        self.mailer = mailer
        self.config = config
        self._on_revoke = on_revoke or tokens.revoke

    # ----------------------------------------------------------------- e-mail codes

    async def request_code(self, email: str, *, source: str, display_name: str = "") -> None:
        """Send a sign-in code to ``email``, asked for by the client at address ``source``.

        Known and unknown addresses get the same answer and the same work: verifying a code for
        an unknown address creates the account. Two budgets per ``codes_window_s``, kept apart so
        that exhausting one client's does not lock the owner out: one source may have
        ``codes_per_address`` codes sent to one address, and all sources together
        ``codes_per_address_total`` (it bounds the mail to one mailbox; many sources together can
        still use it up). Past either, :class:`RateLimited`; a request past its budget costs no
        hash.
        """
        address = normalize_email(email)
        source = _source_key(source)
        # A cheap look first, so that requests past the budget cost no hash; the write below
        # decides.
        await self.db.read(lambda tx: self._check_code_budget(tx, address, source, now_ms()))
        code = f"{secrets.randbelow(10**6):06d}"
        code_hash = await hash_secret(code)
        at = now_ms()
        vault = self.db.vault

        async def work(tx: Tx) -> None:
            if self.db.dialect == "postgres":
                # Requests for one address take turns, so that parallel ones count each other.
                await tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"code:{address}"
                )
            await self._check_code_budget(tx, address, source, at)
            code_id = new_id("c")
            await tx.execute(
                "INSERT INTO login_codes (code_id, email, display_name, code_hash, created_at,"
                " expires_at, source) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                code_id,
                email_index(vault, address),
                vault.seal_optional(display_name, LOGIN_CODES.place("display_name", code_id)),
                code_hash,
                at,
                at + self.config.code_ttl_s * 1000,
                vault.index("source", source),
            )

        await self.db.write(work)
        minutes = self.config.code_ttl_s // 60
        self.mailer.submit(
            Mail(
                to=address,
                subject=f"Your Yggdrasil code: {code}",
                body=(
                    f"Your sign-in code is {code}\n\n"
                    f"It is valid for {minutes} minutes and can be used once. If you have no "
                    "account yet, entering it creates one.\n\n"
                    "If you did not ask for this code, ignore this message.\n"
                ),
            )
        )

    async def _check_code_budget(self, tx: Tx, address: str, source: str, at: int) -> None:
        """Raise :class:`RateLimited` if ``source`` or everyone together used up the budget of
        codes for ``address``. One indexed range scan of at most the total budget's rows."""
        window_ms = self.config.codes_window_s * 1000
        row = await tx.fetchrow(
            "SELECT COUNT(*) AS total, COUNT(CASE WHEN source = $3 THEN 1 END) AS here,"
            " MIN(created_at) AS oldest, MIN(CASE WHEN source = $3 THEN created_at END)"
            " AS oldest_here FROM login_codes WHERE email = $1 AND created_at > $2",
            email_index(self.db.vault, address),
            at - window_ms,
            self.db.vault.index("source", source),
        )
        assert row is not None
        if int(row["here"]) >= self.config.codes_per_address:
            raise RateLimited(
                _seconds_until(int(row["oldest_here"]) + window_ms, at),
                "too many codes for this address from this client; try again later",
            )
        if int(row["total"]) >= self.config.codes_per_address_total:
            raise RateLimited(
                _seconds_until(int(row["oldest"]) + window_ms, at),
                "too many codes for this address; try again later",
            )

    async def verify_code(
        self,
        email: str,
        code: str,
        *,
        device: NewDevice | None = None,
        network_id: str | None = None,
        source: str = "",
    ) -> Session:
        """Sign in with the newest code sent to ``email``; ``source`` is the client's address,
        recorded (sealed) in the audit entry of the attempt."""
        address = normalize_email(email)
        vault = self.db.vault

        async def newest(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT code_id, code_hash, display_name FROM login_codes WHERE email = $1"
                " ORDER BY created_at DESC, code_id DESC LIMIT 1",
                email_index(vault, address),
            )

        row = await self.db.read(newest)
        counted = False
        if row is not None:
            code_id = row["code_id"]

            async def count_attempt(tx: Tx) -> int:
                return await tx.execute(
                    "UPDATE login_codes SET attempts = attempts + 1 WHERE code_id = $1"
                    " AND attempts < $2 AND consumed_at IS NULL AND expires_at > $3",
                    code_id,
                    self.config.code_max_attempts,
                    now_ms(),
                )

            counted = await self.db.write(count_attempt) == 1
        # No code, one that can no longer be tried (burnt, expired, used) or a malformed guess:
        # wrong without hashing. Codes are stored for unknown addresses too, so this says
        # nothing about accounts.
        well_formed = bool(re.fullmatch(r"\d{6}", code))
        if row is None or not (
            counted and well_formed and await verify_secret(row["code_hash"], code)
        ):
            detail = vault.seal_detail({"method": "code", "ip": source})
            await self.db.write(_audit_work("anonymous", "login.failure", "", detail))
            raise InvalidCode()
        code_id = row["code_id"]
        display_name = vault.open(row["display_name"], LOGIN_CODES.place("display_name", code_id))

        async def consume_and_find(tx: Tx) -> Row:
            used = await tx.execute(
                "UPDATE login_codes SET consumed_at = $2"
                " WHERE code_id = $1 AND consumed_at IS NULL",
                code_id,
                now_ms(),
            )
            if used != 1:
                raise InvalidCode()
            user = await tx.fetchrow(
                "SELECT user_id, role, status FROM users WHERE email_index = $1",
                email_index(vault, address),
            )
            if user is None:
                user_id, _ = await insert_user(tx, vault, address, display_name)
                user = {"user_id": user_id, "role": "user", "status": "active"}
            return user

        return await self.sign_in_user(
            consume_and_find, device=device, network_id=network_id, method="code", source=source
        )

    # ----------------------------------------------------------------- sessions

    async def sign_in_user(
        self,
        tx_work: Callable[[Tx], Coroutine[Any, Any, Row]],
        *,
        device: NewDevice | None,
        network_id: str | None,
        method: str,
        source: str = "",
    ) -> Session:
        """Open a session for the user that ``tx_work`` finds or creates, in its transaction.

        ``tx_work`` returns the user's ``user_id``, ``role`` and ``status``; it is where a code is
        consumed or an identity linked, so that either everything happens or nothing does.
        """
        secret_hash, refresh = await new_refresh()

        async def work(tx: Tx) -> Grant:
            user = await tx_work(tx)
            if user["status"] != "active":
                raise AccountSuspended()
            grant = await open_session(
                tx,
                user["user_id"],
                user["role"],
                device,
                network_id,
                secret_hash,
                refresh,
                self.config,
                vault=self.db.vault,
            )
            detail = self.db.vault.seal_detail({"method": method, "ip": source})
            await append_audit(tx, user["user_id"], "login.success", user["user_id"], detail)
            return grant

        return self._session(await self.db.write(work), refresh[2])

    async def refresh(
        self, token: str, *, device_id: str | None = None, network_id: str | None = None
    ) -> Session:
        """Rotate a refresh token. Presenting one that was already rotated revokes its family."""
        parts = split_token(token, "rt")
        if parts is None:
            raise InvalidGrant()
        token_id, secret = parts

        async def lookup(tx: Tx) -> Row | None:
            # A used (rotated) token is still verified: its reuse revokes the family below.
            return await tx.fetchrow(
                "SELECT secret_hash FROM refresh_tokens WHERE token_id = $1 AND revoked_at IS NULL",
                token_id,
            )

        row = await self.db.read(lookup)
        if row is None or not await verify_secret(row["secret_hash"], secret):
            raise InvalidGrant()
        secret_hash, refresh = await new_refresh()
        at = now_ms()

        async def rotate(tx: Tx) -> Grant | str:
            current = await tx.fetchrow(
                "SELECT r.*, u.role, u.status, u.home_network_id FROM refresh_tokens r"
                " JOIN users u ON u.user_id = r.user_id WHERE r.token_id = $1",
                token_id,
            )
            if current is None or current["revoked_at"] is not None:
                return "invalid"
            if current["device_id"] is not None and (
                current["device_id"] != device_id or current["network_id"] != network_id
            ):
                return "invalid"  # bound to another device: not this client's token
            taken = await tx.execute(
                "UPDATE refresh_tokens SET used_at = $2"
                " WHERE token_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
                token_id,
                at,
            )
            if taken != 1:
                await tx.execute(
                    "UPDATE refresh_tokens SET revoked_at = $2"
                    " WHERE family_id = $1 AND revoked_at IS NULL",
                    current["family_id"],
                    at,
                )
                await set_revocation(tx, family_subject(current["family_id"]), at)
                await append_audit(
                    tx, current["user_id"], "token.reuse", family_subject(current["family_id"])
                )
                return f"reused:{current['family_id']}"
            if current["expires_at"] <= at or current["status"] != "active":
                return "invalid"
            await insert_refresh(
                tx,
                refresh,
                secret_hash,
                current["family_id"],
                current["user_id"],
                current["network_id"],
                current["device_id"],
                self.config,
            )
            return Grant(
                current["user_id"],
                current["role"],
                current["network_id"],
                current["device_id"],
                current["family_id"],
                current["home_network_id"],
            )

        outcome = await self.db.write(rotate)
        if isinstance(outcome, str):
            if outcome.startswith("reused:"):
                self._on_revoke(family_subject(outcome.split(":", 1)[1]), at)
                log.warning("refresh token reuse: family revoked")
            raise InvalidGrant()
        return self._session(outcome, refresh[2])

    async def logout(self, principal: Principal) -> None:
        """End the principal's session: its refresh family and its access tokens, at once."""
        at = now_ms()

        async def work(tx: Tx) -> None:
            await tx.execute(
                "UPDATE refresh_tokens SET revoked_at = $3"
                " WHERE family_id = $1 AND user_id = $2 AND revoked_at IS NULL",
                principal.family_id,
                principal.user_id,
                at,
            )
            await set_revocation(tx, family_subject(principal.family_id), at)
            await append_audit(tx, principal.user_id, "logout", family_subject(principal.family_id))

        await self.db.write(work)
        self._on_revoke(family_subject(principal.family_id), at)

    # ----------------------------------------------------------------- enrolment keys

    async def create_enrollment_key(
        self, scope: Scope, network_id: str, *, ttl_s: int
    ) -> EnrollmentKey:
        """A single-use key for a headless device to join ``network_id`` (owners only)."""
        scope.check_network(network_id)
        if scope.network_id is not None:
            raise Forbidden("a device's token cannot create enrolment keys")
        if not 60 <= ttl_s <= self.config.enrollment_key_max_ttl_s:
            raise Invalid(
                f"ttl_s must be between 60 and {self.config.enrollment_key_max_ttl_s} seconds"
            )
        key_id, secret, key = new_token("ek")
        secret_hash = await hash_secret(secret)
        at = now_ms()
        expires_at = at + ttl_s * 1000

        async def work(tx: Tx) -> None:
            role = await member_role(tx, network_id, scope.user_id)
            if role is None:
                raise NotFound()
            if role != "owner":
                raise Forbidden("only the network's owner can create enrolment keys")
            await tx.execute(
                "INSERT INTO enrollment_keys (key_id, network_id, created_by, secret_hash,"
                " created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                key_id,
                network_id,
                scope.user_id,
                secret_hash,
                at,
                expires_at,
            )
            await append_audit(tx, scope.user_id, "enrollment_key.create", network_id)

        await self.db.write(work)
        return EnrollmentKey(key, key_id, network_id, expires_at)

    async def enroll(self, key: str, device: NewDevice) -> Session:
        """Redeem an enrolment key: the device joins the key's network and gets its tokens."""
        parts = split_token(key, "ek")
        if parts is None:
            raise InvalidKey()
        key_id, secret = parts

        async def lookup(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT secret_hash FROM enrollment_keys WHERE key_id = $1"
                " AND used_at IS NULL AND expires_at > $2",
                key_id,
                now_ms(),
            )

        row = await self.db.read(lookup)
        if row is None or not await verify_secret(row["secret_hash"], secret):
            raise InvalidKey()
        secret_hash, refresh = await new_refresh()
        at = now_ms()

        async def redeem(tx: Tx) -> Grant:
            taken = await tx.execute(
                "UPDATE enrollment_keys SET used_at = $2, used_by_device = $3"
                " WHERE key_id = $1 AND used_at IS NULL AND expires_at > $2",
                key_id,
                at,
                device.device_id,
            )
            if taken != 1:
                raise InvalidKey()
            owner = await tx.fetchrow(
                "SELECT k.network_id, u.user_id, u.role, u.status FROM enrollment_keys k"
                " JOIN users u ON u.user_id = k.created_by WHERE k.key_id = $1",
                key_id,
            )
            if owner is None or owner["status"] != "active":
                raise InvalidKey()
            if await member_role(tx, owner["network_id"], owner["user_id"]) is None:
                raise InvalidKey()  # the key's creator has left the network since
            grant = await open_session(
                tx,
                owner["user_id"],
                owner["role"],
                device,
                owner["network_id"],
                secret_hash,
                refresh,
                self.config,
                vault=self.db.vault,
                fresh_device=True,
            )
            await append_audit(
                tx, owner["user_id"], "device.enroll", f"{owner['network_id']}/{device.device_id}"
            )
            return grant

        return self._session(await self.db.write(redeem), refresh[2])

    # ----------------------------------------------------------------- revocation sync

    async def load_revocations(self, since_ms: int) -> int:
        """Apply every revocation newer than ``since_ms``; returns the newest ``not_before``."""

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT subject, not_before FROM token_revocations WHERE not_before > $1",
                since_ms,
            )

        newest = since_ms
        for row in await self.db.read(work):
            self.tokens.revoke(row["subject"], int(row["not_before"]))
            newest = max(newest, int(row["not_before"]))
        return newest

    def _session(self, grant: Grant, refresh_token: str) -> Session:
        access, ttl = self.tokens.issue(
            user_id=grant.user_id,
            role=grant.role,
            family_id=grant.family_id,
            network_id=grant.network_id,
            device_id=grant.device_id,
            home_network_id=grant.home_network_id,
        )
        return Session(
            access_token=access,
            expires_in=ttl,
            refresh_token=refresh_token,
            user_id=grant.user_id,
            network_id=grant.network_id,
            device_id=grant.device_id,
        )


# --------------------------------------------------------------------- helpers


def _source_key(source: str) -> str:
    """What code budgets count per client: its address, an IPv6 client by its /64 (a host
    usually has a whole /64 to pick addresses from)."""
    try:
        ip = ipaddress.ip_address(source)
    except ValueError:
        return source[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def _seconds_until(deadline_ms: int, at_ms: int) -> int:
    return max(1, math.ceil((deadline_ms - at_ms) / 1000))


def _audit_work(
    actor: str, action: str, subject: str, detail: dict[str, Any]
) -> Callable[[Tx], Any]:
    async def work(tx: Tx) -> None:
        await append_audit(tx, actor, action, subject, detail)

    return work
