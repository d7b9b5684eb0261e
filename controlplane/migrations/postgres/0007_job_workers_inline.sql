-- A job's workers live in the job's row, as one JSON array (proto::job::JobWorker each, in
-- the order reported), instead of a row each in job_workers: a fan-out to 1,000 workers is
-- one row to write, not 1,000 rows and their index, and nothing reads one worker alone.
-- TEXT, not JSONB: the array is written and read whole, never queried inside.
ALTER TABLE jobs ADD COLUMN workers TEXT NOT NULL DEFAULT '[]';
UPDATE jobs SET workers = COALESCE((
    SELECT json_agg(json_build_object(
        'worker', worker, 'outcome', outcome, 'exit_code', exit_code,
        'duration_ms', duration_ms, 'output', output, 'truncated', truncated)
        ORDER BY position)::text
    FROM job_workers WHERE job_workers.job_id = jobs.id), '[]');
DROP TABLE job_workers;
