-- Index rows are written by the store in the same transaction as the `resources` row they
-- point to, and `resources` rows are never deleted (a delete keeps the row as a tombstone), so
-- these foreign keys could never fail. SQLite still checked each one: a lookup of the parent
-- row for every inserted index row, about 12 per stored resource. Without them a load of the
-- 98k benchmark set took 7 to 14 % less time (docs/BENCHMARKS.md, "SQLite index rows without
-- foreign keys"). PostgreSQL dropped the same keys in 2026-12-04-000014. SQLite cannot drop a
-- constraint, so each table is rebuilt with the same columns, rows and indexes. The keys on
-- `resource_history` and `consent_rules` stay: one row per write.

CREATE TABLE idx_token_rebuilt (
    rid       BIGINT NOT NULL,
    res_type  TEXT   NOT NULL,
    param     TEXT   NOT NULL,
    system    TEXT,
    code      TEXT,
    text      TEXT
);
INSERT INTO idx_token_rebuilt SELECT * FROM idx_token;
DROP TABLE idx_token;
ALTER TABLE idx_token_rebuilt RENAME TO idx_token;
CREATE INDEX idx_token_lookup ON idx_token (res_type, param, code, system);
CREATE INDEX idx_token_rid ON idx_token (rid, param, code, system);

CREATE TABLE idx_string_rebuilt (
    rid          BIGINT NOT NULL,
    res_type     TEXT   NOT NULL,
    param        TEXT   NOT NULL,
    value_norm   TEXT NOT NULL,
    value_exact  TEXT   NOT NULL
);
INSERT INTO idx_string_rebuilt SELECT * FROM idx_string;
DROP TABLE idx_string;
ALTER TABLE idx_string_rebuilt RENAME TO idx_string;
CREATE INDEX idx_string_lookup ON idx_string (res_type, param, value_norm);
CREATE INDEX idx_string_rid ON idx_string (rid);

CREATE TABLE idx_date_rebuilt (
    rid       BIGINT NOT NULL,
    res_type  TEXT   NOT NULL,
    param     TEXT   NOT NULL,
    low       BIGINT NOT NULL,
    high      BIGINT NOT NULL
);
INSERT INTO idx_date_rebuilt SELECT * FROM idx_date;
DROP TABLE idx_date;
ALTER TABLE idx_date_rebuilt RENAME TO idx_date;
CREATE INDEX idx_date_lookup ON idx_date (res_type, param, low, high);
CREATE INDEX idx_date_rid ON idx_date (rid, param);

CREATE TABLE idx_reference_rebuilt (
    rid          BIGINT NOT NULL,
    res_type     TEXT   NOT NULL,
    param        TEXT   NOT NULL,
    target_type  TEXT,
    target_id    TEXT,
    url          TEXT
);
INSERT INTO idx_reference_rebuilt SELECT * FROM idx_reference;
DROP TABLE idx_reference;
ALTER TABLE idx_reference_rebuilt RENAME TO idx_reference;
CREATE INDEX idx_reference_lookup ON idx_reference (res_type, param, target_id, target_type);
CREATE INDEX idx_reference_target ON idx_reference (target_id, target_type);
CREATE INDEX idx_reference_url ON idx_reference (res_type, param, url) WHERE url IS NOT NULL;
CREATE INDEX idx_reference_rid ON idx_reference (rid, param);

CREATE TABLE idx_quantity_rebuilt (
    rid       BIGINT NOT NULL,
    res_type  TEXT   NOT NULL,
    param     TEXT   NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    system    TEXT,
    code      TEXT
);
INSERT INTO idx_quantity_rebuilt SELECT * FROM idx_quantity;
DROP TABLE idx_quantity;
ALTER TABLE idx_quantity_rebuilt RENAME TO idx_quantity;
CREATE INDEX idx_quantity_lookup ON idx_quantity (res_type, param, code, value);
CREATE INDEX idx_quantity_rid ON idx_quantity (rid);

CREATE TABLE idx_number_rebuilt (
    rid       BIGINT NOT NULL,
    res_type  TEXT   NOT NULL,
    param     TEXT   NOT NULL,
    value     DOUBLE PRECISION NOT NULL
);
INSERT INTO idx_number_rebuilt SELECT * FROM idx_number;
DROP TABLE idx_number;
ALTER TABLE idx_number_rebuilt RENAME TO idx_number;
CREATE INDEX idx_number_lookup ON idx_number (res_type, param, value);
CREATE INDEX idx_number_rid ON idx_number (rid);

CREATE TABLE idx_uri_rebuilt (
    rid       BIGINT NOT NULL,
    res_type  TEXT   NOT NULL,
    param     TEXT   NOT NULL,
    value     TEXT NOT NULL
);
INSERT INTO idx_uri_rebuilt SELECT * FROM idx_uri;
DROP TABLE idx_uri;
ALTER TABLE idx_uri_rebuilt RENAME TO idx_uri;
CREATE INDEX idx_uri_lookup ON idx_uri (res_type, param, value);
CREATE INDEX idx_uri_rid ON idx_uri (rid);

CREATE TABLE idx_composite_rebuilt (
    rid        BIGINT NOT NULL,
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
INSERT INTO idx_composite_rebuilt SELECT * FROM idx_composite;
DROP TABLE idx_composite;
ALTER TABLE idx_composite_rebuilt RENAME TO idx_composite;
CREATE INDEX idx_composite_lookup ON idx_composite (res_type, param, p1_code, p1_system, p2_num);
CREATE INDEX idx_composite_rid ON idx_composite (rid);
