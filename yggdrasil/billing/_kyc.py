"""KYC of providers: who must prove who they are before their earnings are paid out.

Whether a user needs KYC depends on their region (``payouts.kyc_regions``; ``*`` is everywhere,
and a user who has not said where they are needs it wherever any region does). The user submits
a reference at the KYC provider (a case or document id, never the documents: nothing of them is
stored here); an operator then sets the result, verified or rejected, and that is audited.
Payouts wait while KYC is required and not verified; the money stays in the earnings.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from .._config import PayoutsConfig
from .._crypto import Vault
from .._errors import Invalid, NotFound, YggdrasilError
from .._ids import now_ms
from ..store import Database, Row, SealedColumns, Tx, append_audit

KycStatus = Literal["not_required", "required", "pending", "verified", "rejected"]
Decision = Literal["verified", "rejected"]

_REGION = re.compile(r"^[A-Z]{2}$")
_REFERENCE = re.compile(r"^[\x21-\x7e]{1,200}$")


class KycRequired(YggdrasilError):
    status = 409
    code = "kyc_required"
    default_message = "payouts wait until your identity (KYC) is verified"


class KycVerified(YggdrasilError):
    status = 409
    code = "kyc_verified"
    default_message = "your KYC is verified already"


class Kyc(msgspec.Struct, frozen=True):
    """A user's KYC: ``status`` is what payouts look at; ``required`` whether their region
    needs it at all."""

    status: KycStatus
    required: bool
    region: str | None = None
    reference: str | None = None
    reason: str | None = None
    """Why it was rejected (from the operator)."""
    submitted_at: int | None = None
    decided_at: int | None = None

    @property
    def blocks_payouts(self) -> bool:
        return self.required and self.status != "verified"


def region_requires(config: PayoutsConfig, region: str | None) -> bool:
    regions = config.kyc_regions
    if "*" in regions:
        return True
    return bool(regions) if region is None else region in regions


KYC_SEALED = SealedColumns(
    "kyc", key=("user_id",), owner="user_id", columns=("reference", "reason")
)
"""The reference at the KYC provider (it names a person there) and the decision's reason."""


def _kyc(config: PayoutsConfig, row: Row | None, vault: Vault) -> Kyc:
    if row is None:
        required = region_requires(config, None)
        return Kyc("required" if required else "not_required", required)
    required = region_requires(config, row["region"])
    status: KycStatus = row["status"]
    if not required and status != "verified":
        status = "not_required"
    return Kyc(
        status,
        required,
        row["region"],
        vault.open_optional(row["reference"], KYC_SEALED.place("reference", row["user_id"])),
        vault.open_optional(row["reason"], KYC_SEALED.place("reason", row["user_id"])),
        row["submitted_at"],
        row["decided_at"],
    )


async def kyc_of(tx: Tx, config: PayoutsConfig, user_id: str, vault: Vault) -> Kyc:
    """The user's KYC, inside the caller's unit (``vault`` opens its sealed fields)."""
    row = await tx.fetchrow("SELECT * FROM kyc WHERE user_id = $1", user_id)
    return _kyc(config, row, vault)


class KycService:
    def __init__(self, db: Database, config: PayoutsConfig) -> None:
        self.db = db
        self.config = config

    async def get(self, user_id: str) -> Kyc:
        async def read(tx: Tx) -> Kyc:
            return await kyc_of(tx, self.config, user_id, self.db.vault)

        return await self.db.read(read)

    async def submit(self, user_id: str, *, region: str, reference: str) -> Kyc:
        """The user's submission: their region and the reference at the KYC provider. It is
        pending until an operator decides; a verified KYC is not submitted again (409)."""
        if not _REGION.match(region):
            raise Invalid("region must be an ISO 3166 country code such as DE")
        if not _REFERENCE.match(reference):
            raise Invalid("reference must be 1 to 200 visible ASCII characters")

        async def work(tx: Tx) -> Kyc:
            status = await tx.fetchval("SELECT status FROM kyc WHERE user_id = $1", user_id)
            if status == "verified":
                raise KycVerified()
            at = now_ms()
            await tx.execute(
                "INSERT INTO kyc (user_id, region, status, reference, reason, submitted_at)"
                " VALUES ($1, $2, 'pending', $3, NULL, $4) ON CONFLICT (user_id) DO UPDATE"
                " SET region = excluded.region, status = 'pending',"
                " reference = excluded.reference, reason = NULL,"
                " submitted_at = excluded.submitted_at, decided_at = NULL",
                user_id,
                region,
                self.db.vault.seal(reference, KYC_SEALED.place("reference", user_id)),
                at,
            )
            await append_audit(tx, user_id, "kyc.submit", user_id, {"region": region})
            return await kyc_of(tx, self.config, user_id, self.db.vault)

        return await self.db.write(work)

    async def decide(
        self, operator: str, user_id: str, decision: Decision, *, reason: str | None = None
    ) -> Kyc:
        """An operator's decision on a submitted KYC (audited with who decided);
        :class:`NotFound` for a user who never submitted one."""
        if decision not in ("verified", "rejected"):
            raise Invalid("the decision is verified or rejected")

        async def work(tx: Tx) -> Kyc:
            changed = await tx.execute(
                "UPDATE kyc SET status = $2, reason = $3, decided_at = $4 WHERE user_id = $1",
                user_id,
                decision,
                self.db.vault.seal_optional(reason, KYC_SEALED.place("reason", user_id)),
                now_ms(),
            )
            if changed != 1:
                raise NotFound()
            await append_audit(tx, operator, f"admin.kyc_{decision}", user_id)
            return await kyc_of(tx, self.config, user_id, self.db.vault)

        return await self.db.write(work)
