"""Stored payment methods: cards, SEPA debit accounts and PayPal accounts, as the provider's token
and display data only (brand, last 4, expiry, IBAN country, masked e-mail). Never a card number
or a full IBAN: :func:`card_data_in` finds them in any text, and such input is refused.

A method pays (``payer``), receives payouts (``payout``), or both; each user has at most one
default method for each purpose. Verification: ``pending`` until the provider's check says
``verified`` or ``failed`` (a card at once, a PayPal account by its account check, a SEPA
account once its holder confirms the two micro-deposits). Every read and write is the user's
own: another user's method id is :class:`NotFound`, exactly like one that does not exist.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import msgspec
import trio

from .._crypto import Vault
from .._errors import Invalid, NotFound, UniqueViolation
from .._ids import new_id, now_ms
from ..store import Database, Row, Scope, SealedColumns, Tx, append_audit
from ._providers import (
    MethodCheck,
    MethodKind,
    PaymentDeclined,
    PaymentInvalid,
    PaymentProvider,
    PaymentProviderUnavailable,
    ProviderName,
    VerificationStatus,
)

log = logging.getLogger(__name__)

Purpose = Literal["payer", "payout"]
MAX_METHODS = 20
"""Payment methods one user may keep."""

_PAN = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _iban(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def card_data_in(text: str) -> str | None:
    """What ``text`` contains that must never be stored here: ``"a card number"`` (13 to 19
    digits, spaces or dashes between them, that pass the Luhn check) or ``"an IBAN"`` (country,
    check digits and account that pass ISO 13616's check); ``None`` if neither."""
    for match in _PAN.finditer(text):
        if _luhn(re.sub(r"[ -]", "", match.group())):
            return "a card number"
    for match in _IBAN.finditer(text):
        if _iban(match.group()):
            return "an IBAN"
    return None


def mask_email(address: str) -> str:
    """``jane.doe@example.org`` -> ``j***@example.org``."""
    local, at, domain = address.partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


class NewMethod(msgspec.Struct, frozen=True, kw_only=True):
    kind: MethodKind
    token: str
    """The provider's token for the method (made by the provider's own form or SDK)."""
    payer: bool = True
    payout: bool = False
    provider: ProviderName | None = None
    """None: the configured default provider for ``kind``."""
    label: str = ""


class PaymentMethod(msgspec.Struct, frozen=True, kw_only=True):
    """A stored payment method as its owner sees it (never the token)."""

    method_id: str
    kind: str
    provider: str
    purposes: list[str]
    status: str
    default_payer: bool
    default_payout: bool
    label: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    country: str | None
    email: str | None
    """The PayPal account's address, masked."""
    needs: str | None
    """What the owner still has to do: ``confirm_micro_deposits`` (SEPA), ``verify_again``
    (the provider did not answer), or nothing."""
    test_mode: bool
    created_at: int


class ChargeableMethod(msgspec.Struct, frozen=True, kw_only=True):
    """A verified method with what a provider call needs (for the ledger and subscriptions, not
    for the API: it carries the token)."""

    method_id: str
    user_id: str
    provider: ProviderName
    kind: MethodKind
    token: str
    test_mode: bool


def _purposes(row: Row) -> list[str]:
    return [p for p in ("payer", "payout") if row[p]]


METHODS_SEALED = SealedColumns(
    "payment_methods", key=("method_id",), owner="method_id", columns=("label", "email_masked")
)
"""The owner's label for a method and the provider account's (masked) address are sealed."""


def open_method_fields(row: Row, vault: Vault) -> Row:
    """``row`` of ``payment_methods`` with its sealed fields opened."""
    place = METHODS_SEALED.place
    return {
        **row,
        "label": vault.open(row["label"], place("label", row["method_id"])),
        "email_masked": vault.open_optional(
            row["email_masked"], place("email_masked", row["method_id"])
        ),
    }


def _method(sealed: Row, vault: Vault) -> PaymentMethod:
    row = open_method_fields(sealed, vault)
    needs = None
    if row["status"] == "pending":
        micro = row["kind"] == "sepa_debit" and row["verify_reference"] is not None
        needs = "confirm_micro_deposits" if micro else "verify_again"
    return PaymentMethod(
        method_id=row["method_id"],
        kind=row["kind"],
        provider=row["provider"],
        purposes=_purposes(row),
        status=row["status"],
        default_payer=bool(row["default_payer"]),
        default_payout=bool(row["default_payout"]),
        label=row["label"],
        brand=row["brand"],
        last4=row["last4"],
        exp_month=row["exp_month"],
        exp_year=row["exp_year"],
        country=row["country"],
        email=row["email_masked"],
        needs=needs,
        test_mode=bool(row["test_mode"]),
        created_at=row["created_at"],
    )


async def _own(tx: Tx, user_id: str, method_id: str) -> Row:
    """The user's own method row; :class:`NotFound` for a missing or another user's id."""
    row = await tx.fetchrow(
        "SELECT * FROM payment_methods WHERE method_id = $1 AND user_id = $2", method_id, user_id
    )
    if row is None:
        raise NotFound()
    return row


async def _record_check(
    tx: Tx, vault: Vault, method_id: str, check: MethodCheck, *, failed: int
) -> None:
    """Store a provider's verdict and the display data it brought (only the masked e-mail)."""
    await tx.execute(
        "UPDATE payment_methods SET status = $2, verify_reference = COALESCE($3, verify_reference),"
        " failed_attempts = $4, brand = COALESCE($5, brand), last4 = COALESCE($6, last4),"
        " exp_month = COALESCE($7, exp_month), exp_year = COALESCE($8, exp_year),"
        " country = COALESCE($9, country), email_masked = COALESCE($10, email_masked),"
        " updated_at = $11 WHERE method_id = $1",
        method_id,
        check.status,
        check.reference,
        failed,
        check.brand,
        check.last4,
        check.exp_month,
        check.exp_year,
        check.country,
        vault.seal(mask_email(check.email), METHODS_SEALED.place("email_masked", method_id))
        if check.email
        else None,
        now_ms(),
    )


async def _make_default_if_first(tx: Tx, user_id: str, method_id: str) -> None:
    """A user's first verified method for a purpose becomes its default."""
    for purpose in ("payer", "payout"):
        await tx.execute(
            f"UPDATE payment_methods SET default_{purpose} = 1 WHERE method_id = $1"
            f" AND {purpose} = 1 AND status = 'verified' AND NOT EXISTS (SELECT 1 FROM"
            f" payment_methods WHERE user_id = $2 AND default_{purpose} = 1)",
            method_id,
            user_id,
        )


async def apply_verification(
    tx: Tx, provider: str, reference: str, status: VerificationStatus
) -> int:
    """A provider's later verdict on a verification in progress (a webhook), inside ``tx``:
    only a ``pending`` method changes; returns how many did."""
    rows = await tx.fetch(
        "SELECT method_id, user_id FROM payment_methods WHERE provider = $1"
        " AND (verify_reference = $2 OR token = $2) AND status = 'pending'",
        provider,
        reference,
    )
    for row in rows:
        await tx.execute(
            "UPDATE payment_methods SET status = $2, updated_at = $3 WHERE method_id = $1",
            row["method_id"],
            status,
            now_ms(),
        )
        await _make_default_if_first(tx, row["user_id"], row["method_id"])
        await append_audit(tx, row["user_id"], f"payment_method.{status}", row["method_id"])
    return len(rows)


class PaymentMethods:
    """The payment methods of each user over a :class:`Database`, verified through
    ``providers`` (name -> provider) and ``defaults`` (kind -> the provider that takes it unless
    the request names one)."""

    def __init__(
        self,
        db: Database,
        providers: dict[str, PaymentProvider],
        defaults: dict[str, str],
        *,
        micro_deposit_attempts: int = 3,
    ) -> None:
        self.db = db
        self._providers = providers
        self._defaults = defaults
        self._attempts = micro_deposit_attempts

    def _provider(self, name: str) -> PaymentProvider:
        provider = self._providers.get(name)
        if provider is None:
            raise PaymentProviderUnavailable(f"the payment provider {name} is not enabled")
        return provider

    async def add(self, scope: Scope, new: NewMethod) -> PaymentMethod:
        """Store a method as ``pending`` and ask its provider to verify it; the method as it
        stands then. A provider that does not answer leaves it ``pending`` (``needs``:
        ``verify_again``); one that refuses the token leaves nothing."""
        found = card_data_in(new.token) or card_data_in(new.label)
        if found is not None:
            raise Invalid(f"the request contains {found}: send the provider's token instead")
        if not (new.payer or new.payout):
            raise Invalid("a payment method is for paying, for payouts, or both")
        name = new.provider or self._defaults.get(new.kind)
        if name is None:
            raise Invalid(f"no enabled payment provider takes {new.kind}")
        if name not in self._providers:
            raise Invalid(f"the payment provider {name} is not enabled")
        provider = self._provider(name)
        if new.kind not in provider.kinds:
            raise Invalid(f"{name} does not take {new.kind}")
        method_id = new_id("pm")
        user_id = scope.user_id
        now = now_ms()

        async def insert(tx: Tx) -> None:
            count = await tx.fetchval(
                "SELECT COUNT(*) FROM payment_methods WHERE user_id = $1", user_id
            )
            if count >= MAX_METHODS:
                raise Invalid(f"at most {MAX_METHODS} payment methods per account")
            await tx.execute(
                "INSERT INTO payment_methods (method_id, user_id, provider, kind, token, payer,"
                " payout, status, label, test_mode, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $10)",
                method_id,
                user_id,
                name,
                new.kind,
                new.token,
                int(new.payer),
                int(new.payout),
                self.db.vault.seal_optional(new.label, METHODS_SEALED.place("label", method_id)),
                int(provider.test_mode),
                now,
            )
            await append_audit(tx, user_id, "payment_method.add", method_id, {"kind": new.kind})

        try:
            await self.db.write(insert)
        except UniqueViolation:
            raise UniqueViolation("this payment method is stored already") from None
        try:
            check = await provider.verify_method(new.kind, new.token, key=f"{method_id}-verify")
        except PaymentProviderUnavailable:
            log.info("payment method %s stays pending: the provider did not answer", method_id)
            return await self.get(scope, method_id)
        except PaymentDeclined:
            check = MethodCheck(status="failed", reason="declined")
        except BaseException:
            await self._forget(method_id)
            raise
        return await self._store_check(user_id, method_id, check, failed=0)

    async def _forget(self, method_id: str) -> None:
        """Remove a method the provider refused (or whose check was cancelled), even while
        being cancelled."""

        async def work(tx: Tx) -> None:
            await tx.execute("DELETE FROM payment_methods WHERE method_id = $1", method_id)

        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.db.write(work)

    async def _store_check(
        self, user_id: str, method_id: str, check: MethodCheck, *, failed: int
    ) -> PaymentMethod:
        async def work(tx: Tx) -> Row:
            await _own(tx, user_id, method_id)
            await _record_check(tx, self.db.vault, method_id, check, failed=failed)
            if check.status == "verified":
                await _make_default_if_first(tx, user_id, method_id)
            if check.status != "pending":
                await append_audit(tx, user_id, f"payment_method.{check.status}", method_id)
            return await _own(tx, user_id, method_id)

        return _method(await self.db.write(work), self.db.vault)

    async def list(self, scope: Scope) -> list[PaymentMethod]:
        """The user's methods, oldest first (at most :data:`MAX_METHODS`)."""
        user_id = scope.user_id

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(
                "SELECT * FROM payment_methods WHERE user_id = $1 ORDER BY created_at, method_id",
                user_id,
            )

        return [_method(row, self.db.vault) for row in await self.db.read(work)]

    async def get(self, scope: Scope, method_id: str) -> PaymentMethod:
        user_id = scope.user_id

        async def work(tx: Tx) -> Row:
            return await _own(tx, user_id, method_id)

        return _method(await self.db.read(work), self.db.vault)

    async def delete(self, scope: Scope, method_id: str) -> None:
        """Forget a method and its token (it is no longer anyone's default)."""
        user_id = scope.user_id

        async def work(tx: Tx) -> None:
            await _own(tx, user_id, method_id)
            await tx.execute(
                "DELETE FROM payment_methods WHERE method_id = $1 AND user_id = $2",
                method_id,
                user_id,
            )
            await append_audit(tx, user_id, "payment_method.delete", method_id)

        await self.db.write(work)

    async def set_default(self, scope: Scope, method_id: str, purpose: Purpose) -> PaymentMethod:
        """Make a verified method the default for ``purpose``; 409 ``not_verified`` for one
        that is not, 422 for one that is not for that purpose."""
        user_id = scope.user_id
        column = "default_payer" if purpose == "payer" else "default_payout"

        async def work(tx: Tx) -> Row:
            row = await _own(tx, user_id, method_id)
            if not row[purpose]:
                raise Invalid(f"this payment method is not for {purpose} use")
            if row["status"] != "verified":
                raise NotVerified()
            await tx.execute(
                f"UPDATE payment_methods SET {column} = 0 WHERE user_id = $1 AND {column} = 1",
                user_id,
            )
            await tx.execute(
                f"UPDATE payment_methods SET {column} = 1, updated_at = $2 WHERE method_id = $1",
                method_id,
                now_ms(),
            )
            await append_audit(
                tx, user_id, "payment_method.default", method_id, {"purpose": purpose}
            )
            return await _own(tx, user_id, method_id)

        return _method(await self.db.write(work), self.db.vault)

    async def verify(
        self, scope: Scope, method_id: str, amounts_cents: tuple[int, int] | None = None
    ) -> PaymentMethod:
        """Verify a pending or failed method again, or confirm a SEPA account's micro-deposits
        (``amounts_cents``). Wrong amounts count; after ``micro_deposit_attempts`` of them the
        method is ``failed``. A verified method stays as it is."""
        user_id = scope.user_id
        row = await self.db.read(lambda tx: _own(tx, user_id, method_id))
        if row["status"] == "verified":
            return _method(row, self.db.vault)
        provider = self._provider(row["provider"])
        failed = row["failed_attempts"]
        key = f"{method_id}-verify-{failed}"
        micro = row["kind"] == "sepa_debit" and row["verify_reference"] is not None
        if micro and row["status"] == "pending":
            if amounts_cents is None:
                raise Invalid("confirm the two micro-deposits: amounts_cents, e.g. [32, 45]")
            check = await provider.confirm_micro_deposits(
                row["verify_reference"], amounts_cents, key=key
            )
            if check.status == "failed":
                failed += 1
                if failed < self._attempts:
                    await self._store_check(
                        user_id, method_id, MethodCheck(status="pending"), failed=failed
                    )
                    raise MicroDepositsMismatch(
                        f"the amounts do not match ({self._attempts - failed} attempts left)"
                    )
        elif amounts_cents is not None:
            raise Invalid("only a pending SEPA account is confirmed with amounts")
        else:
            try:
                check = await provider.verify_method(row["kind"], row["token"], key=key)
            except PaymentDeclined:
                check = MethodCheck(status="failed", reason="declined")
            if check.status == "failed":
                failed += 1
        return await self._store_check(user_id, method_id, check, failed=failed)

    async def chargeable(self, user_id: str, purpose: Purpose = "payer") -> ChargeableMethod:
        """The user's default verified method for ``purpose``, with its token, for the ledger,
        subscriptions and payouts (never for the API); :class:`NotFound` when there is none."""
        column = "default_payer" if purpose == "payer" else "default_payout"

        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                f"SELECT * FROM payment_methods WHERE user_id = $1 AND {column} = 1"
                " AND status = 'verified'",
                user_id,
            )

        row = await self.db.read(work)
        if row is None:
            raise NotFound(f"no verified default payment method for {purpose} use")
        return ChargeableMethod(
            method_id=row["method_id"],
            user_id=row["user_id"],
            provider=row["provider"],
            kind=row["kind"],
            token=row["token"],
            test_mode=bool(row["test_mode"]),
        )


class NotVerified(Invalid):
    status = 409
    code = "not_verified"
    default_message = "the payment method is not verified yet"


class MicroDepositsMismatch(PaymentInvalid):
    code = "micro_deposits_mismatch"
    default_message = "the amounts do not match the micro-deposits"
