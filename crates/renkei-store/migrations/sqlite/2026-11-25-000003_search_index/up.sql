-- Search index tables, one per parameter type. Rows of a resource are replaced on every write
-- of it and removed on delete, in the same transaction as the write (see idx_token in
-- 2026-11-25-000002, whose `text` column holds the folded display text for :text).
CREATE TABLE idx_string (
    rid          BIGINT NOT NULL REFERENCES resources (rid),
    res_type     TEXT   NOT NULL,
    param        TEXT   NOT NULL,
    value_norm   TEXT NOT NULL,
    value_exact  TEXT   NOT NULL
);
CREATE INDEX idx_string_lookup ON idx_string (res_type, param, value_norm);
CREATE INDEX idx_string_rid ON idx_string (rid);

CREATE TABLE idx_date (
    rid       BIGINT NOT NULL REFERENCES resources (rid),
    res_type  TEXT   NOT NULL,
    param     TEXT   NOT NULL,
    low       BIGINT NOT NULL,
    high      BIGINT NOT NULL
);
CREATE INDEX idx_date_lookup ON idx_date (res_type, param, low, high);
CREATE INDEX idx_date_rid ON idx_date (rid, param);

CREATE TABLE idx_reference (
    rid          BIGINT NOT NULL REFERENCES resources (rid),
    res_type     TEXT   NOT NULL,
    param        TEXT   NOT NULL,
    target_type  TEXT,
    target_id    TEXT,
    url          TEXT
);
CREATE INDEX idx_reference_lookup ON idx_reference (res_type, param, target_id, target_type);
CREATE INDEX idx_reference_target ON idx_reference (target_id, target_type);
CREATE INDEX idx_reference_url ON idx_reference (res_type, param, url);
CREATE INDEX idx_reference_rid ON idx_reference (rid, param);

CREATE TABLE idx_quantity (
    rid       BIGINT NOT NULL REFERENCES resources (rid),
    res_type  TEXT   NOT NULL,
    param     TEXT   NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    system    TEXT,
    code      TEXT
);
CREATE INDEX idx_quantity_lookup ON idx_quantity (res_type, param, code, value);
CREATE INDEX idx_quantity_rid ON idx_quantity (rid);

CREATE TABLE idx_number (
    rid       BIGINT NOT NULL REFERENCES resources (rid),
    res_type  TEXT   NOT NULL,
    param     TEXT   NOT NULL,
    value     DOUBLE PRECISION NOT NULL
);
CREATE INDEX idx_number_lookup ON idx_number (res_type, param, value);
CREATE INDEX idx_number_rid ON idx_number (rid);

CREATE TABLE idx_uri (
    rid       BIGINT NOT NULL REFERENCES resources (rid),
    res_type  TEXT   NOT NULL,
    param     TEXT   NOT NULL,
    value     TEXT NOT NULL
);
CREATE INDEX idx_uri_lookup ON idx_uri (res_type, param, value);
CREATE INDEX idx_uri_rid ON idx_uri (rid);

CREATE INDEX idx_token_system ON idx_token (res_type, param, system, code);
