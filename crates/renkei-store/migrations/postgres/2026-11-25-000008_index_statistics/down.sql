DROP STATISTICS IF EXISTS idx_token_stats;
DROP STATISTICS IF EXISTS idx_token_system_stats;
DROP STATISTICS IF EXISTS idx_reference_stats;
DROP STATISTICS IF EXISTS idx_string_stats;
DROP STATISTICS IF EXISTS idx_composite_stats;
