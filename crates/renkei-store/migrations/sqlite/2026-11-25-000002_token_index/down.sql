DROP TABLE idx_token;
