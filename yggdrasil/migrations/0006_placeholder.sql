-- PLACEHOLDER on branch i14-payouts only, so that 0008 applies here (migrations are numbered
-- without gaps). The integrator deletes this file when merging the real 0006 migration.
SELECT 1;
