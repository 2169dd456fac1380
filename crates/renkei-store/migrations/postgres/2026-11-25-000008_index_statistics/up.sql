-- PostgreSQL planner statistics for the search index tables.
-- Extended statistics: the planner otherwise multiplies the selectivities of res_type, param and
-- the value as if independent, underestimates a common value such as ImagingStudy modality=CT
-- (4 estimated, 1000 real) and starts the query from it instead of from the patient's 8 rows.
-- With functional dependencies and MCV lists it drives from the selective parameter.
CREATE STATISTICS idx_token_stats (dependencies, mcv) ON res_type, param, code FROM idx_token;
CREATE STATISTICS idx_token_system_stats (dependencies, mcv) ON res_type, param, system FROM idx_token;
CREATE STATISTICS idx_reference_stats (dependencies, mcv) ON res_type, param, target_id FROM idx_reference;
CREATE STATISTICS idx_string_stats (dependencies, mcv) ON res_type, param, value_norm FROM idx_string;
CREATE STATISTICS idx_composite_stats (dependencies, mcv) ON res_type, param, p1_code FROM idx_composite;
