-- Current version of every logical resource (one row per type/id, kept after delete).
CREATE TABLE resources (
    rid           BIGSERIAL PRIMARY KEY,
    res_type      TEXT    NOT NULL,
    res_id        TEXT    NOT NULL,
    version       BIGINT  NOT NULL,
    last_updated  BIGINT  NOT NULL,
    method        TEXT    NOT NULL,
    deleted       BOOLEAN NOT NULL,
    custodian     TEXT,
    patient_id    TEXT,
    body          TEXT,
    UNIQUE (res_type, res_id)
);
CREATE INDEX resources_type_updated ON resources (res_type, last_updated);
CREATE INDEX resources_type_rid ON resources (res_type, rid);
CREATE INDEX resources_updated ON resources (last_updated);
CREATE INDEX resources_patient ON resources (patient_id);

-- Superseded versions only; the current version lives in `resources`.
CREATE TABLE resource_history (
    rid           BIGINT  NOT NULL REFERENCES resources (rid),
    version       BIGINT  NOT NULL,
    last_updated  BIGINT  NOT NULL,
    method        TEXT    NOT NULL,
    deleted       BOOLEAN NOT NULL,
    body          TEXT,
    PRIMARY KEY (rid, version)
);
CREATE INDEX resource_history_updated ON resource_history (last_updated);
