-- Audit entries are appended to audit_pending, with no lock shared by all writers, and sealed
-- into the hash chain (audit_log, audit_head) by the store's sealer shortly after: the chain's
-- head row used to be locked by every audited write until its commit, which made all writes of
-- the whole cluster wait for each other's commit.
-- dialect: postgres
CREATE TABLE audit_pending (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}'
);
-- dialect: sqlite
CREATE TABLE audit_pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}'
);
