-- `(res_type, param, code, system)` (idx_token_lookup) answers `code` and `system|code`
-- alike; the system-first index only served `system|` with no code, which selects a whole
-- code system and is not a selective search. Every token row paid for it on every write.
DROP INDEX idx_token_system;
