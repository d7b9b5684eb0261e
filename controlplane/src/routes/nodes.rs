//! A cell's broker nodes: their heartbeats and goodbyes (`/api/v1/broker/nodes/{node}`, the
//! broker token), the reports of a node (`BrokerReport::node`), the sweep of nodes whose lease
//! ran out, and the list users read (`GET /api/v1/brokers`).
//!
//! Table `broker_nodes` holds every node that heartbeats; `worker_links` which nodes each
//! worker is connected to. A worker is `ONLINE` while a live node (one seen within the lease)
//! links it: when its last link goes (its node reports it gone, leaves, is left out of the
//! node's full report, or is swept), it becomes `DISCONNECTED`. Worker states are not
//! configuration: like every report, none of this bumps the revision or emits an event.

use crate::auth::{AuthUser, BrokerAuth};
use crate::db::{now_ms, on_db, Db};
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;
use api::broker::{BrokerReport, NodeEntry, NodeHeartbeat, NodeList};
use api::brokers::BrokerNodeView;
use api::{ErrorBody, WorkerState};
use axum::extract::State;
use axum::http::StatusCode;
use proto::openapi::NodeId;
use proto::TextEnum;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

/// The most nodes the table holds (a cell has a handful; a broker restarting in a loop adds
/// one per run until the lease sweeps them).
pub(crate) const MAX_NODES: i64 = 256;

/// The oldest `last_seen` (ms) of a live node, now.
pub(crate) fn live_since(lease: Duration) -> i64 {
    now_ms().saturating_sub(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

/// Sets a worker `DISCONNECTED` (`$1`, last seen `$2`) when no live node (seen since `$5`)
/// links it any more; `$3` its id, `$4` `ONLINE`.
const DISCONNECT_IF_UNLINKED: &str = "UPDATE workers SET state = $1, last_seen = $2 \
    WHERE id = $3 AND state = $4 AND NOT EXISTS (SELECT 1 FROM worker_links l \
    JOIN broker_nodes n ON n.node = l.node WHERE l.worker_id = workers.id AND n.last_seen >= $5)";

/// Removes node `$node`'s link to worker `$worker` in transaction `$tx`; the worker becomes
/// `DISCONNECTED` (last seen `$at`) when no live node links it any more.
macro_rules! unlink {
    ($tx:expr, $node:expr, $worker:expr, $at:expr, $since:expr) => {{
        sqlx::query("DELETE FROM worker_links WHERE node = $1 AND worker_id = $2")
            .bind($node)
            .bind($worker)
            .execute(&mut *$tx)
            .await?;
        sqlx::query(DISCONNECT_IF_UNLINKED)
            .bind(WorkerState::Disconnected.as_str())
            .bind($at)
            .bind($worker)
            .bind(WorkerState::Online.as_str())
            .bind($since)
            .execute(&mut *$tx)
            .await?;
    }};
}

/// `FOR NO KEY UPDATE` on PostgreSQL (SQLite's transactions hold the whole file's write lock).
///
/// A worker's row is locked before its links are read: under READ COMMITTED a statement
/// that waited for a row lock still reads other tables as of its start, so a node that
/// unlinked a worker could miss the link another node's report was committing, and set
/// `DISCONNECTED` a worker that node had just linked. Locked first, the later transaction's
/// statements see the earlier one's links. Every transaction locks its workers in id order (no
/// two reports wait for each other in a cycle), and `NO KEY` leaves the key-share locks of
/// foreign-key checks alone: a service created meanwhile (binding those workers) neither waits
/// for a report nor deadlocks with it.
fn locking(db: &Db) -> &'static str {
    match db {
        Db::Postgres(_) => " FOR NO KEY UPDATE",
        Db::Sqlite(_) => "",
    }
}

fn check_node(node: &str) -> Result<(), ApiError> {
    proto::control::check_node_id(node).map_err(ApiError::Unprocessable)
}

/// The milliseconds of a lease, for `NodeList::lease_ms`.
fn lease_ms(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)
}

#[derive(sqlx::FromRow)]
struct LiveRow {
    node: String,
    advertise: String,
}

