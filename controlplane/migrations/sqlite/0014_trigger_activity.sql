-- Trigger activity (issue 28): the fs module's requests, one per write (or per line), are
-- counted per trigger, minute and status instead of being a job each; a request that did not
-- end `ok` is a job, naming its trigger. Each count row is one broker shard's (`source`)
-- count so far of its minute, replaced by its next report; a list sums them. Pruned with the
-- jobs (--job-retention).
ALTER TABLE jobs ADD COLUMN trigger_path TEXT;
CREATE INDEX jobs_team_trigger ON jobs (team_id, trigger_path, id);
CREATE TABLE trigger_minutes (
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    trigger_path TEXT NOT NULL,
    minute INTEGER NOT NULL,
    source TEXT NOT NULL,
    identity TEXT NOT NULL,
    service TEXT NOT NULL,
    readers TEXT NOT NULL,
    ok INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    timed_out INTEGER NOT NULL,
    lost INTEGER NOT NULL,
    cancelled INTEGER NOT NULL,
    PRIMARY KEY (team_id, trigger_path, minute, source, identity, service, readers)
);
CREATE INDEX trigger_minutes_minute ON trigger_minutes (minute);
