//! Triggers: files in a directory (at any depth) that run a plugin through a service when
//! written.

use super::directories::dir_id;
use crate::auth::AuthUser;
use crate::change::change;
use crate::checks::{check_args, check_description, check_quota, may_modify, timeout_ms};
use crate::db::{now_ms, on_db, rfc3339};
use crate::error::{ApiError, ResultExt};
use crate::extract::{Json, Path};
use crate::state::AppState;
use crate::stored::{readable, Row, Unreadable};
use api::directories::{split_trigger_path, DirPath};
use api::schema::TriggerId;
use api::triggers::{
    AddHits, CreateTrigger, TriggerView, UpdateTrigger, DEFAULT_BATCH_LINES, DEFAULT_MODE,
    MAX_BATCH_LINES, MAX_HITS_PER_CALL, MAX_MODE,
};
use api::{Action, ErrorBody, Object, Timeout, Visibility};
use axum::extract::State;
use axum::http::StatusCode;
use proto::TextEnum;
use std::collections::BTreeMap;

#[derive(sqlx::FromRow)]
struct TriggerRow {
    id: i64,
    directory: String,
    name: String,
    description: String,
    plugin: String,
    service: String,
    args: String,
    timeout_ms: i64,
    mode: i64,
    split: String,
    batch_lines: i64,
    visibility: String,
    hits: i64,
    owner: String,
    created: i64,
    updated: i64,
}

impl TriggerRow {
    fn view(self, team: &str) -> Result<TriggerView, Unreadable> {
        let path = format!("/{}/{}", self.directory, self.name);
        let trigger = Row::of("trigger", team, &path);
        Ok(TriggerView {
            split: trigger.text(&self.split)?,
            visibility: trigger.text(&self.visibility)?,
            timeout: Timeout::from_ms(trigger.number(self.timeout_ms)?),
            args: trigger.json(&self.args)?,
            id: self.id,
            path,
            name: self.name,
            directory: self.directory,
            description: self.description,
            plugin: self.plugin,
            service: self.service,
            timeout_ms: self.timeout_ms,
            mode: self.mode,
            batch_lines: self.batch_lines,
            hits: self.hits,
            owner: self.owner,
            created: rfc3339(self.created),
            updated: rfc3339(self.updated),
        })
    }
}

const SELECT: &str = "SELECT t.id, d.name AS directory, t.name, t.description, t.plugin, \
    t.service, t.args, t.timeout_ms, t.mode, t.split, t.batch_lines, t.visibility, t.hits, t.owner, \
    t.created, t.updated FROM triggers t JOIN directories d ON d.id = t.directory_id \
    WHERE t.team_id = $1";

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::NotFound(format!("no trigger {id}")))
}

fn check_mode(mode: Option<u32>) -> Result<(), ApiError> {
    match mode {
        Some(m) if m > MAX_MODE => Err(ApiError::Unprocessable(format!(
            "mode {m:o} is not a unix mode (at most 7777 octal)"
        ))),
        _ => Ok(()),
    }
}

fn check_batch_lines(batch_lines: Option<u32>) -> Result<(), ApiError> {
    match batch_lines {
        Some(n) if !(1..=MAX_BATCH_LINES).contains(&n) => Err(ApiError::Unprocessable(format!(
            "batch_lines {n} is not between 1 and {MAX_BATCH_LINES}"
        ))),
        _ => Ok(()),
    }
}

/// The directory and the name of a trigger path `/directory/name`, checked.
fn split_path(path: &str) -> Result<(DirPath, &str), ApiError> {
    split_trigger_path(path).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// The id of directory `$dir` (a [`DirPath`]) of the caller's team; 422 when it has none.
/// A directory already there at the trigger's own path (`$dir/$name`) is a 409.
macro_rules! directory_id {
    ($tx:expr, $user:expr, $dir:expr, $name:expr) => {{
        let dir: &DirPath = $dir;
        let id = dir_id!($tx, $user.team_id, dir.as_str()).ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "no directory {dir} in team {}: create it first",
                $user.team
            ))
        })?;
        if let Ok(own) = dir.child($name) {
            if dir_id!($tx, $user.team_id, own.as_str()).is_some() {
                return Err(ApiError::Conflict(format!(
                    "directory {own} already exists"
                )));
            }
        }
        id
    }};
}