/// A node's heartbeat: registers it (or keeps it) in the cell; the answer lists the cell's
/// live nodes.
#[utoipa::path(put, path = "/api/v1/broker/nodes/{node}", tag = "broker",
    security(("broker_token" = [])),
    params(("node" = NodeId, Path, description = "The node's id, a UUID it picks when it starts")),
    request_body = NodeHeartbeat,
    responses((status = 200, description = "The node was registered: the cell's live nodes (those seen within the lease; one per address, the latest run's), ordered by address", body = NodeList),
        (status = 201, description = "The node is new to the cell: its first heartbeat, or the first since its lease ran out (its links to workers went with it: the broker sends a full report)", body = NodeList),
        (status = 409, description = "The cell has as many nodes as it may (256, live or not swept yet)", body = ErrorBody),
        (status = 422, description = "A node id that is not a UUID in lower-case hyphenated form, or an `advertise` that is not `host:port` or `tls://host:port`", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    _broker: BrokerAuth,
    Path(node): Path<String>,
    Json(beat): Json<NodeHeartbeat>,
) -> Result<(StatusCode, Json<NodeList>), ApiError> {
    check_node(&node)?;
    proto::control::check_advertise(&beat.advertise).map_err(ApiError::Unprocessable)?;
    let lease = state.settings.node_lease;
    let now = now_ms();
    let started = i64::try_from(beat.started_unix_ms).unwrap_or(i64::MAX);
    let (clients, workers) = (i64::from(beat.clients), i64::from(beat.workers));
    let (created, live) = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let updated = sqlx::query(
            "UPDATE broker_nodes SET advertise = $1, started = $2, last_seen = $3, clients = $4, \
             workers = $5 WHERE node = $6")
            .bind(&beat.advertise).bind(started).bind(now).bind(clients).bind(workers).bind(&node)
            .execute(&mut *tx).await?.rows_affected();
        let created = updated == 0;
        if created {
            let n_nodes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM broker_nodes")
                .fetch_one(&mut *tx).await?;
            if n_nodes >= MAX_NODES {
                return Err(ApiError::Conflict(format!(
                    "the cell has {n_nodes} broker nodes; at most {MAX_NODES} (live or not swept yet)"
                )));
            }
            sqlx::query(
                "INSERT INTO broker_nodes (node, advertise, started, last_seen, clients, workers) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (node) DO UPDATE SET \
                 advertise = excluded.advertise, started = excluded.started, \
                 last_seen = excluded.last_seen, clients = excluded.clients, \
                 workers = excluded.workers")
                .bind(&node).bind(&beat.advertise).bind(started).bind(now).bind(clients)
                .bind(workers).execute(&mut *tx).await?;
        }
        let live: Vec<LiveRow> = sqlx::query_as(
            "SELECT node, advertise FROM broker_nodes WHERE last_seen >= $1 \
             ORDER BY advertise, started DESC, node")
            .bind(live_since(lease)).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        (created, live)
    });
    if created {
        tracing::info!(%node, advertise = %beat.advertise, "a broker node joined the cell");
    }
    // One entry per address: a broker that restarted (a new id, the same address) replaces
    // its earlier run, which stays in the table until its lease runs out.
    let mut seen = HashSet::new();
    let nodes = live
        .into_iter()
        .filter(|row| seen.insert(row.advertise.clone()))
        .map(|row| NodeEntry {
            node: row.node,
            advertise: row.advertise,
        })
        .collect();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(NodeList {
            nodes,
            lease_ms: lease_ms(lease),
        }),
    ))
}

