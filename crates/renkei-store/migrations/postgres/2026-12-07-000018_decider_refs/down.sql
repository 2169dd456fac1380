DELETE FROM audit_refs WHERE kind = 'entity' AND EXISTS (
    SELECT 1 FROM audit_events e
    WHERE e.seq = audit_refs.seq AND e.body LIKE '%"decided_by"%'
      AND CAST(e.body AS jsonb) -> 'event' ->> 'decided_by' = audit_refs.ref);
