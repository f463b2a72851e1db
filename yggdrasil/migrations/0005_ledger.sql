-- The double-entry ledger (yggdrasil/billing/_ledger.py) and the idempotency keys of money-moving
-- requests (yggdrasil/billing/_idempotency.py). Amounts are integer cents.

-- One row per balanced set of entries: what happened, on whose behalf, with which key.
CREATE TABLE ledger_transactions (
    txn_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    user_id TEXT,
    memo TEXT NOT NULL DEFAULT '{}',
    reverses TEXT,
    idempotency_key TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_transactions_reverses ON ledger_transactions (reverses);

-- Entries are append-only: the triggers below refuse to change an amount or to delete a row.
-- user_id is the owner of the account (user:<user_id>:<kind>), for the owner's own reads.
-- dialect: postgres
CREATE TABLE ledger_entries (
    entry_id BIGSERIAL PRIMARY KEY,
    txn_id TEXT NOT NULL REFERENCES ledger_transactions (txn_id),
    account TEXT NOT NULL,
    user_id TEXT,
    amount BIGINT NOT NULL CHECK (amount <> 0),
    created_at BIGINT NOT NULL
);
CREATE FUNCTION ledger_entries_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are immutable: post a reversal instead';
END;
$$;
CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE OF txn_id, account, amount
    ON ledger_entries FOR EACH ROW EXECUTE FUNCTION ledger_entries_immutable();
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE
    ON ledger_entries FOR EACH ROW EXECUTE FUNCTION ledger_entries_immutable();
-- dialect: sqlite
CREATE TABLE ledger_entries (
    entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id TEXT NOT NULL REFERENCES ledger_transactions (txn_id),
    account TEXT NOT NULL,
    user_id TEXT,
    amount BIGINT NOT NULL CHECK (amount <> 0),
    created_at BIGINT NOT NULL
);
CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE OF txn_id, account, amount
    ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are immutable: post a reversal instead');
END;
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are immutable: post a reversal instead');
END;
-- dialect: all
CREATE INDEX ledger_entries_user ON ledger_entries (user_id, entry_id);
CREATE INDEX ledger_entries_txn ON ledger_entries (txn_id);

-- The sum of each account's entries, kept in the same transaction as the entries.
CREATE TABLE ledger_balances (
    account TEXT PRIMARY KEY,
    balance BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Pre-authorizations: money moved from a user's balance to held, captured (in parts) or released.
CREATE TABLE ledger_holds (
    hold_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    captured BIGINT NOT NULL DEFAULT 0,
    released BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    closed_at BIGINT,
    CHECK (captured >= 0 AND released >= 0 AND captured + released <= amount)
);
CREATE INDEX ledger_holds_open ON ledger_holds (status, expires_at);
CREATE INDEX ledger_holds_user ON ledger_holds (user_id, created_at);

-- What a capture or charge may still give back: its credit legs and how much of each was refunded.
CREATE TABLE ledger_refundables (
    txn_id TEXT PRIMARY KEY REFERENCES ledger_transactions (txn_id),
    user_id TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    refunded BIGINT NOT NULL DEFAULT 0,
    legs TEXT NOT NULL,
    CHECK (refunded >= 0 AND refunded <= amount)
);

-- Users who asked for netting (earnings settled against what they owe).
CREATE TABLE ledger_netting (
    user_id TEXT PRIMARY KEY,
    enabled BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Idempotency keys: the first answer to a money-moving request, stored in the same transaction as
-- its effect; the row is also the lock that makes concurrent duplicates wait and then replay.
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    answer TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
