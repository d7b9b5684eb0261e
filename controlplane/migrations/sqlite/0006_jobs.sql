-- Job history: every request through a service, as the broker reported it when it ended
-- (POST /api/v1/broker/jobs), kept for --job-retention. Not configuration: no revision.
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    -- The broker's key of the record: a batch delivered twice is stored once, and the parts
    -- of a large record are merged.
    report_key TEXT NOT NULL UNIQUE,
    identity TEXT NOT NULL,
    service TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    plugin TEXT NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    started INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    n_workers INTEGER NOT NULL,
    n_ok INTEGER NOT NULL
);
CREATE INDEX jobs_team_started ON jobs (team_id, started, id);
CREATE INDEX jobs_started ON jobs (started);
CREATE TABLE job_workers (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    worker TEXT NOT NULL,
    outcome TEXT NOT NULL,
    exit_code INTEGER,
    duration_ms INTEGER NOT NULL,
    output TEXT NOT NULL,
    truncated BOOLEAN NOT NULL,
    PRIMARY KEY (job_id, worker)
);
