//! Workers of the caller's team. The token (uuid v4) is shown once, at creation and on
//! `regenerate`; only its SHA-256 digest is stored.

use super::nodes::live_since;
use crate::auth::AuthUser;
use crate::change::change;
use crate::checks::{check_description, check_name, check_quota, may_modify};
use crate::db::{now_ms, on_db, rfc3339};
use crate::error::{ApiError, ResultExt};
use crate::extract::{Json, Path};
use crate::state::AppState;
use crate::stored::{readable, Row, Unreadable};
use api::workers::{CreateWorker, NodesReached, UpdateWorker, WorkerView, WorkerWithToken};
use api::{Action, ErrorBody, Object, Role, Visibility};
use axum::extract::State;
use axum::http::StatusCode;
use proto::openapi::Name;
use proto::TextEnum;

#[derive(sqlx::FromRow)]
struct WorkerRow {
    id: i64,
    identity: String,
    description: String,
    state: String,
    last_seen: Option<i64>,
    owner: String,
    owner_is_member: bool,
    visibility: String,
    announced: String,
    created: i64,
    updated: i64,
    reached: i64,
    live: i64,
}

impl WorkerRow {
    fn view(self, team: &str) -> Result<WorkerView, Unreadable> {
        let worker = Row::of("worker", team, &self.identity);
        let nodes = NodesReached {
            reached: worker.number(self.reached)?,
            live: worker.number(self.live)?,
        };
        Ok(WorkerView {
            nodes,
            state: worker.text(&self.state)?,
            visibility: worker.text(&self.visibility)?,
            announces: worker.json(&self.announced)?,
            identity: self.identity,
            description: self.description,
            last_seen: self.last_seen.map(rfc3339),
            owner: self.owner,
            owner_is_member: self.owner_is_member,
            created: rfc3339(self.created),
            updated: rfc3339(self.updated),
        })
    }
}

const SELECT: &str = "SELECT id, identity, description, state, last_seen, owner, \
    EXISTS (SELECT 1 FROM members m JOIN users u ON u.id = m.user_id \
        WHERE m.team_id = workers.team_id AND u.identity = workers.owner) AS owner_is_member, \
    visibility, announced, created, updated, \
    (SELECT COUNT(*) FROM worker_links l JOIN broker_nodes n ON n.node = l.node \
        WHERE l.worker_id = workers.id AND n.last_seen >= $2) AS reached, \
    (SELECT COUNT(*) FROM broker_nodes WHERE last_seen >= $2) AS live \
    FROM workers WHERE team_id = $1";

/// Ad-hoc services never reach another team: a worker is `local` or `team`.
fn check_visibility(visibility: Option<Visibility>) -> Result<(), ApiError> {
    if visibility == Some(Visibility::Public) {
        return Err(ApiError::Unprocessable(
            "a worker's visibility is `local` or `team`; configure a public service to open it to other teams".into(),
        ));
    }
    Ok(())
}

/// A fresh worker token (uuid v4, shown once) and the digest that is stored instead.
fn new_token() -> (String, String) {
    let token = uuid::Uuid::new_v4().to_string();
    let digest = proto::control::token_digest(&token);
    (token, digest)
}

async fn find(state: &AppState, user: &AuthUser, identity: &str) -> Result<WorkerRow, ApiError> {
    let sql = format!("{SELECT} AND identity = $3");
    let since = live_since(state.settings.node_lease);
    let row: Option<WorkerRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.team_id).bind(since).bind(identity)
            .fetch_optional(pool).await?
    });
    row.ok_or_else(|| ApiError::NotFound(format!("no worker {identity} in team {}", user.team)))
}

/// The workers of the caller's team.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers", security(("jwt" = [])),
    responses((status = 200, body = [WorkerView]), (status = "default", body = ErrorBody)))]
