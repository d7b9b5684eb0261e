//! Job history: every request through a service, as the broker reported it when it ended
//! (`POST /api/v1/broker/jobs`, broker token), listed and shown to the members of the caller's
//! team (`GET /api/v1/jobs`, `GET /api/v1/jobs/{id}`), deleted after the retention
//! (`--job-retention`, [`prune`]). Not configuration: no revision, no event.

use crate::auth::{AuthUser, BrokerAuth};
use crate::db::{now_ms, on_db, rfc3339, Db};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path};
use crate::openapi::JobId;
use crate::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use proto::job::{redact, JobBatch, JobOutcome, JobStatus};
use proto::TextEnum;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// The broker's route for job records.
pub(crate) const JOBS_PATH: &str = "/api/v1/broker/jobs";
/// Bodies the broker's job route takes at most (a batch of records with output tails).
pub(crate) const JOBS_MAX_BODY: usize = 16 * 1024 * 1024;

/// Jobs a page holds when the request does not say.
const DEFAULT_LIMIT: u32 = 50;
/// Jobs a page holds at most.
pub(crate) const MAX_LIMIT: u32 = 500;

/// What the control plane did with a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobsAnswer {
    /// Records (or parts of records) stored; a record delivered again is counted but not
    /// stored twice.
    pub stored: u64,
    /// Records of a team that does not exist (any more): left out.
    pub skipped: u64,
}

/// Rows of `job_workers` per INSERT: 8 parameters each, well under SQLite's 32,766 and
/// PostgreSQL's 65,535.
const WORKER_ROWS_PER_INSERT: usize = 500;

