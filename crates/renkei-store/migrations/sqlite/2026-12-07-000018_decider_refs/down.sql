DELETE FROM audit_refs WHERE kind = 'entity' AND EXISTS (
    SELECT 1 FROM audit_events e
    WHERE e.seq = audit_refs.seq AND e.body LIKE '%"decided_by"%' AND json_valid(e.body)
      AND json_extract(e.body, '$.event.decided_by') = audit_refs.ref);
