-- Payouts of earnings, KYC, spending limits, budget alerts and auto-top-up
-- (yggdrasil/billing/_payouts.py, _kyc.py, _limits.py). Amounts are integer cents.

-- A user's payout choices; a user without a row has the [payouts] defaults.
CREATE TABLE payout_settings (
    user_id TEXT PRIMARY KEY,
    frequency TEXT NOT NULL,
    minimum BIGINT NOT NULL CHECK (minimum > 0),
    automatic BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL
);

-- One row per payout: booked (the ledger's payout transaction, in the same database transaction
-- as this row), then sent through the provider. pending: booked, not yet confirmed by the
-- provider (sent again with the same key after lease_until); paid: the provider confirmed it;
-- failed: the provider declined it (or never answered), and reversal_id gave the money back.
CREATE TABLE payouts (
    payout_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    period TEXT,
    provider TEXT NOT NULL,
    method_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    settled_receivable BIGINT NOT NULL DEFAULT 0,
    reference TEXT,
    failure TEXT,
    reversal_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX payouts_user ON payouts (user_id, created_at);
CREATE INDEX payouts_pending ON payouts (status, lease_until);

-- The automatic payout of one user for one period (d:2026-05-01, w:2026-W18, m:2026-05): the
-- primary key is the claim, inserted in the same transaction as the booking, so that of several
-- instances running the job at once exactly one pays each period out.
CREATE TABLE payout_runs (
    user_id TEXT NOT NULL,
    period TEXT NOT NULL,
    outcome TEXT NOT NULL,
    payout_id TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, period)
);

-- KYC of a provider: a reference at the KYC provider only (no document is stored here).
CREATE TABLE kyc (
    user_id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    status TEXT NOT NULL,
    reference TEXT,
    reason TEXT,
    submitted_at BIGINT NOT NULL,
    decided_at BIGINT
);

-- A user's monthly spending limit, budget alert thresholds (JSON list of percentages) and
-- auto-top-up; money spent per month (holds and charges, less releases and refunds).
CREATE TABLE spending_limits (
    user_id TEXT PRIMARY KEY,
    monthly_limit BIGINT,
    thresholds TEXT NOT NULL,
    topup_below BIGINT,
    topup_amount BIGINT,
    topup_max_per_month INTEGER NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
CREATE TABLE spending_months (
    user_id TEXT NOT NULL,
    month TEXT NOT NULL,
    spent BIGINT NOT NULL CHECK (spent >= 0),
    PRIMARY KEY (user_id, month)
);

-- Budget alerts sent: once per threshold per month.
CREATE TABLE spending_alerts (
    user_id TEXT NOT NULL,
    month TEXT NOT NULL,
    threshold INTEGER NOT NULL,
    spent BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, month, threshold)
);

-- Automatic top-ups: the n-th of a month is claimed here, then collected with a key derived from
-- (user, month, n); done once booked.
CREATE TABLE topups (
    user_id TEXT NOT NULL,
    month TEXT NOT NULL,
    n INTEGER NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    status TEXT NOT NULL,
    transaction_id TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, month, n)
);