/// Job records from the broker (`proto::job::JobBatch`), stored once per `key`; parts of one
/// record (same `key`, other workers) are merged.
#[utoipa::path(post, path = "/api/v1/broker/jobs", tag = "broker", security(("broker_token" = [])),
    request_body = crate::openapi::JobBatchDoc,
    responses((status = 200, body = JobsAnswer),
        (status = 422, description = "A batch, record or field is over its stated bound", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn ingest(
    State(state): State<AppState>,
    _broker: BrokerAuth,
    Json(batch): Json<JobBatch>,
) -> Result<Json<JobsAnswer>, ApiError> {
    check(&batch)?;
    let (mut stored, mut skipped) = (0, 0);
    // The transaction reads before it writes. On SQLite a deferred one would then have to
    // upgrade its read lock, which fails with "database is locked" (SQLITE_BUSY_SNAPSHOT)
    // when another write (a worker-state report) committed meanwhile: take the write lock
    // at the start, waiting for it like every other write.
    let begin = match &state.db {
        Db::Sqlite(_) => "BEGIN IMMEDIATE",
        Db::Postgres(_) => "BEGIN",
    };
    on_db!(&state.db, pool => {
        let mut tx = pool.begin_with(begin).await?;
        for job in &batch.jobs {
            let team_id: Option<i64> = sqlx::query_scalar("SELECT id FROM teams WHERE name = $1")
                .bind(&job.team).fetch_optional(&mut *tx).await?;
            let Some(team_id) = team_id else {
                skipped += 1;
                continue;
            };
            let command = serde_json::to_string(&job.command).unwrap_or_else(|_| "[]".into());
            let args: Vec<(String, String)> =
                job.args.iter().map(|(k, v)| (k.clone(), redact(k, v))).collect();
            let args = serde_json::to_string(&args).unwrap_or_else(|_| "[]".into());
            let started = i64::try_from(job.started_unix_ms).unwrap_or(i64::MAX);
            let duration = i64::try_from(job.duration_ms).unwrap_or(i64::MAX);
            sqlx::query(
                "INSERT INTO jobs (team_id, report_key, identity, service, algorithm, plugin, \
                 command, args, started, duration_ms, status, n_workers, n_ok) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'ok', 0, 0) \
                 ON CONFLICT (report_key) DO NOTHING")
                .bind(team_id).bind(&job.key).bind(&job.identity).bind(&job.service)
                .bind(&job.algorithm).bind(&job.plugin).bind(&command).bind(&args)
                .bind(started).bind(duration)
                .execute(&mut *tx).await?;
            let job_id: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE report_key = $1 AND team_id = $2")
                .bind(&job.key).bind(team_id).fetch_optional(&mut *tx).await?;
            let Some(job_id) = job_id else {
                // The key is another team's: not this record's to extend.
                skipped += 1;
                continue;
            };
            let base: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_workers WHERE job_id = $1")
                .bind(job_id).fetch_one(&mut *tx).await?;
            // Many rows per statement: a 1,000-worker job is two statements, not 1,000.
            for (n, chunk) in job.workers.chunks(WORKER_ROWS_PER_INSERT).enumerate() {
                let first = base + (n * WORKER_ROWS_PER_INSERT) as i64;
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO job_workers (job_id, position, worker, outcome, exit_code, \
                     duration_ms, output, truncated) ");
                insert.push_values(chunk.iter().enumerate(), |mut row, (i, w)| {
                    row.push_bind(job_id).push_bind(first + i as i64).push_bind(&w.worker)
                        .push_bind(w.outcome.as_str()).push_bind(w.exit_code.map(i64::from))
                        .push_bind(i64::try_from(w.duration_ms).unwrap_or(i64::MAX))
                        .push_bind(&w.output).push_bind(w.truncated);
                });
                insert.push(" ON CONFLICT (job_id, worker) DO NOTHING");
                insert.build().execute(&mut *tx).await?;
            }
            let outcomes: Vec<String> =
                sqlx::query_scalar("SELECT outcome FROM job_workers WHERE job_id = $1")
                    .bind(job_id).fetch_all(&mut *tx).await?;
            let outcomes: Vec<JobOutcome> =
                outcomes.iter().filter_map(|o| o.parse().ok()).collect();
            let n_ok = outcomes.iter().filter(|o| **o == JobOutcome::Ok).count() as i64;
            sqlx::query("UPDATE jobs SET status = $1, n_workers = $2, n_ok = $3 WHERE id = $4")
                .bind(JobStatus::of(outcomes.iter().copied()).as_str())
                .bind(outcomes.len() as i64).bind(n_ok).bind(job_id)
                .execute(&mut *tx).await?;
            stored += 1;
        }
        tx.commit().await?;
    });
    Ok(Json(JobsAnswer { stored, skipped }))
}

/// Refuses a batch over the bounds the document states.
fn check(batch: &JobBatch) -> Result<(), ApiError> {
    use proto::job::{JOB_OUTPUT_TAIL, MAX_JOB_BATCH, MAX_JOB_ITEMS, MAX_JOB_NAME, MAX_JOB_TEXT};
    let over = |what: &str, n: usize, max: usize| {
        (n > max).then(|| ApiError::Unprocessable(format!("{what}: {n}, at most {max}")))
    };
    let chars = |t: &str| t.chars().count();
    let mut problems = vec![over("records", batch.jobs.len(), MAX_JOB_BATCH)];
    for j in &batch.jobs {
        for (what, t) in [
            ("key", &j.key),
            ("team", &j.team),
            ("identity", &j.identity),
            ("service", &j.service),
            ("algorithm", &j.algorithm),
            ("plugin", &j.plugin),
        ] {
            problems.push(over(what, chars(t), MAX_JOB_NAME));
        }
        problems.push(over("command words", j.command.len(), MAX_JOB_ITEMS));
        problems.push(over("arguments", j.args.len(), MAX_JOB_ITEMS));
        problems.push(over(
            "workers",
            j.workers.len(),
            proto::job::MAX_JOB_WORKERS,
        ));
        for c in &j.command {
            problems.push(over("a command word", chars(c), MAX_JOB_TEXT));
        }
        for (k, v) in &j.args {
            problems.push(over("an argument", chars(k).max(chars(v)), MAX_JOB_TEXT));
        }
        for w in &j.workers {
            problems.push(over("worker", chars(&w.worker), MAX_JOB_NAME));
            problems.push(over("output", chars(&w.output), JOB_OUTPUT_TAIL));
        }
    }
    match problems.into_iter().flatten().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Which jobs, and which page of them.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Only requests to this service (as the request named it).
    pub service: Option<String>,
    /// Only jobs with this status.
    #[param(value_type = Option<crate::openapi::JobStatusDoc>)]
    pub status: Option<String>,
    /// Only jobs started at or after this time (RFC 3339, e.g. `2026-01-31T12:00:00Z`).
    pub since: Option<String>,
    /// Only jobs started before this time (RFC 3339).
    pub until: Option<String>,
    /// Jobs per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page: the jobs after it (newest first).
    pub cursor: Option<String>,
    /// Jobs to skip instead of a cursor.
    pub offset: Option<u32>,
}

/// A job in a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobSummary {
    /// Id.
    pub id: i64,
    /// When the broker received the request (RFC 3339).
    pub started: String,
    /// The same, in milliseconds since the Unix epoch.
    pub started_unix_ms: i64,
    /// Who sent it (user or worker identity).
    pub identity: String,
    /// The service as the request named it.
    pub service: String,
    /// `roundrobin`, `serial` or `mirror`.
    pub algorithm: String,
    /// The plugin.
    pub plugin: String,
    /// The command words.
    pub command: Vec<String>,
    /// Arguments; values of secret-looking names (`secret`, `token`, `password`, `key`, ...)
    /// are `***`.
    pub args: Vec<JobArg>,
    /// The worst outcome of its workers: `ok`, `failed`, `timed_out`, `lost`, `cancelled`.
    #[schema(value_type = crate::openapi::JobStatusDoc)]
    pub status: String,
    /// Workers it went to.
    pub workers: i64,
    /// Of those, exited 0.
    pub ok: i64,
    /// Arrival to summary (milliseconds).
    pub duration_ms: i64,
}

/// One argument of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobArg {
    /// Name.
    pub key: String,
    /// Value (`***` for a secret-looking name).
    pub value: String,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// One worker's part of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobWorkerView {
    /// Worker identity.
    pub worker: String,
    /// `ok`, `failed`, `timed_out`, `lost`, `cancelled`, `no_response`, `offline`, `skipped`,
    /// `detached`.
    #[schema(value_type = crate::openapi::JobOutcomeDoc)]
    pub outcome: String,
    /// The plugin's exit code, when it exited.
    pub exit_code: Option<i64>,
    /// From its first answer (`Accepted`) to its end (milliseconds).
    pub duration_ms: i64,
    /// The last 64 KiB of its output (stderr lines start with `[stderr] `).
    pub output: String,
    /// Earlier output was left out.
    pub truncated: bool,
}

