CREATE TABLE audit_events_wide (
    seq          BIGINT  PRIMARY KEY,
    event_id     TEXT    NOT NULL UNIQUE,
    recorded     BIGINT  NOT NULL,
    request_id   TEXT    NOT NULL,
    type_code    TEXT    NOT NULL,
    subtype      TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    agent_client TEXT,
    agent_org    TEXT,
    agent_user   TEXT,
    purpose      TEXT,
    body         TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL
);
INSERT INTO audit_events_wide SELECT * FROM audit_events ORDER BY seq;
CREATE TABLE audit_refs_wide (
    seq   BIGINT NOT NULL REFERENCES audit_events (seq),
    kind  TEXT   NOT NULL,
    ref   TEXT   NOT NULL
);
INSERT INTO audit_refs_wide (seq, kind, ref) SELECT seq, kind, ref FROM audit_refs;
DROP TABLE audit_refs;
DROP TABLE audit_events;
ALTER TABLE audit_events_wide RENAME TO audit_events;
ALTER TABLE audit_refs_wide RENAME TO audit_refs;
CREATE INDEX audit_events_recorded ON audit_events (recorded);
CREATE INDEX audit_events_agent_org ON audit_events (agent_org, recorded);
CREATE INDEX audit_refs_lookup ON audit_refs (kind, ref, seq);
