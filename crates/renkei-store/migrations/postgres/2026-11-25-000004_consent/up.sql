-- Consent compiled into flat rules (crate renkei-consent), rewritten with the Consent in the
-- same transaction, so every query sees the consent state of its own snapshot.
CREATE TABLE consent_rules (
    consent_rid        BIGINT NOT NULL REFERENCES resources (rid),
    consent_ref        TEXT   NOT NULL,
    patient_id         TEXT   NOT NULL,
    permit             BOOLEAN NOT NULL,
    nested             BOOLEAN NOT NULL,
    actor_org          TEXT,
    actor_practitioner TEXT,
    purpose            TEXT,
    valid_from         BIGINT,
    valid_to           BIGINT,
    class_type         TEXT,
    label_system       TEXT,
    label_code         TEXT,
    data_from          BIGINT,
    data_to            BIGINT,
    data_reference     TEXT,
    data_related       TEXT,
    data_custodian     TEXT
);
CREATE INDEX consent_rules_patient ON consent_rules (patient_id, permit);
CREATE INDEX consent_rules_consent ON consent_rules (consent_rid);

-- The date that a consent's dataPeriod is compared with (effective/authored/recorded date).
ALTER TABLE resources ADD COLUMN clinical_date BIGINT;