/// A job with every worker's outcome and output.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// What the list shows.
    #[serde(flatten)]
    pub job: JobSummary,
    /// Every worker it went to, in the order they were reported.
    pub outcomes: Vec<JobWorkerView>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: i64,
    identity: String,
    service: String,
    algorithm: String,
    plugin: String,
    command: String,
    args: String,
    started: i64,
    duration_ms: i64,
    status: String,
    n_workers: i64,
    n_ok: i64,
}

impl JobRow {
    fn summary(self) -> JobSummary {
        let args: Vec<(String, String)> = serde_json::from_str(&self.args).unwrap_or_default();
        JobSummary {
            id: self.id,
            started: rfc3339(self.started),
            started_unix_ms: self.started,
            identity: self.identity,
            service: self.service,
            algorithm: self.algorithm,
            plugin: self.plugin,
            command: serde_json::from_str(&self.command).unwrap_or_default(),
            args: args
                .into_iter()
                .map(|(key, value)| JobArg { key, value })
                .collect(),
            status: self.status,
            workers: self.n_workers,
            ok: self.n_ok,
            duration_ms: self.duration_ms,
        }
    }
}

#[derive(sqlx::FromRow)]
struct WorkerRow {
    worker: String,
    outcome: String,
    exit_code: Option<i64>,
    duration_ms: i64,
    output: String,
    truncated: bool,
}

