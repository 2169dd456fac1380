-- The end of the care period a record covers (an Encounter's `period.end`; the largest
-- integer for a period still open), beside `clinical_date`, its start. NULL for a record of
-- one point in time. `$everything?start=…&end=…` selects the records whose care overlaps the
-- range. `renkei reindex` fills it for records stored before.
ALTER TABLE resources ADD COLUMN clinical_end BIGINT;
