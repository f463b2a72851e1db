-- Sign-in: external identities, one-time e-mail codes, refresh tokens, enrolment keys, OAuth
-- state, and token revocations. Secrets are stored only as argon2id hashes.

-- An external identity is (issuer, subject); never an e-mail alone.
CREATE TABLE identities (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    email TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX identities_user ON identities (user_id);

-- One-time e-mail codes: only the newest row of an address counts.
CREATE TABLE login_codes (
    code_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    code_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    consumed_at BIGINT
);
CREATE INDEX login_codes_email ON login_codes (email, created_at);

-- Refresh tokens rotate within a family; reuse of a rotated one revokes the family.
CREATE TABLE refresh_tokens (
    token_id TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    network_id TEXT,
    device_id TEXT,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_device ON refresh_tokens (network_id, device_id);

-- Single-use keys that let a headless device join a network.
CREATE TABLE enrollment_keys (
    key_id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks (network_id) ON DELETE CASCADE,
    created_by TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    used_by_device TEXT
);
CREATE INDEX enrollment_keys_network ON enrollment_keys (network_id);

-- OAuth/OIDC authorization requests in flight (state, nonce, PKCE verifier).
CREATE TABLE oauth_states (
    state TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    nonce TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Access tokens issued before not_before for this subject are refused. Subjects are
-- 'user:<user_id>' and 'device:<network_id>/<device_id>'.
CREATE TABLE token_revocations (
    subject TEXT PRIMARY KEY,
    not_before BIGINT NOT NULL
);
