-- Placeholder on the i14-subs branch only: number 0006 belongs to the payments (i14-payments), whose
-- file of this name replaces this one when the branches meet. Migrations are numbered without
-- gaps, so 0007 needs a 0006 to apply.
-- dialect: all
SELECT 1;
