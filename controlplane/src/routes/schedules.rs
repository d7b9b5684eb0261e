//! Schedules: a request on a timetable, run by the control plane as its owner (the
//! `scheduler` module starts the runs). A `local` schedule is seen by its owner and the
//! team's admins, a `team` one by every member; its owner or an admin changes it.

use crate::auth::AuthUser;
use crate::change::change;
use crate::checks::{check_description, check_name, may_modify};
use crate::db::{now_ms, on_db};
use crate::error::{ApiError, ResultExt};
use crate::extract::{Json, Path};
use crate::scheduler::{self, ScheduleRow, Start, SELECT};
use crate::state::AppState;
use crate::stored::readable;
use crate::timetable::Timetable;
use api::schedules::{self, CreateSchedule, PauseSchedule, RunView, ScheduleView};
use api::{Action, ErrorBody, Object, Timeout};
use axum::extract::State;
use axum::http::StatusCode;
use proto::openapi::Name;
use proto::TextEnum;

/// The condition for the schedules the caller sees (`$2` identity, `$3` admin).
const SEEN: &str = "s.team_id = $1 AND (s.visibility = 'team' OR s.owner = $2 OR $3)";

/// Milliseconds of an optional duration (422 when it breaks the rule).
fn ms(field: &str, text: &Option<Timeout>) -> Result<Option<i64>, ApiError> {
    text.as_ref()
        .map(|t| {
            t.ms()
                .map(|ms| ms as i64)
                .map_err(|e| ApiError::Unprocessable(format!("{field}: {e}")))
        })
        .transpose()
}

/// The timetable a new schedule asks for, checked, and its columns (`every_ms`,
/// `jitter_ms`, `cron`, `time_zone`); due times count from `now`.
fn timetable(req: &CreateSchedule, now: i64) -> Result<(Timetable, Columns), ApiError> {
    let bad = |e: crate::timetable::BadTimetable| ApiError::Unprocessable(e.to_string());
    match &req.timetable {
        schedules::Timetable::Every(e) => {
            let every = ms("every", &Some(e.every.clone()))?.unwrap_or(0);
            let jitter = ms("jitter", &e.jitter)?.unwrap_or(0);
            let made = Timetable::every(every, now).map_err(bad)?;
            Ok((made, (Some(every), jitter, None, None)))
        }
        schedules::Timetable::Cron(c) => {
            let made = Timetable::cron(&c.cron, c.time_zone.as_deref()).map_err(bad)?;
            Ok((made, (None, 0, Some(c.cron.clone()), c.time_zone.clone())))
        }
    }
}

/// A timetable's columns: `every_ms`, `jitter_ms`, `cron`, `time_zone`.
type Columns = (Option<i64>, i64, Option<String>, Option<String>);

async fn find(state: &AppState, user: &AuthUser, name: &str) -> Result<ScheduleRow, ApiError> {
    let sql = format!("{SELECT} WHERE {SEEN} AND s.name = $4");
    let row: Option<ScheduleRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.team_id).bind(&user.identity).bind(user.is_admin())
            .bind(name).fetch_optional(pool).await?
    });
    row.ok_or_else(|| ApiError::NotFound(format!("no schedule {name} in team {}", user.team)))
}

/// The schedules of the caller's team that they see.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", security(("jwt" = [])),
    responses((status = 200, body = [ScheduleView]), (status = "default", body = ErrorBody)))]
pub async fn list_schedules(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    let sql = format!("{SELECT} WHERE {SEEN} ORDER BY s.name");
    let rows: Vec<ScheduleRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.team_id).bind(&user.identity).bind(user.is_admin())
            .fetch_all(pool).await?
    });
    Ok(Json(readable(
        "the list of schedules",
        rows.into_iter().map(ScheduleRow::view),
    )))
}