pub async fn list_workers(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<WorkerView>>, ApiError> {
    let sql = format!("{SELECT} ORDER BY identity");
    let since = live_since(state.settings.node_lease);
    let rows: Vec<WorkerRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.team_id).bind(since).fetch_all(pool).await?
    });
    let views = rows.into_iter().map(|row| row.view(&user.team));
    Ok(Json(readable("the list of workers", views)))
}

/// Creates a worker; the answer holds its token, once.
#[utoipa::path(post, path = "/api/v1/workers", tag = "workers", security(("jwt" = [])),
    request_body = CreateWorker,
    responses((status = 201, body = WorkerWithToken),
        (status = 403, description = "`QuotaExceeded`: the team has as many workers as it may", body = ErrorBody),
        (status = 409, description = "A worker or a service of the team has that name", body = ErrorBody),
        (status = 422, description = "An identity that breaks the name rule, or a description too long", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn create_worker(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateWorker>,
) -> Result<(StatusCode, Json<WorkerWithToken>), ApiError> {
    check_name("worker", &req.identity)?;
    check_description(&req.description)?;
    check_visibility(req.visibility)?;
    let visibility = req.visibility.unwrap_or(Visibility::Team);
    let (token, digest) = new_token();
    let now = now_ms();
    change!(state, Object::Worker, Action::Created, user.team, req.identity, tx => {
        let (limit, used): (Option<i64>, i64) = sqlx::query_as(
            "SELECT max_workers, (SELECT COUNT(*) FROM workers WHERE team_id = $1) FROM teams WHERE id = $1")
            .bind(user.team_id).fetch_one(&mut *tx).await?;
        check_quota(&user.team, "workers", limit, used)?;
        let service_named: Option<i64> =
            sqlx::query_scalar("SELECT id FROM services WHERE team_id = $1 AND name = $2")
                .bind(user.team_id).bind(&req.identity).fetch_optional(&mut *tx).await?;
        if service_named.is_some() {
            return Err(super::services::name_taken(&req.identity, &user.team));
        }
        sqlx::query(
            "INSERT INTO workers (team_id, identity, description, token_sha256, owner, \
             visibility, created, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)")
            .bind(user.team_id).bind(&req.identity).bind(req.description.as_deref().unwrap_or(""))
            .bind(&digest).bind(&user.identity).bind(visibility.as_str()).bind(now).execute(&mut *tx)
            .await.on_conflict(|| format!("worker {}", req.identity))?;
    });
    let worker = find(&state, &user, &req.identity).await?.view(&user.team)?;
    Ok((StatusCode::CREATED, Json(WorkerWithToken { worker, token })))
}

/// One worker (never its token).
#[utoipa::path(get, path = "/api/v1/workers/{identity}", tag = "workers", security(("jwt" = [])),
    params(("identity" = Name, Path, description = "Worker identity")),
    responses((status = 200, body = WorkerView),
        (status = 404, description = "No worker of that identity in the caller's team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn get_worker(
    State(state): State<AppState>,
    user: AuthUser,
    Path(identity): Path<String>,
) -> Result<Json<WorkerView>, ApiError> {
    Ok(Json(
        find(&state, &user, &identity).await?.view(&user.team)?,
    ))
}

/// Changes a worker's description or visibility (its owner or an admin), or its owner (an
/// admin).
#[utoipa::path(patch, path = "/api/v1/workers/{identity}", tag = "workers", security(("jwt" = [])),
    params(("identity" = Name, Path, description = "Worker identity")), request_body = UpdateWorker,
    responses((status = 200, body = WorkerView),
        (status = 403, description = "The caller neither owns the worker nor is an admin of the team; or a new `owner` from a caller who is not an admin", body = ErrorBody),
        (status = 404, description = "No worker of that identity in the caller's team", body = ErrorBody),
        (status = 422, description = "A description too long, or an `owner` who is not a member of the team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn update_worker(
    State(state): State<AppState>,
    user: AuthUser,
    Path(identity): Path<String>,
    Json(req): Json<UpdateWorker>,
) -> Result<Json<WorkerView>, ApiError> {
    check_description(&req.description)?;
    check_visibility(req.visibility)?;
    if let Some(owner) = &req.owner {
        check_name("owner", owner)?;
    }
    let row = find(&state, &user, &identity).await?;
    may_modify(&user, &row.owner)?;
    if req.owner.is_some() && user.role != Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "only an admin of team {} gives a worker a new owner",
            user.team
        )));
    }
    if req.description.is_some() || req.visibility.is_some() || req.owner.is_some() {
        let description = req.description.unwrap_or(row.description);
        let visibility = req.visibility.map_or(row.visibility, |v| v.to_string());
        let new_owner = req.owner;
        let owner = new_owner.clone().unwrap_or(row.owner);
        let now = now_ms();
        change!(state, Object::Worker, Action::Updated, user.team, identity, tx => {
            if let Some(owner) = &new_owner {
                let member: Option<i64> = sqlx::query_scalar(
                    "SELECT u.id FROM members m JOIN users u ON u.id = m.user_id \
                     WHERE m.team_id = $1 AND u.identity = $2")
                    .bind(user.team_id).bind(owner).fetch_optional(&mut *tx).await?;
                if member.is_none() {
                    return Err(ApiError::Unprocessable(format!(
                        "{owner} is not a member of team {}",
                        user.team
                    )));
                }
            }
            sqlx::query(
                "UPDATE workers SET description = $1, visibility = $2, owner = $3, \
                 updated = $4 WHERE id = $5")
                .bind(&description).bind(&visibility).bind(&owner).bind(now).bind(row.id)
                .execute(&mut *tx).await?;
        });
    }
    Ok(Json(
        find(&state, &user, &identity).await?.view(&user.team)?,
    ))
}

