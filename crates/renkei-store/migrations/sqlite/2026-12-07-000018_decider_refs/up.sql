-- The Consent (or policy URL) that decided an access is searched as an entity of its event
-- (`AuditEvent?entity=Consent/…`). Events recorded before carry it in their hashed body only;
-- this adds the reference row their body implies, as `renkei audit verify` now expects.
INSERT OR IGNORE INTO audit_refs (kind, ref, seq)
SELECT 'entity', d.decider, d.seq
FROM (SELECT seq, json_extract(body, '$.event.decided_by') AS decider
      FROM audit_events
      WHERE body LIKE '%"decided_by"%' AND json_valid(body)) d
WHERE d.decider LIKE '%/%' AND d.decider NOT LIKE '% %';
