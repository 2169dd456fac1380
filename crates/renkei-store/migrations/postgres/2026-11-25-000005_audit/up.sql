-- The audit trail: append-only, hash-chained. The store has no code path that updates or
-- deletes these rows; `renkei audit verify` detects any change made behind its back.
CREATE TABLE audit_events (
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
CREATE INDEX audit_events_recorded ON audit_events (recorded);
CREATE INDEX audit_events_agent_org ON audit_events (agent_org, recorded);

-- What each event touched: kind 'patient' (Patient/id), 'entity' (Type/id) or 'custodian'
-- (Organization/id owning the data), for "who viewed my record" and facility views.
CREATE TABLE audit_refs (
    seq   BIGINT NOT NULL REFERENCES audit_events (seq),
    kind  TEXT   NOT NULL,
    ref   TEXT   NOT NULL
);
CREATE INDEX audit_refs_lookup ON audit_refs (kind, ref, seq);

-- The chain head, kept beside the chain so truncation at the end is detectable.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT  NOT NULL,
    hash  TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
