-- Subscriptions, token usage, invoices (yggdrasil/billing: _subscriptions, _usage, _invoices,
-- _renewals, _subscription_requests, _charging). Amounts are integer cents; times integer ms.

-- Every subscription a user ever had; at most one is not 'ended' (the current one). A user
-- without a current subscription is on the plan 'free'. Periods are calendar months counted
-- from anchor_at: period n runs from anchor + n months to anchor + n + 1 months.
-- due_*: a renewal being collected (the amount, the invoice lines as JSON, the date it fell
-- due); charge_key: the idempotency key of the charge in flight, kept until its outcome is
-- written so that a crash and rerun repeats the same key.
CREATE TABLE subscriptions (
    subscription_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (user_id),
    plan TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'past_due', 'ended')),
    cancel_at_period_end INTEGER NOT NULL DEFAULT 0 CHECK (cancel_at_period_end IN (0, 1)),
    anchor_at BIGINT NOT NULL,
    period_index INTEGER NOT NULL CHECK (period_index >= 0),
    period_start BIGINT NOT NULL,
    period_end BIGINT NOT NULL,
    due_cents BIGINT CHECK (due_cents >= 0),
    due_lines TEXT,
    due_since BIGINT,
    charge_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    grace_until BIGINT,
    next_retry_at BIGINT,
    created_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason TEXT
);
CREATE UNIQUE INDEX subscriptions_current ON subscriptions (user_id) WHERE state <> 'ended';
CREATE INDEX subscriptions_user ON subscriptions (user_id, created_at);
CREATE INDEX subscriptions_renewal ON subscriptions (state, period_end);

-- Who does a user's billing work right now (a renewal, a plan change): one instance at a time.
-- A row whose lease_until has passed may be taken over.
CREATE TABLE subscription_leases (
    user_id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);

-- Money-moving subscription requests by (user, Idempotency-Key): the request's fingerprint and,
-- once done, its answer (JSON). A row without an answer is in progress, by the holder of
-- token, until lease_until.
CREATE TABLE subscription_requests (
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    answer TEXT,
    token TEXT NOT NULL,
    lease_until BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, idempotency_key)
);
CREATE INDEX subscription_requests_created ON subscription_requests (created_at);

-- Cloud-LLM tokens consumed per subscription period; metered_tokens are those to be charged
-- at the period's end (pay-per-token).
CREATE TABLE subscription_usage (
    subscription_id TEXT NOT NULL REFERENCES subscriptions (subscription_id),
    period_index INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end BIGINT NOT NULL,
    tokens_used BIGINT NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
    metered_tokens BIGINT NOT NULL DEFAULT 0 CHECK (metered_tokens >= 0),
    PRIMARY KEY (subscription_id, period_index)
);
CREATE INDEX subscription_usage_user ON subscription_usage (user_id, period_start);

-- One row per consume_tokens call, by its key: a repeated call counts once.
CREATE TABLE token_consumptions (
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    tokens BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, idempotency_key)
);
CREATE INDEX token_consumptions_created ON token_consumptions (created_at);

-- The sandbox charger's record of what it charged or credited, by idempotency key.
CREATE TABLE subscription_charges (
    charge_key TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('charge', 'credit')),
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'declined')),
    reference TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX subscription_charges_user ON subscription_charges (user_id, created_at);

-- Issued invoices, immutable (the triggers refuse any change or deletion). lines is the JSON
-- list of lines; number is YGG-<year>-<n>, n counting from 1 in each year (invoice_numbers).
CREATE TABLE invoices (
    invoice_id TEXT PRIMARY KEY,
    number TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users (user_id),
    subscription_id TEXT,
    currency TEXT NOT NULL,
    total_cents BIGINT NOT NULL,
    lines TEXT NOT NULL,
    period_start BIGINT,
    period_end BIGINT,
    payment_provider TEXT NOT NULL,
    payment_reference TEXT NOT NULL,
    test_mode INTEGER NOT NULL CHECK (test_mode IN (0, 1)),
    issued_at BIGINT NOT NULL
);
CREATE INDEX invoices_user ON invoices (user_id, issued_at, invoice_id);
CREATE TABLE invoice_numbers (
    year INTEGER PRIMARY KEY,
    last_number INTEGER NOT NULL
);
-- dialect: postgres
CREATE FUNCTION invoices_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'issued invoices are immutable';
END;
$$;
CREATE TRIGGER invoices_no_update BEFORE UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_immutable();
CREATE TRIGGER invoices_no_delete BEFORE DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_immutable();
-- dialect: sqlite
CREATE TRIGGER invoices_no_update BEFORE UPDATE ON invoices
BEGIN
    SELECT RAISE(ABORT, 'issued invoices are immutable');
END;
CREATE TRIGGER invoices_no_delete BEFORE DELETE ON invoices
BEGIN
    SELECT RAISE(ABORT, 'issued invoices are immutable');
END;
