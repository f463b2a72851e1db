-- Global locks (the locks room): each network's fencing-token sequence and its live grants.
-- Times are integer milliseconds since the Unix epoch.

-- One counter per network: every grant takes the next value, in the transaction that writes the
-- grant, so a lock's fencing tokens only grow, across restarts and across instances.
CREATE TABLE lock_sequences (
    network_id TEXT PRIMARY KEY REFERENCES networks (network_id) ON DELETE CASCADE,
    last_token BIGINT NOT NULL
);

-- At most one grant per lock. A row whose lease has ended is no grant: the next one replaces it
-- only then (compare-and-set on expires_at), whichever instance writes it.
CREATE TABLE lock_grants (
    network_id TEXT NOT NULL REFERENCES networks (network_id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    priority INTEGER NOT NULL,
    granted_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (network_id, name)
);
