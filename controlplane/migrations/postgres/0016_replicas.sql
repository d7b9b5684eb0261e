-- Control-plane replicas on one database share their secrets: the JWT signing key (a token
-- issued by one is accepted by every replica and every broker) and the brokers' token. The
-- first replica to start stores its data dir's; every other takes them from here.
CREATE TABLE cluster_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

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