fn check_plugin(plugin: &str) -> Result<(), ApiError> {
    proto::names::check_plugin(plugin).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

fn check_service(service: &str) -> Result<(), ApiError> {
    proto::names::check_service_ref(service).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// Refuses a trigger bound to a service the caller's team cannot reach: its own team's
/// service or worker (a worker serves its identity), or another team's public service.
macro_rules! check_service_exists {
    ($tx:expr, $user:expr, $service:expr) => {{
        let (team, name) = match $service.split_once('/') {
            Some((team, name)) => (team, name),
            None => ($user.team.as_str(), $service),
        };
        let found: i64 = if team == $user.team {
            sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM services WHERE team_id = $1 AND name = $2) \
                 + (SELECT COUNT(*) FROM workers WHERE team_id = $1 AND identity = $2)",
            )
            .bind($user.team_id)
            .bind(name)
            .fetch_one(&mut *$tx)
            .await?
        } else {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM services s JOIN teams t ON t.id = s.team_id \
                 WHERE t.name = $1 AND s.name = $2 AND s.visibility = 'public'",
            )
            .bind(team)
            .bind(name)
            .fetch_one(&mut *$tx)
            .await?
        };
        if found == 0 {
            return Err(ApiError::Unprocessable(format!(
                "no service {} for team {}",
                $service, $user.team
            )));
        }
    }};
}

fn args_json(args: &BTreeMap<String, String>) -> String {
    serde_json::to_string(args).unwrap_or_else(|_| "{}".into())
}

async fn find(state: &AppState, user: &AuthUser, id: i64) -> Result<TriggerRow, ApiError> {
    let sql = format!("{SELECT} AND t.id = $2");
    let row: Option<TriggerRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.team_id).bind(id).fetch_optional(pool).await?
    });
    row.ok_or_else(|| ApiError::NotFound(format!("no trigger {id} in team {}", user.team)))
}

/// The triggers of the caller's team.
#[utoipa::path(get, path = "/api/v1/triggers", tag = "triggers", security(("jwt" = [])),
    responses((status = 200, body = [TriggerView]), (status = "default", body = ErrorBody)))]
pub async fn list_triggers(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<TriggerView>>, ApiError> {
    let sql = format!("{SELECT} ORDER BY d.name, t.name");
    let rows: Vec<TriggerRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.team_id).fetch_all(pool).await?
    });
    let views = rows.into_iter().map(|row| row.view(&user.team));
    Ok(Json(readable("the list of triggers", views)))
}

