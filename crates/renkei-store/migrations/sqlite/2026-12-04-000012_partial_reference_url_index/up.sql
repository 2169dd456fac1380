-- Only absolute references (another server's URL) have a `url`; relative ones, nearly every
-- row, leave it NULL. A search by URL (`url = ?`) implies `url IS NOT NULL`, so a partial
-- index answers it, and the other reference rows no longer pay for an index entry each.
DROP INDEX idx_reference_url;
CREATE INDEX idx_reference_url ON idx_reference (res_type, param, url) WHERE url IS NOT NULL;
