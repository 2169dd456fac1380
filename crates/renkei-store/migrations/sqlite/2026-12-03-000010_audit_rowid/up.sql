-- The read audit is the busiest writer: its rows should cost as few B-trees as possible.
-- audit_events: `seq` becomes the rowid (BIGINT PRIMARY KEY had kept a separate index beside
-- the table). audit_refs: the (kind, ref, seq) key is the table itself (WITHOUT ROWID) instead
-- of a table plus an index holding the same columns. Rows, hashes and the head are unchanged,
-- so `renkei audit verify` gives the same verdict and head hash before and after.
CREATE TABLE audit_events_compact (
    seq          INTEGER PRIMARY KEY,
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
INSERT INTO audit_events_compact
SELECT seq, event_id, recorded, request_id, type_code, subtype, action, outcome, agent_client,
       agent_org, agent_user, purpose, body, prev_hash, hash
FROM audit_events ORDER BY seq;

CREATE TABLE audit_refs_compact (
    kind  TEXT    NOT NULL,
    ref   TEXT    NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (kind, ref, seq)
) WITHOUT ROWID;
INSERT OR IGNORE INTO audit_refs_compact (kind, ref, seq) SELECT kind, ref, seq FROM audit_refs;

DROP TABLE audit_refs;
DROP TABLE audit_events;
ALTER TABLE audit_events_compact RENAME TO audit_events;
ALTER TABLE audit_refs_compact RENAME TO audit_refs;
CREATE INDEX audit_events_recorded ON audit_events (recorded);
CREATE INDEX audit_events_agent_org ON audit_events (agent_org, recorded);
