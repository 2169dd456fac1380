DROP TABLE consent_rules;
ALTER TABLE resources DROP COLUMN clinical_date;
