-- Payments: stored payment methods (the provider's token and display data only, never a card
-- number or a full IBAN), the webhook events received (the primary key is the lock that makes
-- every instance process one event once), and the latest known state of each provider object
-- (events may arrive in any order; states move forward only).

CREATE TABLE payment_methods (
    method_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    kind TEXT NOT NULL,
    token TEXT NOT NULL,
    payer INTEGER NOT NULL,
    payout INTEGER NOT NULL,
    status TEXT NOT NULL,
    verify_reference TEXT,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    default_payer INTEGER NOT NULL DEFAULT 0,
    default_payout INTEGER NOT NULL DEFAULT 0,
    label TEXT NOT NULL DEFAULT '',
    brand TEXT,
    last4 TEXT,
    exp_month INTEGER,
    exp_year INTEGER,
    country TEXT,
    email_masked TEXT,
    test_mode INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX payment_methods_user ON payment_methods (user_id, created_at);
-- One token is one method of one user: the same card cannot be added twice, nor by two users.
CREATE UNIQUE INDEX payment_methods_token ON payment_methods (provider, token);
CREATE INDEX payment_methods_reference ON payment_methods (provider, verify_reference);
CREATE UNIQUE INDEX payment_methods_default_payer ON payment_methods (user_id)
    WHERE default_payer = 1;
CREATE UNIQUE INDEX payment_methods_default_payout ON payment_methods (user_id)
    WHERE default_payout = 1;

CREATE TABLE payment_webhook_events (
    provider TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    object_id TEXT NOT NULL DEFAULT '',
    applied INTEGER NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX payment_webhook_events_received ON payment_webhook_events (received_at);

CREATE TABLE payment_provider_objects (
    provider TEXT NOT NULL,
    object_id TEXT NOT NULL,
    object_type TEXT NOT NULL,
    state TEXT NOT NULL,
    event_created BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (provider, object_id)
);
