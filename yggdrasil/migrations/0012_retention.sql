-- Retention (docs/operations.md, "Retention"): the job's cluster-wide lease, and the audit log's
-- cut. The audit log stays append-only except for one thing: the retention job may delete a
-- prefix of it, up to the recorded cut, and the cut (the seq and hash of the last entry removed)
-- is where verification starts. The cut only moves forward, and only to an entry of the chain.

-- One row: which instance runs the retention job now (compare-and-set on lease_until), and when
-- a run last finished.
CREATE TABLE retention_runs (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL DEFAULT '',
    lease_until BIGINT NOT NULL DEFAULT 0,
    last_run_at BIGINT NOT NULL DEFAULT 0
);
INSERT INTO retention_runs (id, holder, lease_until, last_run_at) VALUES (1, '', 0, 0);

-- One row: the last audit entry removed by retention (seq 0 and hash '': nothing removed).
CREATE TABLE audit_cut (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    at BIGINT NOT NULL
);
INSERT INTO audit_cut (id, seq, hash, at) VALUES (1, 0, '', 0);

-- A user's own audit trail (GET /api/v1/users/me/audit) and the operators' filters.
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_subject ON audit_log (subject, seq);
CREATE INDEX audit_log_at ON audit_log (at);

-- What the retention job looks for, by age.
CREATE INDEX login_codes_expires ON login_codes (expires_at);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);
CREATE INDEX oauth_states_expires ON oauth_states (expires_at);
CREATE INDEX marketplace_requests_created ON marketplace_requests (created_at);

-- dialect: sqlite
DROP TRIGGER audit_log_no_delete;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN OLD.seq > (SELECT seq FROM audit_cut WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_cut_forward BEFORE UPDATE ON audit_cut
WHEN NEW.seq < OLD.seq
    OR NEW.hash IS NOT (SELECT hash FROM audit_log WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'the audit cut only moves forward, to an entry of the chain'); END;
CREATE TRIGGER audit_cut_no_delete BEFORE DELETE ON audit_cut
BEGIN SELECT RAISE(ABORT, 'the audit cut stays'); END;

-- dialect: postgres
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.seq <= (SELECT seq FROM audit_cut WHERE id = 1) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE FUNCTION audit_cut_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'the audit cut stays';
    END IF;
    IF NEW.seq < OLD.seq
        OR NEW.hash IS DISTINCT FROM (SELECT hash FROM audit_log WHERE seq = NEW.seq) THEN
        RAISE EXCEPTION 'the audit cut only moves forward, to an entry of the chain';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_cut_forward BEFORE UPDATE OR DELETE ON audit_cut
FOR EACH ROW EXECUTE FUNCTION audit_cut_forward();
