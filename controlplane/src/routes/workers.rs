//! Workers of the caller's team. The token (uuid v4) is shown once, at creation and on
//! `regenerate`; only its SHA-256 digest is stored.

use super::{check_name, check_quota, config_event, may_modify};
use super::{readable, stored, Unreadable};
use crate::auth::AuthUser;
use crate::db::{now_ms, on_db, rfc3339, BUMP_REVISION};
use crate::error::{ApiError, ErrorBody, ResultExt};
use crate::extract::{Json, Path};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use proto::control::{Visibility, WorkerState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A worker.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    /// Identity, unique in the team.
    pub identity: String,
    /// Free text.
    pub description: String,
    /// `ONLINE` or `DISCONNECTED` (reported by the broker).
    #[schema(value_type = crate::openapi::WorkerState)]
    pub state: WorkerState,
    /// When the broker last reported it (RFC 3339), if ever.
    pub last_seen: Option<String>,
    /// Who owns it: its creator, or whom an admin gave it to.
    pub owner: String,
    /// Whether its owner is a member of the team. A worker whose owner left or was removed
    /// does not serve: the broker refuses it and closes its connection, until an admin gives
    /// it a new owner (`PATCH` with `owner`) or deletes it.
    pub owner_is_member: bool,
    /// Who may call it by its identity and use the services it announces: `local` (its
    /// owner) or `team` (every member). Ad-hoc services never reach other teams.
    #[schema(value_type = crate::openapi::WorkerVisibility, example = "team")]
    pub visibility: Visibility,
    /// The services it announced when it last came online. They are ad-hoc services only
    /// where the team has no configured service of that name (a configured service is served
    /// only by the workers bound to it).
    pub announces: Vec<String>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub updated: String,
}

/// A worker with its token: only in the answers of create and regenerate.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerWithToken {
    /// The worker.
    #[serde(flatten)]
    pub worker: WorkerView,
    /// The token (uuid v4); it is not shown again.
    pub token: String,
}

/// A new worker.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorker {
    /// Identity, unique in the team among workers and services (409 when taken).
    #[schema(value_type = crate::openapi::Name)]
    pub identity: String,
    /// Free text.
    #[schema(value_type = Option<crate::openapi::Description>)]
    pub description: Option<String>,
    /// `team` (default) or `local`: who may use it directly and its announced services.
    #[schema(value_type = Option<crate::openapi::WorkerVisibility>, example = "team")]
    pub visibility: Option<Visibility>,
}

/// Changes to a worker.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorker {
    /// Free text.
    #[schema(value_type = Option<crate::openapi::Description>)]
    pub description: Option<String>,
    /// `team` or `local`.
    #[schema(value_type = Option<crate::openapi::WorkerVisibility>, example = "local")]
    pub visibility: Option<Visibility>,
    /// A new owner: a member of the team (422 otherwise); only an admin gives a worker to
    /// someone (403). Its services and bindings stay; a `local` worker then serves only its
    /// new owner's services.
    #[schema(value_type = Option<crate::openapi::Name>)]
    pub owner: Option<String>,
}

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
}

