DROP INDEX idx_reference_url;
CREATE INDEX idx_reference_url ON idx_reference (res_type, param, url);
