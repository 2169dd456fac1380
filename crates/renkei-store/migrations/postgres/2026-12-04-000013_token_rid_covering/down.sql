DROP INDEX idx_token_rid;
CREATE INDEX idx_token_rid ON idx_token (rid);
