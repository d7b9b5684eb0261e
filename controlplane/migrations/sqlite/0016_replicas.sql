-- The tables of guesses as on PostgreSQL (one code path counts them on both; the secrets
-- replicas share are PostgreSQL's only: on SQLite there is one process).

-- Wrong secrets, counted in the store so that every replica counts the same: a lock per
-- (client address, identity), and per identity the shared budget of addresses that guessed
-- wrong (GCRA: the theoretical arrival time `tat`, in ms). Pruned above 10,000 rows.
CREATE TABLE login_lockouts (
    address TEXT NOT NULL,
    identity TEXT NOT NULL,
    failures BIGINT NOT NULL DEFAULT 0,
    locks BIGINT NOT NULL DEFAULT 0,
    until_ms BIGINT NOT NULL DEFAULT 0,
    locked_after BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (address, identity)
);
CREATE TABLE login_budgets (
    identity TEXT PRIMARY KEY,
    tat BIGINT NOT NULL
);
