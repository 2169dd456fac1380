DROP TABLE audit_head;
DROP TABLE audit_refs;
DROP TABLE audit_events;
