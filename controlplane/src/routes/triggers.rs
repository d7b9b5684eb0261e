//! Triggers: files under a directory that run a plugin through a service when written.

use super::directories::directory_name;
use super::workers::check_description;
use super::{check_quota, config_event, may_modify, parse_timeout, timeout_text};
use super::{readable, stored, Unreadable};
use crate::auth::AuthUser;
use crate::db::{now_ms, on_db, rfc3339, BUMP_REVISION};
use crate::error::{ApiError, ErrorBody, ResultExt};
use crate::extract::{Json, Path};
use crate::openapi::{doc_type, integer, string, text};
use crate::openapi::{Description, PluginName, ServiceRef, Timeout, TimeoutMs, TriggerId};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use proto::control::Visibility;
use proto::{text_enum, TextEnum};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Type};
use utoipa::ToSchema;

text_enum! {
    ("split", "lowercase")
    /// How a trigger's output is split.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
    #[serde(rename_all = "lowercase")]
    pub enum Split {
        /// One blob.
        #[default]
        None,
        /// Line by line.
        Lines,
    }
}

/// What `create_trigger` accepts as a path: `/directory/name`, both names.
pub(crate) const PATH_PATTERN: &str = concat!(
    "^/",
    proto::name_segment_pattern!(),
    "/",
    proto::name_segment_pattern!(),
    "$"
);

doc_type! {
    /// A trigger's path.
    TriggerPath => string("`/directory/name`: two names; the directory must exist (422 otherwise).")
        .min_length(Some(4))
        .max_length(Some(2 * proto::names::MAX_NAME + 2))
        .pattern(Some(PATH_PATTERN))
}

doc_type! {
    /// Unix mode bits.
    Mode => integer(
        "Unix mode bits, at most 0o7777 (4095); e.g. 420 = 0o644.",
        0,
        MAX_MODE,
        KnownFormat::Int32,
    )
}

doc_type! {
    /// Lines one request of a `split = "lines"` trigger carries.
    BatchLines => integer(
        "The most complete lines one request of a `split = \"lines\"` trigger carries, 1 to \
         100000 (default 1000); 1: one request per line.",
        1,
        MAX_BATCH_LINES,
        KnownFormat::Int32,
    )
}

doc_type! {
    /// Hits one call adds.
    HitCount => integer("How many runs to count.", 0, MAX_HITS_PER_CALL, KnownFormat::Int32)
}

doc_type! {
    /// Plugin arguments: a trigger's defaults, or a gateway request's.
    ArgMap => ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("At most 256 arguments; keys 1 to 4096 characters, values at most 4096."))
        .max_properties(Some(MAX_ARGS))
        .property_names(Some(text("An argument's name.").min_length(Some(1)).max_length(Some(MAX_ARG_CHARS))))
        .additional_properties(Some(text("An argument's value.").max_length(Some(MAX_ARG_CHARS))))
}

/// A trigger.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerView {
    /// Numeric id.
    pub id: i64,
    /// `/directory/name`.
    pub path: String,
    /// File name.
    pub name: String,
    /// Directory name.
    pub directory: String,
    /// Free text.
    pub description: String,
    /// Plugin, e.g. `command/command`; `""` until one is set (writes to the file fail then).
    pub plugin: String,
    /// Service (`service` or `team/service`); `""` until one is set (writes fail then).
    pub service: String,
    /// Default plugin arguments.
    pub args: BTreeMap<String, String>,
    /// Timeout in milliseconds; 0: the service's.
    pub timeout_ms: i64,
    /// The same as text, `null` for the default.
    pub timeout: Option<String>,
    /// Unix mode bits (e.g. 420 = 0o644).
    pub mode: i64,
    /// `none` or `lines`.
    pub split: Split,
    /// `split = "lines"`: the most complete lines one request carries (1: one per line).
    pub batch_lines: i64,
    /// `local`, `team` or `public`.
    #[schema(value_type = crate::openapi::Visibility)]
    pub visibility: Visibility,
    /// Times it ran, as counted through `POST /api/v1/triggers/{id}/hits`.
    pub hits: i64,
    /// Who created it.
    pub owner: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339: the last change to its configuration (or path); counting hits is none.
    pub updated: String,
}

