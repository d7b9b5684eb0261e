-- Never edit an applied migration: add a new one.
-- Timestamps are unix milliseconds (INTEGER), portable between SQLite and PostgreSQL.
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO meta (id, revision) VALUES (1, 0);

CREATE TABLE teams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    max_workers INTEGER,
    max_services INTEGER,
    max_triggers INTEGER,
    max_users INTEGER,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    operator BOOLEAN NOT NULL DEFAULT FALSE,
    created INTEGER NOT NULL
);

CREATE TABLE members (
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (team_id, user_id)
);

CREATE TABLE workers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    identity TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    token_sha256 TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'DISCONNECTED',
    last_seen INTEGER,
    owner TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    UNIQUE (team_id, identity)
);

CREATE TABLE services (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    algorithm TEXT NOT NULL,
    timeout_ms INTEGER NOT NULL,
    visibility TEXT NOT NULL,
    batch INTEGER,
    stop_on_failure BOOLEAN NOT NULL,
    retry BOOLEAN NOT NULL,
    owner TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    UNIQUE (team_id, name)
);

CREATE TABLE service_workers (
    service_id INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    worker_id INTEGER NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    PRIMARY KEY (service_id, worker_id)
);

CREATE TABLE directories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (team_id, name)
);

CREATE TABLE triggers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    directory_id INTEGER NOT NULL REFERENCES directories(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    plugin TEXT NOT NULL,
    service TEXT NOT NULL,
    args TEXT NOT NULL,
    timeout_ms INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    split TEXT NOT NULL,
    visibility TEXT NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    UNIQUE (directory_id, name)
);