impl WorkerRow {
    fn view(self, team: &str) -> Result<WorkerView, Unreadable> {
        Ok(WorkerView {
            state: stored(&self.state, "worker", team, &self.identity)?,
            visibility: stored(&self.visibility, "worker", team, &self.identity)?,
            identity: self.identity,
            description: self.description,
            last_seen: self.last_seen.map(rfc3339),
            // Written by this crate only (`broker::report`); unreadable text shows as none.
            announces: serde_json::from_str(&self.announced).unwrap_or_default(),
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
    visibility, announced, created, updated FROM workers WHERE team_id = $1";

/// Ad-hoc services never reach another team: a worker is `local` or `team`.
fn check_visibility(visibility: Option<Visibility>) -> Result<(), ApiError> {
    if visibility == Some(Visibility::Public) {
        return Err(ApiError::Unprocessable(
            "a worker's visibility is `local` or `team`; configure a public service to open it to other teams".into(),
        ));
    }
    Ok(())
}

/// Longest description we keep, in characters (as JSON Schema's `maxLength` counts).
pub(crate) const MAX_DESCRIPTION: usize = 4096;

/// A fresh worker token (uuid v4, shown once) and the digest that is stored instead.
fn new_token() -> (String, String) {
    let token = uuid::Uuid::new_v4().to_string();
    let digest = proto::control::token_digest(&token);
    (token, digest)
}

pub(crate) fn check_description(text: &Option<String>) -> Result<(), ApiError> {
    match text {
        Some(t) if t.chars().count() > MAX_DESCRIPTION => Err(ApiError::Unprocessable(format!(
            "description is longer than {MAX_DESCRIPTION} characters"
        ))),
        _ => Ok(()),
    }
}

async fn find(state: &AppState, user: &AuthUser, identity: &str) -> Result<WorkerRow, ApiError> {
    let sql = format!("{SELECT} AND identity = $2");
    let row: Option<WorkerRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.team_id).bind(identity).fetch_optional(pool).await?
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
    let rows: Vec<WorkerRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.team_id).fetch_all(pool).await?
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
    let visibility = req.visibility.unwrap_or(Visibility::Team).to_string();
    let (token, digest) = new_token();
    let now = now_ms();
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        let (limit, used): (Option<i64>, i64) = sqlx::query_as(
            "SELECT max_workers, (SELECT COUNT(*) FROM workers WHERE team_id = $1) FROM teams WHERE id = $1")
            .bind(user.team_id).fetch_one(&mut *tx).await?;
        check_quota(&user.team, "workers", limit, used)?;
        let service_named: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM services WHERE team_id = $1 AND name = $2")
            .bind(user.team_id).bind(&req.identity).fetch_optional(&mut *tx).await?;
        if service_named.is_some() {
            return Err(super::services::name_taken(&req.identity, &user.team));
        }
        sqlx::query("INSERT INTO workers (team_id, identity, description, token_sha256, owner, \
            visibility, created, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)")
            .bind(user.team_id).bind(&req.identity).bind(req.description.as_deref().unwrap_or(""))
            .bind(&digest).bind(&user.identity).bind(&visibility).bind(now).execute(&mut *tx).await
            .on_conflict(|| format!("worker {}", req.identity))?;
        tx.commit().await?;
        revision
    });
    state.publish(config_event(
        revision,
        &user.team,
        "worker",
        "created",
        &req.identity,
    ));
    let worker = find(&state, &user, &req.identity).await?.view(&user.team)?;
    Ok((StatusCode::CREATED, Json(WorkerWithToken { worker, token })))
}

/// One worker (never its token).
#[utoipa::path(get, path = "/api/v1/workers/{identity}", tag = "workers", security(("jwt" = [])),
    params(("identity" = crate::openapi::Name, Path, description = "Worker identity")),
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
    params(("identity" = crate::openapi::Name, Path, description = "Worker identity")), request_body = UpdateWorker,
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
    if req.owner.is_some() && user.role != "admin" {
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
        let revision: i64 = on_db!(&state.db, pool => {
            let mut tx = crate::db::begin(pool).await?;
            let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
            if let Some(owner) = &new_owner {
                let member: Option<i64> = sqlx::query_scalar(
                    "SELECT u.id FROM members m JOIN users u ON u.id = m.user_id \
                     WHERE m.team_id = $1 AND u.identity = $2")
                    .bind(user.team_id).bind(owner).fetch_optional(&mut *tx).await?;
                if member.is_none() {
                    return Err(ApiError::Unprocessable(format!(
                        "{owner} is not a member of team {}", user.team)));
                }
            }
            sqlx::query("UPDATE workers SET description = $1, visibility = $2, owner = $3, \
                updated = $4 WHERE id = $5")
                .bind(&description).bind(&visibility).bind(&owner).bind(now).bind(row.id)
                .execute(&mut *tx).await?;
            tx.commit().await?;
            revision
        });
        state.publish(config_event(
            revision, &user.team, "worker", "updated", &identity,
        ));
    }
    Ok(Json(
        find(&state, &user, &identity).await?.view(&user.team)?,
    ))
}

/// Deletes a worker (its owner or an admin); it leaves every service.
#[utoipa::path(delete, path = "/api/v1/workers/{identity}", tag = "workers", security(("jwt" = [])),
    params(("identity" = crate::openapi::Name, Path, description = "Worker identity")),
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
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        sqlx::query("DELETE FROM workers WHERE id = $1").bind(row.id).execute(&mut *tx).await?;
        tx.commit().await?;
        revision
    });
    state.publish(config_event(
        revision, &user.team, "worker", "deleted", &identity,
    ));
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces a worker's token (its owner or an admin); the new one is in the answer, once.
#[utoipa::path(post, path = "/api/v1/workers/{identity}/regenerate", tag = "workers",
    security(("jwt" = [])), params(("identity" = crate::openapi::Name, Path, description = "Worker identity")),
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
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        sqlx::query("UPDATE workers SET token_sha256 = $1, updated = $2 WHERE id = $3")
            .bind(&digest).bind(now).bind(row.id).execute(&mut *tx).await?;
        tx.commit().await?;
        revision
    });
    state.publish(config_event(
        revision, &user.team, "worker", "updated", &identity,
    ));
    let worker = find(&state, &user, &identity).await?.view(&user.team)?;
    Ok(Json(WorkerWithToken { worker, token }))
}
