-- Searches test a candidate row's token conditions with `EXISTS (… idx_token WHERE rid = r.rid
-- AND param = … AND code = … AND system = …)`, and the consent predicate asks the same of every
-- row held by another facility (the UNDELIVERED privacy tag; security labels of rules). With
-- `idx_token_rid (rid)` each such question read every token row of the resource from the table
-- to test the other columns. Keyed on all four columns the index answers it alone, and it still
-- serves the deletes by `rid`. Measured in docs/BENCHMARKS.md ("Token checks from the index
-- alone"): at 1M resources on SQLite a consented facility's lab trend, prescription, chained
-- and $everything searches took 6–26 % less server CPU per request; the owner's were unchanged.
DROP INDEX idx_token_rid;
CREATE INDEX idx_token_rid ON idx_token (rid, param, code, system);