/// Deletes a worker (its owner or an admin); it leaves every service.
#[utoipa::path(delete, path = "/api/v1/workers/{identity}", tag = "workers", security(("jwt" = [])),
    params(("identity" = Name, Path, description = "Worker identity")),
    responses((status = 204),
        (status = 403, description = "The caller neither owns the worker nor is an admin of the team", body = ErrorBody),
        (status = 404, description = "No worker of that identity in the caller's team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn delete_worker(
    State(state): State<AppState>,
    user: AuthUser,
    Path(identity): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = find(&state, &user, &identity).await?;
    may_modify(&user, &row.owner)?;
    change!(state, Object::Worker, Action::Deleted, user.team, identity, tx => {
        sqlx::query("DELETE FROM workers WHERE id = $1").bind(row.id).execute(&mut *tx).await?;
    });
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces a worker's token (its owner or an admin); the new one is in the answer, once.
#[utoipa::path(post, path = "/api/v1/workers/{identity}/regenerate", tag = "workers",
    security(("jwt" = [])), params(("identity" = Name, Path, description = "Worker identity")),
    responses((status = 200, body = WorkerWithToken),
        (status = 403, description = "The caller neither owns the worker nor is an admin of the team", body = ErrorBody),
        (status = 404, description = "No worker of that identity in the caller's team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn regenerate_token(
    State(state): State<AppState>,
    user: AuthUser,
    Path(identity): Path<String>,
) -> Result<Json<WorkerWithToken>, ApiError> {
    let row = find(&state, &user, &identity).await?;
    may_modify(&user, &row.owner)?;
    let (token, digest) = new_token();
    let now = now_ms();
    change!(state, Object::Worker, Action::Updated, user.team, identity, tx => {
        sqlx::query("UPDATE workers SET token_sha256 = $1, updated = $2 WHERE id = $3")
            .bind(&digest).bind(now).bind(row.id).execute(&mut *tx).await?;
    });
    let worker = find(&state, &user, &identity).await?.view(&user.team)?;
    Ok(Json(WorkerWithToken { worker, token }))
}
