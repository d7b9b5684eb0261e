-- Never edit an applied migration: add a new one.
-- Timestamps are unix milliseconds (BIGINT), portable between SQLite and PostgreSQL.
CREATE TABLE meta (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO meta (id, revision) VALUES (1, 0);

CREATE TABLE teams (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    max_workers BIGINT,
    max_services BIGINT,
    max_triggers BIGINT,
    max_users BIGINT,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL
);

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    operator BOOLEAN NOT NULL DEFAULT FALSE,
    created BIGINT NOT NULL
);

CREATE TABLE members (
    team_id BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);

CREATE TABLE workers (
    id BIGSERIAL PRIMARY KEY,
    team_id BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    identity TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    token_sha256 TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'DISCONNECTED',
    last_seen BIGINT,
    owner TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    UNIQUE (team_id, identity)
);

CREATE TABLE services (
    id BIGSERIAL PRIMARY KEY,
    team_id BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    algorithm TEXT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    visibility TEXT NOT NULL,
    batch BIGINT,
    stop_on_failure BOOLEAN NOT NULL,
    retry BOOLEAN NOT NULL,
    owner TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    UNIQUE (team_id, name)
);

CREATE TABLE service_workers (
    service_id BIGINT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    worker_id BIGINT NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    PRIMARY KEY (service_id, worker_id)
);

CREATE TABLE directories (
    id BIGSERIAL PRIMARY KEY,
    team_id BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    created BIGINT NOT NULL,
    UNIQUE (team_id, name)
);

CREATE TABLE triggers (
    id BIGSERIAL PRIMARY KEY,
    team_id BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    directory_id BIGINT NOT NULL REFERENCES directories(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    plugin TEXT NOT NULL,
    service TEXT NOT NULL,
    args TEXT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    mode BIGINT NOT NULL,
    split TEXT NOT NULL,
    visibility TEXT NOT NULL,
    hits BIGINT NOT NULL DEFAULT 0,
    owner TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    UNIQUE (directory_id, name)
);