/// Creates a trigger in an existing directory (at any depth).
#[utoipa::path(post, path = "/api/v1/triggers", tag = "triggers", security(("jwt" = [])),
    request_body = CreateTrigger,
    responses((status = 201, body = TriggerView),
        (status = 403, description = "`QuotaExceeded`: the team has as many triggers as it may", body = ErrorBody),
        (status = 409, description = "The directory has a trigger or a directory of that name", body = ErrorBody),
        (status = 422, description = "A field breaks its rule, both timeouts are given, or the directory or the service does not exist", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn create_trigger(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateTrigger>,
) -> Result<(StatusCode, Json<TriggerView>), ApiError> {
    let (dir, name) = split_path(&req.path)?;
    if let Some(p) = &req.plugin {
        check_plugin(p)?;
    }
    if let Some(s) = &req.service {
        check_service(s)?;
    }
    check_args(&req.args)?;
    check_mode(req.mode)?;
    check_batch_lines(req.batch_lines)?;
    check_description(&req.description)?;
    let timeout_ms = timeout_ms(req.timeout.as_ref(), req.timeout_ms)?.unwrap_or(0);
    let args = args_json(&req.args.unwrap_or_default());
    let now = now_ms();
    let id: i64 = change!(state, Object::Trigger, Action::Created, user.team, req.path, tx => {
        let dir_id = directory_id!(tx, user, &dir, name);
        let (limit, used): (Option<i64>, i64) = sqlx::query_as(
            "SELECT max_triggers, (SELECT COUNT(*) FROM triggers WHERE team_id = $1) FROM teams WHERE id = $1")
            .bind(user.team_id).fetch_one(&mut *tx).await?;
        check_quota(&user.team, "triggers", limit, used)?;
        if let Some(service) = &req.service {
            check_service_exists!(tx, user, service.as_str());
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO triggers (team_id, directory_id, name, description, plugin, service, \
             args, timeout_ms, mode, split, batch_lines, visibility, owner, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) \
             RETURNING id")
            .bind(user.team_id).bind(dir_id).bind(name).bind(req.description.as_deref().unwrap_or(""))
            .bind(req.plugin.as_deref().unwrap_or("")).bind(req.service.as_deref().unwrap_or(""))
            .bind(&args).bind(timeout_ms).bind(i64::from(req.mode.unwrap_or(DEFAULT_MODE)))
            .bind(req.split.unwrap_or_default().as_str())
            .bind(i64::from(req.batch_lines.unwrap_or(DEFAULT_BATCH_LINES)))
            .bind(req.visibility.unwrap_or_default().as_str()).bind(&user.identity).bind(now)
            .fetch_one(&mut *tx).await.on_conflict(|| format!("trigger {}", req.path))?;
        id
    });
    Ok((
        StatusCode::CREATED,
        Json(find(&state, &user, id).await?.view(&user.team)?),
    ))
}

/// One trigger.
#[utoipa::path(get, path = "/api/v1/triggers/{id}", tag = "triggers", security(("jwt" = [])),
    params(("id" = TriggerId, Path, description = "Trigger id")),
    responses((status = 200, body = TriggerView),
        (status = 404, description = "No trigger of that id in the caller's team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn get_trigger(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<TriggerView>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(find(&state, &user, id).await?.view(&user.team)?))
}

/// Changes a trigger (its owner or an admin). A new `path` renames it or moves it to another
/// directory of the team, in the same transaction as the other changes; the config event is
/// then `renamed` and names the new path (otherwise `updated`, with the path it has).
#[utoipa::path(patch, path = "/api/v1/triggers/{id}", tag = "triggers", security(("jwt" = [])),
    params(("id" = TriggerId, Path, description = "Trigger id")), request_body = UpdateTrigger,
    responses((status = 200, body = TriggerView),
        (status = 403, description = "The caller neither owns the trigger nor is an admin of the team", body = ErrorBody),
        (status = 404, description = "No trigger of that id in the caller's team", body = ErrorBody),
        (status = 409, description = "Another trigger or a directory has the new `path`", body = ErrorBody),
        (status = 422, description = "A field breaks its rule, both timeouts are given, or the directory of the new `path` or the service does not exist", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn update_trigger(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    Json(req): Json<UpdateTrigger>,
) -> Result<Json<TriggerView>, ApiError> {
    let id = parse_id(&id)?;
    let target = req.path.as_deref().map(split_path).transpose()?;
    let new_name = target.as_ref().map(|(_, name)| *name);
    if let Some(p) = &req.plugin {
        check_plugin(p)?;
    }
    if let Some(s) = &req.service {
        check_service(s)?;
    }
    check_args(&req.args)?;
    check_mode(req.mode)?;
    check_batch_lines(req.batch_lines)?;
    check_description(&req.description)?;
    let timeout_ms = timeout_ms(req.timeout.as_ref(), req.timeout_ms)?;
    let row = find(&state, &user, id).await?;
    may_modify(&user, &row.owner)?;
    let args = req.args.as_ref().map(args_json);
    let now = now_ms();
    let old = format!("/{}/{}", row.directory, row.name);
    let (action, path) = match &req.path {
        Some(new) if *new != old => (Action::Renamed, new.clone()),
        _ => (Action::Updated, old),
    };
    change!(state, Object::Trigger, action, user.team, path, tx => {
        let dir_id = match &target {
            Some((dir, name)) => Some(directory_id!(tx, user, dir, name)),
            None => None,
        };
        if let Some(service) = &req.service {
            check_service_exists!(tx, user, service.as_str());
        }
        sqlx::query(
            "UPDATE triggers SET plugin = COALESCE($1, plugin), \
             service = COALESCE($2, service), args = COALESCE($3, args), \
             timeout_ms = COALESCE($4, timeout_ms), mode = COALESCE($5, mode), \
             split = COALESCE($6, split), description = COALESCE($7, description), \
             visibility = COALESCE($8, visibility), batch_lines = COALESCE($9, batch_lines), \
             directory_id = COALESCE($10, directory_id), name = COALESCE($11, name), \
             updated = $12 WHERE id = $13")
            .bind(req.plugin.as_deref()).bind(req.service.as_deref()).bind(args.as_deref())
            .bind(timeout_ms).bind(req.mode.map(i64::from)).bind(req.split.map(TextEnum::as_str))
            .bind(req.description.as_deref()).bind(req.visibility.map(TextEnum::as_str))
            .bind(req.batch_lines.map(i64::from)).bind(dir_id).bind(new_name)
            .bind(now).bind(id).execute(&mut *tx).await.on_conflict(|| format!("trigger {path}"))?;
    });
    Ok(Json(find(&state, &user, id).await?.view(&user.team)?))
}

/// Deletes a trigger (its owner or an admin).
#[utoipa::path(delete, path = "/api/v1/triggers/{id}", tag = "triggers", security(("jwt" = [])),
    params(("id" = TriggerId, Path, description = "Trigger id")),
    responses((status = 204),
        (status = 403, description = "The caller neither owns the trigger nor is an admin of the team", body = ErrorBody),
        (status = 404, description = "No trigger of that id in the caller's team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn delete_trigger(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let row = find(&state, &user, id).await?;
    may_modify(&user, &row.owner)?;
    let path = format!("/{}/{}", row.directory, row.name);
    change!(state, Object::Trigger, Action::Deleted, user.team, path, tx => {
        sqlx::query("DELETE FROM triggers WHERE id = $1").bind(id).execute(&mut *tx).await?;
    });
    Ok(StatusCode::NO_CONTENT)
}

/// Counts runs of a trigger: the fs module calls this about once a second per trigger with
/// the runs since its last call. Hits are not configuration: a count bumps no revision, emits
/// no config event, and leaves `updated` as it is (`updated` tells a follower of the events
/// that the trigger's configuration changed; a count every second would make it refetch for
/// nothing). It costs two queries: one read for the permission, one `UPDATE .. RETURNING`.
/// A `local` trigger's hits are counted only by its owner or an admin.
#[utoipa::path(post, path = "/api/v1/triggers/{id}/hits", tag = "triggers", security(("jwt" = [])),
    params(("id" = TriggerId, Path, description = "Trigger id")), request_body = AddHits,
    responses((status = 200, body = TriggerView),
        (status = 403, description = "A `local` trigger that the caller neither owns nor administers", body = ErrorBody),
        (status = 404, description = "No trigger of that id in the caller's team", body = ErrorBody),
        (status = 422, description = "`count` above the maximum", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn add_hits(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    Json(req): Json<AddHits>,
) -> Result<Json<TriggerView>, ApiError> {
    let id = parse_id(&id)?;
    let count = req.count.unwrap_or(1);
    if count > MAX_HITS_PER_CALL {
        return Err(ApiError::Unprocessable(format!(
            "count is more than {MAX_HITS_PER_CALL}"
        )));
    }
    // Whoever may run a trigger counts its runs: a `local` one only its owner (or an admin).
    let mut row = find(&state, &user, id).await?;
    let path = format!("/{}/{}", row.directory, row.name);
    let trigger = Row::of("trigger", &user.team, &path);
    if trigger.text::<Visibility>(&row.visibility)? == Visibility::Local {
        may_modify(&user, &row.owner)?;
    }
    let hits: Option<i64> = on_db!(&state.db, pool => {
        sqlx::query_scalar("UPDATE triggers SET hits = hits + $1 WHERE id = $2 AND team_id = $3 \
            RETURNING hits")
            .bind(i64::from(count)).bind(id).bind(user.team_id)
            .fetch_optional(pool).await?
    });
    row.hits =
        hits.ok_or_else(|| ApiError::NotFound(format!("no trigger {id} in team {}", user.team)))?;
    Ok(Json(row.view(&user.team)?))
}
