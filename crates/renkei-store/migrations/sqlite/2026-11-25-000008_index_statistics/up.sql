-- PostgreSQL-only (extended statistics for the search index tables); SQLite has no
-- equivalent and plans the search queries from the index subqueries without them. Kept so the
-- two migration lists have the same names.
SELECT 1;
