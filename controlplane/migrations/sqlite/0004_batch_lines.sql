-- The fs module: the most complete lines one request of a `split = "lines"` trigger carries
-- (1: one request per line).
ALTER TABLE triggers ADD COLUMN batch_lines INTEGER NOT NULL DEFAULT 1000;
