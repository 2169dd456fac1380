ALTER TABLE resources DROP COLUMN clinical_end;
