-- E-mail codes remember which client asked for them (its address; an IPv6 client's /64), so that
-- the budget of codes per address is counted per client and in total separately: one client
-- using up its budget does not lock the address's owner out. The existing index
-- login_codes (email, created_at) serves both counts.
ALTER TABLE login_codes ADD COLUMN source TEXT NOT NULL DEFAULT '';
