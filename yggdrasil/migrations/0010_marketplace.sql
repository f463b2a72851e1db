-- The compute marketplace (yggdrasil/marketplace/): providers, compute requests (each settled
-- one is a transaction) and disputes. Amounts are integer cents; times integer milliseconds
-- since the Unix epoch. JSON columns are TEXT, as elsewhere.

-- A provider: one of a user's devices selling its compute. Only a provider that passed its test
-- job is stored; requesters only ever see provider_id.
CREATE TABLE marketplace_providers (
    provider_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    models TEXT NOT NULL,
    hardware TEXT NOT NULL,
    price_per_1k BIGINT NOT NULL CHECK (price_per_1k >= 0),
    max_concurrent INTEGER NOT NULL CHECK (max_concurrent > 0),
    tokens_per_minute BIGINT NOT NULL CHECK (tokens_per_minute > 0),
    schedule TEXT NOT NULL,
    quality TEXT NOT NULL,
    status TEXT NOT NULL,
    test_latency_ms BIGINT NOT NULL,
    test_tokens_per_s BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (network_id, device_id)
);
CREATE INDEX marketplace_providers_user ON marketplace_providers (user_id, provider_id);

-- A compute request, from PENDING to COMPLETED, FAILED, CANCELLED or REFUNDED. provider_user_id
-- lets the provider see its side of the transaction (never the requester's user_id).
CREATE TABLE marketplace_requests (
    request_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    messages TEXT NOT NULL,
    max_cost BIGINT NOT NULL,
    max_tokens BIGINT NOT NULL,
    state TEXT NOT NULL,
    hold_id TEXT,
    provider_id TEXT,
    provider_user_id TEXT,
    price_per_1k BIGINT,
    decision TEXT,
    attempts TEXT NOT NULL,
    answer TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost BIGINT NOT NULL DEFAULT 0,
    fee BIGINT NOT NULL DEFAULT 0,
    earnings BIGINT NOT NULL DEFAULT 0,
    refunded BIGINT NOT NULL DEFAULT 0,
    capture_txn TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX marketplace_requests_user ON marketplace_requests (user_id, created_at);
CREATE INDEX marketplace_requests_provider ON marketplace_requests (provider_user_id, created_at);

-- A requester's dispute of a completed request; the provider (or an operator) resolves it with a
-- refund of 0 up to what is left of the cost, through the ledger's refund.
CREATE TABLE marketplace_disputes (
    dispute_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    provider_user_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL,
    refund BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    resolved_at BIGINT
);
