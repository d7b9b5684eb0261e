//! The broker's feed: the configuration snapshot, and worker state flowing back.
//! Authenticated by the broker token, never by a user JWT.

use crate::auth::BrokerAuth;
use crate::checks::check_name;
use crate::db::{on_db, CURRENT_REVISION};
use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;
use crate::stored::{readable, Row, Unreadable};
use api::broker::{
    BrokerReport, BrokerSnapshot, MemberEntry, ReportAnswer, ServiceEntry, WorkerEntry,
    MAX_ANNOUNCED,
};
use api::{ErrorBody, WorkerState};
use axum::extract::State;
use proto::TextEnum;
use std::collections::HashMap;

#[derive(sqlx::FromRow)]
struct WorkerRow {
    team: String,
    identity: String,
    token_sha256: String,
    owner: String,
    visibility: String,
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    team: String,
    identity: String,
    uid: i64,
    sgen: i64,
}

#[derive(sqlx::FromRow)]
struct ServiceRow {
    id: i64,
    team: String,
    name: String,
    owner: String,
    algorithm: String,
    timeout_ms: i64,
    visibility: String,
    batch: Option<i64>,
    stop_on_failure: bool,
    retry: bool,
    history: String,
}

#[derive(sqlx::FromRow)]
struct BindingRow {
    service_id: i64,
    identity: String,
}

impl WorkerRow {
    fn entry(self) -> Result<WorkerEntry, Unreadable> {
        let worker = Row::of("worker", &self.team, &self.identity);
        Ok(WorkerEntry {
            visibility: worker.text(&self.visibility)?,
            team: self.team,
            identity: self.identity,
            token_sha256: self.token_sha256,
            owner: self.owner,
        })
    }
}

impl ServiceRow {
    fn entry(self, workers: Vec<String>) -> Result<ServiceEntry, Unreadable> {
        let service = Row::of("service", &self.team, &self.name);
        Ok(ServiceEntry {
            algorithm: service.text(&self.algorithm)?,
            visibility: service.text(&self.visibility)?,
            history: service.text(&self.history)?,
            timeout_ms: service.number(self.timeout_ms)?,
            batch: self.batch.map(|b| service.number(b)).transpose()?,
            workers,
            team: self.team,
            name: self.name,
            owner: self.owner,
            stop_on_failure: self.stop_on_failure,
            retry: self.retry,
        })
    }
}

/// Everything routing and authentication need, at one revision.
#[utoipa::path(get, path = "/api/v1/broker/snapshot", tag = "broker", security(("broker_token" = [])),
    responses((status = 200, body = BrokerSnapshot), (status = "default", body = ErrorBody)))]
pub async fn snapshot(
    State(state): State<AppState>,
    _broker: BrokerAuth,
) -> Result<Json<BrokerSnapshot>, ApiError> {
    let (revision, teams, members, workers, services, bindings) = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(CURRENT_REVISION).fetch_one(&mut *tx).await?;
        let teams: Vec<String> = sqlx::query_scalar("SELECT name FROM teams ORDER BY name")
            .fetch_all(&mut *tx).await?;
        let members: Vec<MemberRow> = sqlx::query_as(
            "SELECT t.name AS team, u.identity, u.id AS uid, u.secret_gen AS sgen FROM members m \
             JOIN teams t ON t.id = m.team_id JOIN users u ON u.id = m.user_id \
             ORDER BY t.name, u.identity")
            .fetch_all(&mut *tx).await?;
        let workers: Vec<WorkerRow> = sqlx::query_as(
            "SELECT t.name AS team, w.identity, w.token_sha256, w.owner, w.visibility FROM workers w \
             JOIN teams t ON t.id = w.team_id ORDER BY t.name, w.identity")
            .fetch_all(&mut *tx).await?;
        let services: Vec<ServiceRow> = sqlx::query_as(
            "SELECT s.id, t.name AS team, s.name, s.owner, s.algorithm, s.timeout_ms, \
             s.visibility, s.batch, s.stop_on_failure, s.retry, s.history FROM services s \
             JOIN teams t ON t.id = s.team_id ORDER BY t.name, s.name")
            .fetch_all(&mut *tx).await?;
        let bindings: Vec<BindingRow> = sqlx::query_as(
            "SELECT sw.service_id, w.identity FROM service_workers sw \
             JOIN workers w ON w.id = sw.worker_id ORDER BY sw.service_id, sw.position")
            .fetch_all(&mut *tx).await?;
        tx.commit().await?;
        (revision, teams, members, workers, services, bindings)
    });
    let mut bound: HashMap<i64, Vec<String>> = HashMap::new();
    for b in bindings {
        bound.entry(b.service_id).or_default().push(b.identity);
    }
    Ok(Json(BrokerSnapshot {
        revision: crate::db::revision(revision)?,
        jwt_secret_hex: state.jwt.secret_hex.clone(),
        teams,
        members: members
            .into_iter()
            .map(|m| MemberEntry {
                team: m.team,
                identity: m.identity,
                uid: m.uid,
                sgen: m.sgen,
            })
            .collect(),
        // A worker whose stored visibility cannot be read is not admitted at all, rather than
        // with a guessed one; every other worker still reaches the broker.
        workers: readable(
            "the broker snapshot",
            workers.into_iter().map(WorkerRow::entry),
        ),
        // A service whose stored algorithm or visibility cannot be read is not routed at all,
        // rather than routed with a guessed one; every other service still reaches the broker.
        services: readable(
            "the broker snapshot",
            services.into_iter().map(|s| {
                let workers = bound.remove(&s.id).unwrap_or_default();
                s.entry(workers)
            }),
        ),
    }))
}