/// A new trigger.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTrigger {
    /// `/directory/name`; the directory must exist (422), the name be new in it (409).
    #[schema(value_type = TriggerPath)]
    pub path: String,
    /// Plugin, e.g. `command/command`. Optional: a trigger may be created first and given
    /// its plugin later (`PATCH`); until then it has none (`""`) and writes to it fail.
    #[schema(value_type = Option<PluginName>)]
    pub plugin: Option<String>,
    /// Service (`service` or `team/service`); it must exist for the team (422). Optional, as
    /// `plugin`: without one the trigger has none (`""`) until a `PATCH` gives it one.
    #[schema(value_type = Option<ServiceRef>)]
    pub service: Option<String>,
    /// Default plugin arguments.
    #[schema(value_type = Option<ArgMap>)]
    pub args: Option<BTreeMap<String, String>>,
    /// Timeout as text (`"10s"`); not with `timeout_ms` (422).
    #[schema(value_type = Option<Timeout>)]
    pub timeout: Option<String>,
    /// Timeout in milliseconds.
    #[schema(value_type = Option<TimeoutMs>)]
    pub timeout_ms: Option<u64>,
    /// Unix mode bits (default 0o600 = 384: only the user who mounted the fs reads the
    /// responses in the file, also with `--allow-other`).
    #[schema(value_type = Option<Mode>)]
    pub mode: Option<u32>,
    /// `none` (default) or `lines`.
    pub split: Option<Split>,
    /// `split = "lines"`: the most complete lines one request carries (default 1000).
    #[schema(value_type = Option<BatchLines>)]
    pub batch_lines: Option<u32>,
    /// Free text.
    #[schema(value_type = Option<Description>)]
    pub description: Option<String>,
    /// `local` (default), `team` or `public`.
    #[schema(value_type = Option<crate::openapi::Visibility>)]
    pub visibility: Option<Visibility>,
}

/// Changes to a trigger; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTrigger {
    /// A new `/directory/name`: renames the trigger, moves it to another directory, or both.
    /// The directory must exist (422), and no other trigger have the path (409).
    #[schema(value_type = Option<TriggerPath>)]
    pub path: Option<String>,
    /// Plugin.
    #[schema(value_type = Option<PluginName>)]
    pub plugin: Option<String>,
    /// Service; it must exist for the team (422).
    #[schema(value_type = Option<ServiceRef>)]
    pub service: Option<String>,
    /// Default plugin arguments (replaces them).
    #[schema(value_type = Option<ArgMap>)]
    pub args: Option<BTreeMap<String, String>>,
    /// Timeout as text; not with `timeout_ms` (422).
    #[schema(value_type = Option<Timeout>)]
    pub timeout: Option<String>,
    /// Timeout in milliseconds.
    #[schema(value_type = Option<TimeoutMs>)]
    pub timeout_ms: Option<u64>,
    /// Unix mode bits.
    #[schema(value_type = Option<Mode>)]
    pub mode: Option<u32>,
    /// `none` or `lines`.
    pub split: Option<Split>,
    /// `split = "lines"`: the most complete lines one request carries.
    #[schema(value_type = Option<BatchLines>)]
    pub batch_lines: Option<u32>,
    /// Free text.
    #[schema(value_type = Option<Description>)]
    pub description: Option<String>,
    /// `local`, `team` or `public`.
    #[schema(value_type = Option<crate::openapi::Visibility>)]
    pub visibility: Option<Visibility>,
}