/// Creates a schedule; the caller is its owner, whose rights each run has when it runs.
#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules", security(("jwt" = [])),
    request_body = CreateSchedule,
    responses((status = 201, body = ScheduleView),
        (status = 409, description = "The team has a schedule of that name", body = ErrorBody),
        (status = 422, description = "A field breaks its rule: the request (as the gateway's), or the timetable (`every` under 1s, a cron expression that does not read, a time zone that is not IANA's)", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn create_schedule(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateSchedule>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    check_name("schedule", &req.name)?;
    check_description(&req.description)?;
    super::gateway::request_spec(req.service.clone(), req.request.clone())?;
    let visibility = req.visibility.unwrap_or_default();
    let now = now_ms();
    let (made, (every, jitter, cron, time_zone)) = timetable(&req, now)?;
    let next_due = made
        .next_after(now)
        .ok_or_else(|| ApiError::Unprocessable("the timetable is never due".into()))?;
    let deadline = ms("starting_deadline", &req.starting_deadline)?;
    let request = serde_json::to_string(&req.request)
        .map_err(|e| ApiError::Internal(format!("the request does not write: {e}")))?;
    let concurrency = req.concurrency.unwrap_or_default();
    change!(state, Object::Schedule, Action::Created, user.team, req.name, tx => {
        sqlx::query(
            "INSERT INTO schedules (team_id, name, description, service, request, every_ms, \
             jitter_ms, cron, time_zone, concurrency, starting_deadline_ms, paused, reason, \
             visibility, owner, next_due, created, updated) VALUES ($1, $2, $3, $4, $5, $6, \
             $7, $8, $9, $10, $11, $12, NULL, $13, $14, $15, $16, $16)")
            .bind(user.team_id).bind(&req.name).bind(req.description.as_deref().unwrap_or(""))
            .bind(&req.service).bind(&request).bind(every).bind(jitter)
            .bind(&cron).bind(&time_zone).bind(concurrency.as_str()).bind(deadline)
            .bind(req.paused.unwrap_or(false)).bind(visibility.as_str()).bind(&user.identity)
            .bind(next_due).bind(now)
            .execute(&mut *tx).await.on_conflict(|| format!("schedule {}", req.name))?;
    });
    let view = find(&state, &user, &req.name).await?.view()?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// One schedule, with its next and last run.
#[utoipa::path(get, path = "/api/v1/schedules/{name}", tag = "schedules", security(("jwt" = [])),
    params(("name" = Name, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleView),
        (status = 404, description = "No schedule of that name that the caller sees", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn get_schedule(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json(find(&state, &user, &name).await?.view()?))
}

/// Deletes a schedule (its owner or an admin); a run in progress goes on.
#[utoipa::path(delete, path = "/api/v1/schedules/{name}", tag = "schedules", security(("jwt" = [])),
    params(("name" = Name, Path, description = "Schedule name")),
    responses((status = 204),
        (status = 403, description = "The caller neither owns it nor is an admin", body = ErrorBody),
        (status = 404, description = "No schedule of that name that the caller sees", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn delete_schedule(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = find(&state, &user, &name).await?;
    may_modify(&user, &row.owner)?;
    change!(state, Object::Schedule, Action::Deleted, user.team, name, tx => {
        sqlx::query("DELETE FROM schedules WHERE id = $1").bind(row.id)
            .execute(&mut *tx).await?;
    });
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a schedule now (its owner or an admin), as its owner, under its concurrency
/// policy; its next due time stays.
#[utoipa::path(post, path = "/api/v1/schedules/{name}/run", tag = "schedules", security(("jwt" = [])),
    params(("name" = Name, Path, description = "Schedule name")),
    responses((status = 202, body = RunView),
        (status = 403, description = "The caller neither owns it nor is an admin", body = ErrorBody),
        (status = 404, description = "No schedule of that name that the caller sees", body = ErrorBody),
        (status = 409, description = "Its last run still runs and its concurrency is `forbid`, or it is paused: its owner is no longer a member", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn run_schedule(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let row = find(&state, &user, &name).await?;
    may_modify(&user, &row.owner)?;
    match scheduler::start(&state, &row, now_ms(), None).await? {
        Start::Started(run) => Ok((StatusCode::ACCEPTED, Json(run))),
        Start::Paused(reason) => Err(ApiError::Conflict(format!("schedule {name}: {reason}"))),
        Start::Forbidden | Start::Taken => Err(ApiError::Conflict(format!(
            "schedule {name}: its last run still runs, and its concurrency is forbid"
        ))),
    }
}

/// Pauses a schedule (its owner or an admin): no run starts until it is resumed.
#[utoipa::path(post, path = "/api/v1/schedules/{name}/pause", tag = "schedules", security(("jwt" = [])),
    params(("name" = Name, Path, description = "Schedule name")), request_body = PauseSchedule,
    responses((status = 200, body = ScheduleView),
        (status = 403, description = "The caller neither owns it nor is an admin", body = ErrorBody),
        (status = 404, description = "No schedule of that name that the caller sees", body = ErrorBody),
        (status = 422, description = "A reason longer than a description may be", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn pause_schedule(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    Json(req): Json<PauseSchedule>,
) -> Result<Json<ScheduleView>, ApiError> {
    check_description(&req.reason)?;
    let row = find(&state, &user, &name).await?;
    may_modify(&user, &row.owner)?;
    let reason = req
        .reason
        .unwrap_or_else(|| format!("paused by {}", user.identity));
    scheduler::pause(&state, &row, None, &reason).await?;
    Ok(Json(find(&state, &user, &name).await?.view()?))
}

/// Resumes a paused schedule (its owner or an admin): it is next due at its first due time
/// from now (runs missed while paused are not made up).
#[utoipa::path(post, path = "/api/v1/schedules/{name}/resume", tag = "schedules", security(("jwt" = [])),
    params(("name" = Name, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleView),
        (status = 403, description = "The caller neither owns it nor is an admin", body = ErrorBody),
        (status = 404, description = "No schedule of that name that the caller sees", body = ErrorBody),
        (status = 422, description = "Its timetable is never due again", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn resume_schedule(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let row = find(&state, &user, &name).await?;
    may_modify(&user, &row.owner)?;
    let now = now_ms();
    let next = row
        .timetable()?
        .next_after(now)
        .ok_or_else(|| ApiError::Unprocessable("its timetable is never due again".into()))?;
    change!(state, Object::Schedule, Action::Updated, user.team, name, tx => {
        sqlx::query("UPDATE schedules SET paused = FALSE, reason = NULL, next_due = $1, \
                     updated = $2 WHERE id = $3")
            .bind(next).bind(now).bind(row.id).execute(&mut *tx).await?;
    });
    Ok(Json(find(&state, &user, &name).await?.view()?))
}
