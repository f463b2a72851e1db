-- Placeholder on the i14-subs branch only: number 0005 belongs to the ledger (i14-ledger), whose
-- file of this name replaces this one when the branches meet. Migrations are numbered without
-- gaps, so 0007 needs a 0005 to apply.
-- dialect: all
SELECT 1;