/// A node leaves the cell (a broker that stops): the workers only it connected become
/// `DISCONNECTED`. Leaving twice, or unknown, is no error.
#[utoipa::path(delete, path = "/api/v1/broker/nodes/{node}", tag = "broker",
    security(("broker_token" = [])),
    params(("node" = NodeId, Path, description = "The node's id")),
    responses((status = 204, description = "The node is not in the cell (any more)"),
        (status = 422, description = "A node id that is not a UUID in lower-case hyphenated form", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn leave(
    State(state): State<AppState>,
    _broker: BrokerAuth,
    Path(node): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_node(&node)?;
    let since = live_since(state.settings.node_lease);
    let now = now_ms();
    let lock = format!(
        "SELECT id FROM workers WHERE id IN (SELECT worker_id FROM worker_links WHERE node = $1) \
         ORDER BY id{}",
        locking(&state.db)
    );
    let removed = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let _: Vec<i64> = sqlx::query_scalar(&lock).bind(&node).fetch_all(&mut *tx).await?;
        sqlx::query(
            "UPDATE workers SET state = $1, last_seen = $2 WHERE state = $3 \
             AND id IN (SELECT worker_id FROM worker_links WHERE node = $4) \
             AND NOT EXISTS (SELECT 1 FROM worker_links l JOIN broker_nodes n ON n.node = l.node \
             WHERE l.worker_id = workers.id AND l.node <> $4 AND n.last_seen >= $5)")
            .bind(WorkerState::Disconnected.as_str()).bind(now)
            .bind(WorkerState::Online.as_str()).bind(&node).bind(since)
            .execute(&mut *tx).await?;
        let removed = sqlx::query("DELETE FROM broker_nodes WHERE node = $1")
            .bind(&node).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        removed
    });
    if removed > 0 {
        tracing::info!(%node, "a broker node left the cell");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A report of node `node` (checked): each worker it reports online is linked to it (and
/// `ONLINE`), each it reports gone unlinked; with `full`, its links to workers the report does
/// not list go too. A worker left without a live node's link becomes `DISCONNECTED`. Returns
/// how many reported workers were known.
pub(crate) async fn node_report(
    state: &AppState,
    node: &str,
    report: &BrokerReport,
) -> Result<u64, ApiError> {
    let since = live_since(state.settings.node_lease);
    let now = now_ms();
    let mut updated = 0;
    let find = "SELECT w.id FROM workers w JOIN teams t ON t.id = w.team_id \
                WHERE t.name = $1 AND w.identity = $2";
    // SQLite's transaction already holds the file's write lock: no row to lock.
    let lock = matches!(state.db, Db::Postgres(_))
        .then(|| format!("SELECT id FROM workers WHERE id = $1{}", locking(&state.db)));
    on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let known: Option<i64> =
            sqlx::query_scalar("SELECT started FROM broker_nodes WHERE node = $1")
                .bind(node).fetch_optional(&mut *tx).await?;
        if known.is_none() {
            return Err(ApiError::Conflict(format!(
                "broker node {node} is not in the cell (never heartbeated, or its lease ran out): \
                 heartbeat first"
            )));
        }
        let linked: Vec<i64> = if report.full {
            sqlx::query_scalar("SELECT worker_id FROM worker_links WHERE node = $1")
                .bind(node).fetch_all(&mut *tx).await?
        } else {
            Vec::new()
        };
        let mut ids = Vec::with_capacity(report.workers.len());
        for w in &report.workers {
            let id: Option<i64> = sqlx::query_scalar(find)
                .bind(&w.team).bind(&w.identity).fetch_optional(&mut *tx).await?;
            ids.push(id);
        }
        // Every worker this report touches, locked in id order (see `locking`).
        if let Some(lock) = &lock {
            let mut touched: Vec<i64> = ids.iter().flatten().chain(&linked).copied().collect();
            touched.sort_unstable();
            touched.dedup();
            for id in &touched {
                let _: Option<i64> =
                    sqlx::query_scalar(lock).bind(id).fetch_optional(&mut *tx).await?;
            }
        }
        let mut online = BTreeSet::new();
        for (w, id) in report.workers.iter().zip(ids) {
            let Some(id) = id else { continue };
            updated += 1;
            // Clamp: a broker clock cannot push a timestamp outside what the column holds.
            let at = i64::try_from(w.at_unix_ms).unwrap_or(i64::MAX);
            if w.state == WorkerState::Online {
                online.insert(id);
                let announced = serde_json::to_string(&w.services).unwrap_or_else(|_| "[]".into());
                sqlx::query(
                    "INSERT INTO worker_links (node, worker_id, since) VALUES ($1, $2, $3) \
                     ON CONFLICT (node, worker_id) DO UPDATE SET since = excluded.since")
                    .bind(node).bind(id).bind(at).execute(&mut *tx).await?;
                sqlx::query(
                    "UPDATE workers SET state = $1, last_seen = $2, announced = $3 WHERE id = $4")
                    .bind(WorkerState::Online.as_str()).bind(at).bind(announced).bind(id)
                    .execute(&mut *tx).await?;
            } else {
                online.remove(&id);
                unlink!(tx, node, id, at, since);
            }
        }
        // A full report lists every worker connected to this node: its other links are
        // left from before (a crash, a lost connection). Other nodes' links stay.
        for id in linked.into_iter().filter(|id| !online.contains(id)) {
            unlink!(tx, node, id, now, since);
        }
        tx.commit().await?;
    });
    Ok(updated)
}

/// Removes the nodes whose lease ran out (unseen for `lease`), with their links; the workers
/// they alone connected become `DISCONNECTED`. Returns how many nodes went.
pub(crate) async fn sweep(db: &Db, lease: Duration) -> Result<u64, sqlx::Error> {
    let since = live_since(lease);
    let now = now_ms();
    let lock = format!(
        "SELECT id FROM workers WHERE id IN (SELECT l.worker_id FROM worker_links l \
         JOIN broker_nodes n ON n.node = l.node WHERE n.last_seen < $1) ORDER BY id{}",
        locking(db)
    );
    Ok(on_db!(db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let _: Vec<i64> = sqlx::query_scalar(&lock).bind(since).fetch_all(&mut *tx).await?;
        sqlx::query(
            "UPDATE workers SET state = $1, last_seen = $2 WHERE state = $3 \
             AND id IN (SELECT l.worker_id FROM worker_links l JOIN broker_nodes n \
                 ON n.node = l.node WHERE n.last_seen < $4) \
             AND NOT EXISTS (SELECT 1 FROM worker_links l JOIN broker_nodes n ON n.node = l.node \
                 WHERE l.worker_id = workers.id AND n.last_seen >= $4)")
            .bind(WorkerState::Disconnected.as_str()).bind(now)
            .bind(WorkerState::Online.as_str()).bind(since)
            .execute(&mut *tx).await?;
        let swept = sqlx::query("DELETE FROM broker_nodes WHERE last_seen < $1")
            .bind(since).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        swept
    }))
}

