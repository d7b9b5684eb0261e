-- A cell's broker nodes: each registers and heartbeats (`PUT /api/v1/broker/nodes/{node}`,
-- `node` a UUID it picks at start); one unseen for the lease (`--node-lease`) is swept with
-- its links. `last_seen` and `started` are milliseconds since the Unix epoch; `clients` and
-- `workers` the connections it has open, as its last heartbeat said.
CREATE TABLE broker_nodes (
    node TEXT PRIMARY KEY,
    advertise TEXT NOT NULL,
    started INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    clients INTEGER NOT NULL,
    workers INTEGER NOT NULL
);

-- Which nodes each worker is connected to (reports with `node`): a worker is ONLINE while a
-- live node links it. `since`: when that node reported it online.
CREATE TABLE worker_links (
    node TEXT NOT NULL REFERENCES broker_nodes(node) ON DELETE CASCADE,
    worker_id INTEGER NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
    since INTEGER NOT NULL,
    PRIMARY KEY (node, worker_id)
);
CREATE INDEX worker_links_worker ON worker_links (worker_id);
