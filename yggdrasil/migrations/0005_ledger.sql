-- Placeholder on the i14-payments branch only: number 0005 belongs to the ledger (i14-ledger),
-- whose file of this name replaces this one when the branches meet. Migrations are numbered
-- without gaps, so 0006 needs a 0005 to apply.
-- dialect: all
SELECT 1;