/// Worker state changes from the broker (state and last seen). From a broker node of a cell
/// (`node`), they link or unlink the worker and that node: a worker is `ONLINE` while a live
/// node links it, and `full` speaks for that node's links only.
#[utoipa::path(post, path = "/api/v1/broker/report", tag = "broker", security(("broker_token" = [])),
    request_body = BrokerReport,
    responses((status = 200, body = ReportAnswer),
        (status = 409, description = "A report of a broker node (`node`) that is not in the cell: it never heartbeated, or its lease ran out (the broker heartbeats, then sends the report again)", body = ErrorBody),
        (status = 422, description = "A report lists more than 64 services for a worker, or one that is not a name; or a `node` that is not a UUID in lower-case hyphenated form", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    _broker: BrokerAuth,
    Json(report): Json<BrokerReport>,
) -> Result<Json<ReportAnswer>, ApiError> {
    if let Some(node) = &report.node {
        proto::control::check_node_id(node).map_err(ApiError::Unprocessable)?;
    }
    // An empty report is a broker asking whether the control plane is there
    // (`--max-staleness`): answered without touching the store.
    if report.workers.is_empty() && !report.full {
        return Ok(Json(ReportAnswer { updated: 0 }));
    }
    for w in &report.workers {
        if w.services.len() > MAX_ANNOUNCED {
            return Err(ApiError::Unprocessable(format!(
                "worker {} reports {} services; at most {MAX_ANNOUNCED}",
                w.identity,
                w.services.len(),
            )));
        }
        for s in &w.services {
            check_name("service", s)?;
        }
    }
    if let Some(node) = &report.node {
        let updated = super::nodes::node_report(&state, node, &report).await?;
        return Ok(Json(ReportAnswer { updated }));
    }
    let mut updated = 0;
    on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        if report.full {
            // The broker lists every worker online at it: any other was left `ONLINE` by a
            // crash or a lost connection.
            sqlx::query("UPDATE workers SET state = $1 WHERE state = $2")
                .bind(WorkerState::Disconnected.as_str())
                .bind(WorkerState::Online.as_str())
                .execute(&mut *tx).await?;
        }
        for w in &report.workers {
            let text = w.state.as_str();
            // Clamp: a broker clock cannot push a timestamp outside what the column holds.
            let at = i64::try_from(w.at_unix_ms).unwrap_or(i64::MAX);
            let done = if w.state == WorkerState::Online {
                let announced = serde_json::to_string(&w.services).unwrap_or_else(|_| "[]".into());
                const SQL: &str = "UPDATE workers SET state = $1, last_seen = $2, announced = $3 \
                    WHERE identity = $4 AND team_id = (SELECT id FROM teams WHERE name = $5)";
                sqlx::query(SQL).bind(text).bind(at).bind(announced).bind(&w.identity).bind(&w.team)
                    .execute(&mut *tx).await?.rows_affected()
            } else {
                const SQL: &str = "UPDATE workers SET state = $1, last_seen = $2 \
                    WHERE identity = $3 AND team_id = (SELECT id FROM teams WHERE name = $4)";
                sqlx::query(SQL).bind(text).bind(at).bind(&w.identity).bind(&w.team)
                    .execute(&mut *tx).await?.rows_affected()
            };
            updated += done;
        }
        tx.commit().await?;
    });
    Ok(Json(ReportAnswer { updated }))
}
