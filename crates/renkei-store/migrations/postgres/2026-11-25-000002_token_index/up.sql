-- Token search index (identifier, code, status, ...). Rows of a resource are replaced on
-- every write of it and removed on delete, in the same transaction as the write.
CREATE TABLE idx_token (
    rid       BIGINT NOT NULL REFERENCES resources (rid),
    res_type  TEXT   NOT NULL,
    param     TEXT   NOT NULL,
    system    TEXT,
    code      TEXT,
    text      TEXT
);
CREATE INDEX idx_token_lookup ON idx_token (res_type, param, code, system);
CREATE INDEX idx_token_rid ON idx_token (rid);
