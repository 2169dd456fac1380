CREATE INDEX idx_token_system ON idx_token (res_type, param, system, code);