#[derive(sqlx::FromRow)]
struct ReachedRow {
    reached: i64,
    n_workers: i64,
}

/// The workers by how many live nodes link them (`(reached, workers)`, every worker of every
/// team), and the live nodes: for the metrics.
pub(crate) async fn reach(db: &Db, lease: Duration) -> Result<(Vec<(i64, i64)>, i64), sqlx::Error> {
    let since = live_since(lease);
    let (rows, live) = on_db!(db, pool => {
        let rows: Vec<ReachedRow> = sqlx::query_as(
            "SELECT reached, COUNT(*) AS n_workers FROM (SELECT (SELECT COUNT(*) FROM worker_links l \
             JOIN broker_nodes n ON n.node = l.node WHERE l.worker_id = w.id \
             AND n.last_seen >= $1) AS reached FROM workers w) AS r GROUP BY reached")
            .bind(since).fetch_all(pool).await?;
        let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM broker_nodes WHERE last_seen >= $1")
            .bind(since).fetch_one(pool).await?;
        (rows, live)
    });
    Ok((
        rows.into_iter().map(|r| (r.reached, r.n_workers)).collect(),
        live,
    ))
}

#[derive(sqlx::FromRow)]
struct NodeRow {
    node: String,
    advertise: String,
    started: i64,
    last_seen: i64,
    clients: i64,
    workers: i64,
    team_workers: i64,
}

/// A stored count as the API gives it (a count of connections fits 32 bits; the column is
/// written only from `u32`s).
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// The cell's live broker nodes, ordered by address: to operators with the cell's connection
/// counts, to everyone with their team's workers connected to each.
#[utoipa::path(get, path = "/api/v1/brokers", tag = "brokers", security(("jwt" = [])),
    responses((status = 200, description = "The live broker nodes (seen within the lease); empty outside a cell", body = [BrokerNodeView]),
        (status = "default", body = ErrorBody)))]
pub async fn list_brokers(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<BrokerNodeView>>, ApiError> {
    let since = live_since(state.settings.node_lease);
    let rows: Vec<NodeRow> = on_db!(&state.db, pool => {
        sqlx::query_as(
            "SELECT n.node, n.advertise, n.started, n.last_seen, n.clients, n.workers, \
             (SELECT COUNT(*) FROM worker_links l JOIN workers w ON w.id = l.worker_id \
                 WHERE l.node = n.node AND w.team_id = $2) AS team_workers \
             FROM broker_nodes n WHERE n.last_seen >= $1 ORDER BY n.advertise, n.started DESC, n.node")
            .bind(since).bind(user.team_id).fetch_all(pool).await?
    });
    let ms = |t: i64| u64::try_from(t).unwrap_or(0);
    Ok(Json(
        rows.into_iter()
            .map(|row| BrokerNodeView {
                clients: user.operator.then(|| count(row.clients)),
                workers: user.operator.then(|| count(row.workers)),
                team_workers: count(row.team_workers),
                started_unix_ms: ms(row.started),
                last_seen_unix_ms: ms(row.last_seen),
                node: row.node,
                advertise: row.advertise,
            })
            .collect(),
    ))
}
