DROP TABLE patient_person;
DROP TABLE patient_link_overrides;
DROP TABLE patient_link_keys;
