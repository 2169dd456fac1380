-- Patient identity across facilities (crate renkei-identity decides, the repository keeps these
-- in step with every Patient write in the same transaction).

-- The link keys of each current Patient record: records sharing a key are one person.
CREATE TABLE patient_link_keys (
    patient_id TEXT NOT NULL,
    link_key   TEXT NOT NULL,
    PRIMARY KEY (patient_id, link_key)
);
CREATE INDEX patient_link_keys_key ON patient_link_keys (link_key);

-- Administrators' decisions about a pair of records: link them (linked = true) or keep them
-- apart although their keys agree (linked = false). Pairs are stored with patient_a < patient_b.
CREATE TABLE patient_link_overrides (
    patient_a  TEXT    NOT NULL,
    patient_b  TEXT    NOT NULL,
    linked     BOOLEAN NOT NULL,
    reason     TEXT    NOT NULL,
    decided_by TEXT    NOT NULL,
    decided_at BIGINT  NOT NULL,
    PRIMARY KEY (patient_a, patient_b)
);
CREATE INDEX patient_link_overrides_b ON patient_link_overrides (patient_b);

-- The persons: one row per Patient record linked to at least one other record; person_id is
-- the smallest member id. Consent of any member applies to every member's data.
CREATE TABLE patient_person (
    patient_id TEXT NOT NULL PRIMARY KEY,
    person_id  TEXT NOT NULL
);
CREATE INDEX patient_person_person ON patient_person (person_id);