const JOB_COLUMNS: &str = "id, identity, service, algorithm, plugin, command, args, started, \
     duration_ms, status, n_workers, n_ok";

fn time_param(name: &str, text: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
        ApiError::BadRequest(format!("{name} `{text}` is not an RFC 3339 time: {e}"))
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Ok(Some(ms))
}

/// The caller's team's jobs, newest first, filtered and paged (`limit` with `cursor`, or with
/// `offset`).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", security(("jwt" = [])),
    params(JobQuery),
    responses((status = 200, body = JobPage),
        (status = 400, description = "A parameter is unknown or malformed (a time that is not RFC 3339, a bad cursor, an unknown status), or both `cursor` and `offset` are given", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    user: AuthUser,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(s) = &q.status {
        s.parse::<JobStatus>()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    let since = time_param("since", &q.since)?;
    let until = time_param("until", &q.until)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    if q.cursor.is_some() && q.offset.is_some() {
        return Err(ApiError::BadRequest(
            "give either cursor or offset, not both".into(),
        ));
    }
    let cursor = match &q.cursor {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| ApiError::BadRequest(format!("cursor `{c}` is not one we gave")))?,
        ),
    };
    let offset = i64::from(q.offset.unwrap_or(0));
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE team_id = $1 \
         AND ($2 IS NULL OR service = $2) AND ($3 IS NULL OR status = $3) \
         AND ($4 IS NULL OR started >= $4) AND ($5 IS NULL OR started < $5) \
         AND ($6 IS NULL OR id < $6) ORDER BY id DESC LIMIT $7 OFFSET $8"
    );
    let rows: Vec<JobRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql)
            .bind(user.team_id).bind(&q.service).bind(&q.status).bind(since).bind(until)
            .bind(cursor).bind(i64::from(limit) + 1).bind(offset)
            .fetch_all(pool).await?
    });
    let more = rows.len() > limit as usize;
    let jobs: Vec<JobSummary> = rows
        .into_iter()
        .take(limit as usize)
        .map(JobRow::summary)
        .collect();
    let next_cursor = if more {
        jobs.last().map(|j| j.id.to_string())
    } else {
        None
    };
    Ok(Json(JobPage { jobs, next_cursor }))
}

/// One job of the caller's team, with every worker's outcome and the tail of its output.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", security(("jwt" = [])),
    params(("id" = JobId, Path, description = "Job id")),
    responses((status = 200, body = JobView),
        (status = 404, description = "No job of that id in the caller's team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no job {id}"));
    let job_id = id
        .parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(not_found)?;
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND team_id = $2");
    let (row, workers): (Option<JobRow>, Vec<WorkerRow>) = on_db!(&state.db, pool => {
        let row = sqlx::query_as(&sql).bind(job_id).bind(user.team_id)
            .fetch_optional(pool).await?;
        let workers = sqlx::query_as(
            "SELECT worker, outcome, exit_code, duration_ms, output, truncated \
             FROM job_workers WHERE job_id = $1 ORDER BY position")
            .bind(job_id).fetch_all(pool).await?;
        (row, workers)
    });
    let row = row.ok_or_else(not_found)?;
    Ok(Json(JobView {
        job: row.summary(),
        outcomes: workers
            .into_iter()
            .map(|w| JobWorkerView {
                worker: w.worker,
                outcome: w.outcome,
                exit_code: w.exit_code,
                duration_ms: w.duration_ms,
                output: w.output,
                truncated: w.truncated,
            })
            .collect(),
    }))
}

/// Deletes the jobs that started more than `retention` ago; returns how many.
pub(crate) async fn prune(db: &Db, retention: Duration) -> Result<u64, sqlx::Error> {
    let cutoff = now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let n = on_db!(db, pool => {
        sqlx::query("DELETE FROM jobs WHERE started < $1")
            .bind(cutoff).execute(pool).await?.rows_affected()
    });
    Ok(n)
}
