-- A job's workers are stored zstd-compressed (the same JSON array as `workers`): a fan-out
-- to 1,000 workers with similar output is about 140 KB of JSON and a few KB compressed,
-- which is what the database, its log and the page cache then write. Rows stored before
-- keep their text in `workers` (and NULL here); new rows leave `workers` at '[]'.
ALTER TABLE jobs ADD COLUMN workers_zstd BYTEA;
