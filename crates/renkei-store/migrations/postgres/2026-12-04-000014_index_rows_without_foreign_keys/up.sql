-- Index rows and audit references are written by the store in the same transaction as the row
-- they point to, and neither `resources` nor `audit_events` rows are ever deleted, so these
-- foreign keys could never fail. PostgreSQL still checked each one: an internal trigger ran a
-- `SELECT … FOR KEY SHARE` on the parent for every inserted row, about 30 per stored resource
-- and 3 per AuditEvent. Measured in docs/BENCHMARKS.md ("PostgreSQL without foreign keys on
-- derived rows"). The keys on `resource_history` and `consent_rules` stay: one row per write.
ALTER TABLE idx_token DROP CONSTRAINT IF EXISTS idx_token_rid_fkey;
ALTER TABLE idx_string DROP CONSTRAINT IF EXISTS idx_string_rid_fkey;
ALTER TABLE idx_date DROP CONSTRAINT IF EXISTS idx_date_rid_fkey;
ALTER TABLE idx_reference DROP CONSTRAINT IF EXISTS idx_reference_rid_fkey;
ALTER TABLE idx_quantity DROP CONSTRAINT IF EXISTS idx_quantity_rid_fkey;
ALTER TABLE idx_number DROP CONSTRAINT IF EXISTS idx_number_rid_fkey;
ALTER TABLE idx_uri DROP CONSTRAINT IF EXISTS idx_uri_rid_fkey;
ALTER TABLE idx_composite DROP CONSTRAINT IF EXISTS idx_composite_rid_fkey;
ALTER TABLE audit_refs DROP CONSTRAINT IF EXISTS audit_refs_seq_fkey;
