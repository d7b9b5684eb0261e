-- Schedules (issue 29): a request on a timetable, started by the control plane as its owner.
-- `request` is the gateway's request body as JSON; `next_due` the next due time not handled
-- yet (ms), so a restart neither repeats nor forgets a run. Runs are not configuration.
CREATE TABLE schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    service TEXT NOT NULL,
    request TEXT NOT NULL,
    every_ms INTEGER,
    jitter_ms INTEGER NOT NULL,
    cron TEXT,
    time_zone TEXT,
    concurrency TEXT NOT NULL,
    starting_deadline_ms INTEGER,
    paused BOOLEAN NOT NULL,
    reason TEXT,
    visibility TEXT NOT NULL,
    owner TEXT NOT NULL,
    next_due INTEGER NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    UNIQUE (team_id, name)
);
CREATE INDEX schedules_due ON schedules (paused, next_due);
-- One row per run: `tag` is what its request carries to its job record; `expires` when a
-- run still `running` is taken for lost (its control plane died).
CREATE TABLE schedule_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule_id INTEGER NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
    tag TEXT NOT NULL UNIQUE,
    scheduled INTEGER NOT NULL,
    started INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    cancel BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX schedule_runs_schedule ON schedule_runs (schedule_id, id);
ALTER TABLE jobs ADD COLUMN schedule TEXT;
ALTER TABLE jobs ADD COLUMN scheduled INTEGER;
CREATE INDEX jobs_team_schedule ON jobs (team_id, schedule, id);
