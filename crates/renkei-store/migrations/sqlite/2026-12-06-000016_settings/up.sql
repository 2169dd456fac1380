-- Facts about how the database's contents were built, one row per key. The first is
-- `index_time_zone`: the zone in which search-index rows read dates and times written without
-- one (`time_zone`, CONFIGURATION.md). Rows built under one zone are wrong under another, so
-- the server compares it with its configured zone at start-up. No row: a database from before
-- the setting, whose rows were built in UTC.
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
