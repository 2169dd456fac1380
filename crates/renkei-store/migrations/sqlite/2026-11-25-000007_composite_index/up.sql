-- Composite search index: one row per element a composite parameter selects (e.g. an
-- Observation or one of its components for code-value-quantity / component-code-value-quantity)
-- and per combination of its components' values, so the components of a search value match
-- within the same element. Also holds `identifier:of-type` (type coding, identifier value).
-- Slot n (p1..p3) holds component n: tokens in system/code; quantities in num with the unit in
-- system/code; numbers in num; dates in low/high; strings folded in code; references as
-- target type in system and id (or URL) in code. Rows change with the resource, in the same
-- transaction as the write.
CREATE TABLE idx_composite (
    rid        BIGINT NOT NULL REFERENCES resources (rid),
    res_type   TEXT   NOT NULL,
    param      TEXT   NOT NULL,
    p1_system  TEXT,
    p1_code    TEXT,
    p1_num     DOUBLE PRECISION,
    p1_low     BIGINT,
    p1_high    BIGINT,
    p2_system  TEXT,
    p2_code    TEXT,
    p2_num     DOUBLE PRECISION,
    p2_low     BIGINT,
    p2_high    BIGINT,
    p3_system  TEXT,
    p3_code    TEXT,
    p3_num     DOUBLE PRECISION,
    p3_low     BIGINT,
    p3_high    BIGINT
);
CREATE INDEX idx_composite_lookup ON idx_composite (res_type, param, p1_code, p1_system, p2_num);
CREATE INDEX idx_composite_rid ON idx_composite (rid);