/// Hits to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddHits {
    /// How many (default 1).
    #[schema(value_type = Option<HitCount>)]
    pub count: Option<u32>,
}

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
        Ok(TriggerView {
            split: stored(&self.split, "trigger", team, &path)?,
            visibility: stored(&self.visibility, "trigger", team, &path)?,
            id: self.id,
            path,
            timeout: timeout_text(self.timeout_ms),
            args: serde_json::from_str(&self.args).unwrap_or_default(),
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

/// Most hits one call may add.
const MAX_HITS_PER_CALL: u32 = 1_000_000;
/// Most lines one request of a `split = "lines"` trigger may carry.
const MAX_BATCH_LINES: u32 = 100_000;
/// Lines one request carries unless the trigger says otherwise.
const DEFAULT_BATCH_LINES: u32 = 1000;
/// Mode bits a file may have.
const MAX_MODE: u32 = 0o7777;
/// A new trigger's mode: read and written by the user who mounted it alone. A read of the
/// file returns its last responses, so a file others may read (with `--allow-other`)
/// shows them what the plugins answered.
const DEFAULT_MODE: u32 = 0o600;
/// Most arguments a trigger keeps, and the characters of each key and value.
const MAX_ARGS: usize = 256;
const MAX_ARG_CHARS: usize = 4096;

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
fn split_path(path: &str) -> Result<(&str, &str), ApiError> {
    let rest = path.strip_prefix('/').ok_or_else(|| {
        ApiError::Unprocessable(format!("trigger path `{path}` must start with /"))
    })?;
    let Some((dir, name)) = rest.split_once('/') else {
        return Err(ApiError::Unprocessable(format!(
            "trigger path `{path}` must be /directory/name"
        )));
    };
    let dir = directory_name(dir)?;
    proto::names::check_simple("trigger", name)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    Ok((dir, name))
}

/// The id of directory `$dir` of the caller's team; 422 when it has none.
macro_rules! directory_id {
    ($tx:expr, $user:expr, $dir:expr) => {{
        let dir_id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM directories WHERE team_id = $1 AND name = $2")
                .bind($user.team_id)
                .bind($dir)
                .fetch_optional(&mut *$tx)
                .await?;
        dir_id.ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "no directory /{} in team {}: create it first",
                $dir, $user.team
            ))
        })?
    }};
}

fn check_plugin(plugin: &str) -> Result<(), ApiError> {
    proto::names::check_plugin(plugin).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

fn check_service(service: &str) -> Result<(), ApiError> {
    proto::names::check_service_ref(service).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

pub(crate) fn check_args(args: &Option<BTreeMap<String, String>>) -> Result<(), ApiError> {
    if let Some(args) = args {
        if args.len() > MAX_ARGS {
            return Err(ApiError::Unprocessable(format!(
                "more than {MAX_ARGS} args"
            )));
        }
        let long = |text: &str| text.chars().count() > MAX_ARG_CHARS;
        for (k, v) in args {
            if k.is_empty() || long(k) || long(v) {
                return Err(ApiError::Unprocessable(format!(
                    "arg keys must be non-empty, keys and values at most {MAX_ARG_CHARS} \
                     characters"
                )));
            }
        }
    }
    Ok(())
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

/// Creates a trigger in an existing directory.
#[utoipa::path(post, path = "/api/v1/triggers", tag = "triggers", security(("jwt" = [])),
    request_body = CreateTrigger,
    responses((status = 201, body = TriggerView),
        (status = 403, description = "`QuotaExceeded`: the team has as many triggers as it may", body = ErrorBody),
        (status = 409, description = "The directory has a trigger of that name", body = ErrorBody),
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
    let timeout_ms = parse_timeout(req.timeout.as_deref(), req.timeout_ms)?.unwrap_or(0);
    let args = args_json(&req.args.unwrap_or_default());
    let now = now_ms();
    let (revision, id): (i64, i64) = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        let dir_id = directory_id!(tx, user, dir);
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
            .bind(user.team_id).bind(dir_id).bind(name)
            .bind(req.description.as_deref().unwrap_or(""))
            .bind(req.plugin.as_deref().unwrap_or(""))
            .bind(req.service.as_deref().unwrap_or(""))
            .bind(&args).bind(timeout_ms)
            .bind(i64::from(req.mode.unwrap_or(DEFAULT_MODE)))
            .bind(req.split.unwrap_or_default().as_str())
            .bind(i64::from(req.batch_lines.unwrap_or(DEFAULT_BATCH_LINES)))
            .bind(req.visibility.unwrap_or_default().as_str())
            .bind(&user.identity).bind(now)
            .fetch_one(&mut *tx).await
            .on_conflict(|| format!("trigger {}", req.path))?;
        tx.commit().await?;
        (revision, id)
    });
    state.publish(config_event(
        revision, &user.team, "trigger", "created", &req.path,
    ));
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
        (status = 409, description = "Another trigger has the new `path`", body = ErrorBody),
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
    let timeout_ms = parse_timeout(req.timeout.as_deref(), req.timeout_ms)?;
    let row = find(&state, &user, id).await?;
    may_modify(&user, &row.owner)?;
    let args = req.args.as_ref().map(args_json);
    let now = now_ms();
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        let dir_id = match target {
            Some((dir, _)) => Some(directory_id!(tx, user, dir)),
            None => None,
        };
        if let Some(service) = &req.service {
            check_service_exists!(tx, user, service.as_str());
        }
        sqlx::query("UPDATE triggers SET plugin = COALESCE($1, plugin), \
            service = COALESCE($2, service), args = COALESCE($3, args), \
            timeout_ms = COALESCE($4, timeout_ms), mode = COALESCE($5, mode), \
            split = COALESCE($6, split), description = COALESCE($7, description), \
            visibility = COALESCE($8, visibility), batch_lines = COALESCE($9, batch_lines), \
            directory_id = COALESCE($10, directory_id), name = COALESCE($11, name), \
            updated = $12 WHERE id = $13")
            .bind(req.plugin.as_deref()).bind(req.service.as_deref()).bind(args.as_deref())
            .bind(timeout_ms).bind(req.mode.map(i64::from))
            .bind(req.split.map(TextEnum::as_str)).bind(req.description.as_deref())
            .bind(req.visibility.map(TextEnum::as_str)).bind(req.batch_lines.map(i64::from))
            .bind(dir_id).bind(target.map(|(_, name)| name)).bind(now).bind(id)
            .execute(&mut *tx).await
            .on_conflict(|| format!("trigger {}", req.path.as_deref().unwrap_or_default()))?;
        tx.commit().await?;
        revision
    });
    let old = format!("/{}/{}", row.directory, row.name);
    let (action, path) = match req.path {
        Some(new) if new != old => ("renamed", new),
        _ => ("updated", old),
    };
    state.publish(config_event(revision, &user.team, "trigger", action, &path));
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
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        sqlx::query("DELETE FROM triggers WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        revision
    });
    let path = format!("/{}/{}", row.directory, row.name);
    state.publish(config_event(
        revision, &user.team, "trigger", "deleted", &path,
    ));
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
    if row.visibility == Visibility::Local.as_str() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::UnknownText;
    use strum::VariantArray;

    #[test]
    fn split_has_one_text_per_variant() {
        for &split in Split::VARIANTS {
            let text = split.as_str();
            assert_eq!(text.parse::<Split>(), Ok(split));
            assert_eq!(serde_json::to_value(split).unwrap(), text);
            assert_eq!(serde_json::from_value::<Split>(text.into()).unwrap(), split);
        }
        assert_eq!(Split::None.as_str(), "none");
        assert_eq!(Split::Lines.as_str(), "lines");
        for bad in ["", "Lines", "words"] {
            assert_eq!(bad.parse::<Split>(), Err(UnknownText::of::<Split>(bad)));
            assert!(serde_json::from_value::<Split>(bad.into()).is_err());
        }
    }
}
