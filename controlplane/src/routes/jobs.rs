//! Job history: every request through a service, as the broker reported it when it ended
//! (`POST /api/v1/broker/jobs`, broker token), listed and shown to the members of the caller's
//! team (`GET /api/v1/jobs`, `GET /api/v1/jobs/{id}`), deleted after the retention
//! (`--job-retention`, [`prune`]). Not configuration: no revision, no event.

use crate::auth::{AuthUser, BrokerAuth};
use crate::db::{now_ms, on_db, rfc3339, Db};
use crate::error::ApiError;
use crate::extract::{Json, JsonBody, Path};
use crate::job_store::{merge, pack, unpack, PreparedBatch};
use crate::state::AppState;
use crate::stored::{readable, Row, Unreadable, Why};
use api::broker::JOBS_MAX_BODY;
use api::jobs::{
    JobArg, JobPage, JobQuery, JobSummary, JobView, JobWorkerView, JobsAnswer, TriggerMinuteView,
    DEFAULT_LIMIT, MAX_LIMIT, MAX_MINUTES,
};
use api::schema::JobId;
use api::ErrorBody;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use proto::job::TriggerMinute;
use proto::job::{redact_arg, redact_output, redact_text, JobBatch, JobWorker, StatusCounts};
use proto::TextEnum;
use std::collections::HashMap;
use std::time::Duration;

/// Job records from the broker (`proto::job::JobBatch`), stored once per `key`; parts of one
/// record (same `key`, other workers) are merged.
///
/// A job is one row: its workers are one JSON array in it, zstd-compressed (a worker named
/// twice is kept once, the first time), so a fan-out to 1,000 workers costs one insert of a
/// few KB.
///
/// The body may be sent `Content-Encoding: zstd` (as the broker does: a few KB a job instead
/// of ~140 KB of JSON for 1,000 workers), one frame that states its size; decompressed, it
/// is held to the same limit as a plain body.
#[utoipa::path(post, path = "/api/v1/broker/jobs", tag = "broker", security(("broker_token" = [])),
    request_body = JobBatch,
    responses((status = 200, body = JobsAnswer),
        (status = 422, description = "A batch, record or field is over its stated bound", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn ingest(
    State(state): State<AppState>,
    _broker: BrokerAuth,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<JobsAnswer>, ApiError> {
    let limit = JOBS_MAX_BODY.max(state.settings.max_body_bytes);
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase());
    let zstd = match encoding.as_deref() {
        None | Some("identity") => false,
        Some("zstd") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "Content-Encoding `{other}` is not taken here: send the batch as it is or as zstd"
            )))
        }
    };
    let PreparedBatch { jobs, minutes } = state.jobs.prepare(body, zstd, limit).await?;
    let answer = store(&state.db, jobs).await?;
    store_minutes(&state.db, minutes).await?;
    Ok(Json(answer))
}

/// Stores triggers' counts, each replacing the count so far of its source and minute (a
/// report of a team that does not exist is left out).
async fn store_minutes(db: &Db, minutes: Vec<TriggerMinute>) -> Result<(), ApiError> {
    if minutes.is_empty() {
        return Ok(());
    }
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    on_db!(db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        for m in &minutes {
            let c = &m.counts;
            sqlx::query(
                "INSERT INTO trigger_minutes (team_id, trigger_path, minute, source, identity, \
                 service, readers, ok, failed, timed_out, lost, cancelled) \
                 SELECT id, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 FROM teams \
                 WHERE name = $1 \
                 ON CONFLICT (team_id, trigger_path, minute, source, identity, service, readers) \
                 DO UPDATE SET ok = excluded.ok, failed = excluded.failed, \
                 timed_out = excluded.timed_out, lost = excluded.lost, \
                 cancelled = excluded.cancelled")
                .bind(&m.team).bind(&m.trigger).bind(n(m.minute_unix_ms)).bind(&m.source)
                .bind(&m.identity).bind(&m.service).bind(m.readers.as_str())
                .bind(n(c.ok)).bind(n(c.failed)).bind(n(c.timed_out)).bind(n(c.lost))
                .bind(n(c.cancelled))
                .execute(&mut *tx).await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// Stores prepared records (see [`ingest`]) in one transaction, at the caller's priority:
/// the write lock is never held by an idle-priority thread.
async fn store(db: &Db, batch: Vec<crate::job_store::Prepared>) -> Result<JobsAnswer, ApiError> {
    let (mut stored, mut skipped) = (0, 0);
    // The transaction reads before it writes: on SQLite `db::begin` takes the write lock at
    // its start (a worker-state report committing between the read and the write would
    // otherwise make it fail with "database is locked").
    let mut teams: HashMap<String, Option<i64>> = HashMap::new();
    on_db!(db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        for p in batch {
            let job = &p.record;
            let team_id = match teams.get(job.team.as_str()) {
                Some(known) => *known,
                None => {
                    let id: Option<i64> =
                        sqlx::query_scalar("SELECT id FROM teams WHERE name = $1")
                            .bind(&job.team).fetch_optional(&mut *tx).await?;
                    teams.insert(job.team.clone(), id);
                    id
                }
            };
            let Some(team_id) = team_id else {
                skipped += 1;
                continue;
            };
            let started = i64::try_from(job.started_unix_ms).unwrap_or(i64::MAX);
            // A schedule's run (its tag names one of the team's runs, sent as its owner):
            // the job keeps the schedule's name and when the run was due.
            let run: Option<(String, i64)> = match &job.tag {
                None => None,
                Some(tag) => sqlx::query_as(
                    "SELECT s.name, r.scheduled FROM schedule_runs r \
                     JOIN schedules s ON s.id = r.schedule_id \
                     WHERE r.tag = $1 AND s.team_id = $2 AND s.owner = $3")
                    .bind(tag).bind(team_id).bind(&job.identity)
                    .fetch_optional(&mut *tx).await?,
            };
            let (schedule, scheduled) = run.unzip();
            let duration = i64::try_from(job.duration_ms).unwrap_or(i64::MAX);
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO jobs (team_id, report_key, identity, service, algorithm, plugin, \
                 command, args, started, duration_ms, status, n_workers, n_ok, workers_zstd, \
                 readers, schedule, scheduled, trigger_path) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                 $16, $17, $18) \
                 ON CONFLICT (report_key) DO NOTHING RETURNING id")
                .bind(team_id).bind(&job.key).bind(&job.identity).bind(&job.service)
                .bind(job.algorithm.as_str()).bind(&job.plugin).bind(&p.command).bind(&p.args)
                .bind(started).bind(duration).bind(p.tally.status.as_str())
                .bind(p.tally.workers).bind(p.tally.ok).bind(&p.workers).bind(job.readers.as_str())
                .bind(schedule).bind(scheduled).bind(&job.trigger)
                .fetch_optional(&mut *tx).await?;
            if inserted.is_none() {
                // Another part of a record stored before, or the same record again.
                let existing: Option<(i64, String, Option<Vec<u8>>)> = sqlx::query_as(
                    "SELECT id, workers, workers_zstd FROM jobs \
                     WHERE report_key = $1 AND team_id = $2")
                    .bind(&job.key).bind(team_id).fetch_optional(&mut *tx).await?;
                let Some((job_id, text, packed)) = existing else {
                    // The key is another team's: not this record's to extend.
                    skipped += 1;
                    continue;
                };
                let Ok(merged) = extend(job_id, &job.team, text, packed, p.workers) else {
                    skipped += 1;
                    continue;
                };
                if let Some((all, tally)) = merged {
                    sqlx::query("UPDATE jobs SET status = $1, n_workers = $2, n_ok = $3, \
                                 workers = '[]', workers_zstd = $4 WHERE id = $5")
                        .bind(tally.status.as_str()).bind(tally.workers).bind(tally.ok)
                        .bind(pack(&all)).bind(job_id)
                        .execute(&mut *tx).await?;
                }
            }
            stored += 1;
        }
        tx.commit().await?;
    });
    Ok(JobsAnswer { stored, skipped })
}

/// The workers of stored job `id` with `added` (packed) merged in, and their tally; `None`
/// when nothing is new. An error when the stored ones or the added ones do not read (logged:
/// the part is skipped).
fn extend(
    id: i64,
    team: &str,
    text: String,
    packed: Option<Vec<u8>>,
    added: Vec<u8>,
) -> Result<Option<(String, crate::job_store::Tally)>, ()> {
    let job = id.to_string();
    let row = Row::of("job", team, &job);
    let merged = match (unpack(text, packed), unpack(String::new(), Some(added))) {
        (Some(known), Some(added)) => merge(&known, &added).map_err(|e| row.fail(e)),
        _ => Err(row.fail(Why::Unpack)),
    };
    merged.map_err(|e| tracing::error!(error = %e, "a part of a stored job is skipped"))
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
    schedule: Option<String>,
    scheduled: Option<i64>,
    trigger_path: Option<String>,
}

impl JobRow {
    /// The job as the API shows it: its command and arguments redacted again as the broker
    /// does (a record stored before a pattern was known, or sent by an older broker).
    fn summary(self, team: &str) -> Result<JobSummary, Unreadable> {
        let id = self.id.to_string();
        let job = Row::of("job", team, &id);
        let args: Vec<(String, String)> = job.json(&self.args)?;
        let command: Vec<String> = job.json(&self.command)?;
        let (algorithm, status) = (job.text(&self.algorithm)?, job.text(&self.status)?);
        let mut found = Vec::new();
        Ok(JobSummary {
            id: self.id,
            started: rfc3339(self.started),
            started_unix_ms: self.started,
            identity: self.identity,
            service: self.service,
            algorithm,
            plugin: self.plugin,
            command: command
                .iter()
                .map(|c| redact_text(c, &mut found).into_owned())
                .collect(),
            args: args
                .into_iter()
                .map(|(key, value)| JobArg {
                    value: redact_arg(&key, &value, &mut found),
                    key,
                })
                .collect(),
            status,
            workers: self.n_workers,
            ok: self.n_ok,
            duration_ms: self.duration_ms,
            schedule: self.schedule,
            scheduled_at: self.scheduled.map(rfc3339),
            scheduled_unix_ms: self.scheduled,
            trigger: self.trigger_path,
        })
    }
}

/// A job's row with its workers (a JSON array of [`JobWorker`], in one of two columns: see
/// [`unpack`]).
#[derive(sqlx::FromRow)]
struct WithWorkers {
    #[sqlx(flatten)]
    job: JobRow,
    workers: String,
    workers_zstd: Option<Vec<u8>>,
}

/// The condition for the jobs the caller reads, with parameter `$identity` their identity
/// and `$admin` whether they are an admin of the team: a job is every member's (`team`), its
/// sender's and the admins' (`sender_and_admins`), or its sender's alone (`sender`, and any
/// text not known).
fn readers(identity: u8, admin: u8) -> String {
    format!(
        "(readers = 'team' OR identity = ${identity} \
         OR (readers = 'sender_and_admins' AND ${admin}))"
    )
}

const JOB_COLUMNS: &str = "id, identity, service, algorithm, plugin, command, args, started, \
     duration_ms, status, n_workers, n_ok, schedule, scheduled, trigger_path";

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
/// `offset`). Only the jobs the caller reads are listed: by default a job is its sender's and
/// the team's admins' (a service's `history` = `team` opens its jobs to every member), and
/// one through a `local` service or worker its sender's alone.
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
         AND ($6 IS NULL OR id < $6) AND ($11 IS NULL OR schedule = $11) \
         AND ($12 IS NULL OR trigger_path = $12) AND {} \
         ORDER BY id DESC LIMIT $7 OFFSET $8",
        readers(9, 10)
    );
    let rows: Vec<JobRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql)
            .bind(user.team_id).bind(&q.service).bind(q.status.map(TextEnum::as_str))
            .bind(since).bind(until)
            .bind(cursor).bind(i64::from(limit) + 1).bind(offset).bind(&user.identity)
            .bind(user.is_admin()).bind(&q.schedule).bind(&q.trigger)
            .fetch_all(pool).await?
    });
    let more = rows.len() > limit as usize;
    // The cursor is the last row's, read or not: the next page starts after it either way.
    let last = rows[..rows.len().min(limit as usize)].last().map(|j| j.id);
    let summaries = rows.into_iter().take(limit as usize);
    let jobs = readable("a page of jobs", summaries.map(|j| j.summary(&user.team)));
    let next_cursor = last.filter(|_| more).map(|id| id.to_string());
    let minutes = match &q.trigger {
        Some(trigger) => minutes(&state.db, &user, trigger, &q.service, since, until).await?,
        None => Vec::new(),
    };
    Ok(Json(JobPage {
        jobs,
        next_cursor,
        minutes,
    }))
}

/// Trigger `trigger`'s requests per minute by status, newest first, summed over the sources
/// that counted them; only the counts the caller reads (as for jobs).
async fn minutes(
    db: &Db,
    user: &AuthUser,
    trigger: &str,
    service: &Option<String>,
    since: Option<i64>,
    until: Option<i64>,
) -> Result<Vec<TriggerMinuteView>, ApiError> {
    let sql = format!(
        "SELECT minute, CAST(SUM(ok) AS BIGINT), CAST(SUM(failed) AS BIGINT), \
         CAST(SUM(timed_out) AS BIGINT), CAST(SUM(lost) AS BIGINT), \
         CAST(SUM(cancelled) AS BIGINT) FROM trigger_minutes \
         WHERE team_id = $1 AND trigger_path = $2 AND ($3 IS NULL OR service = $3) \
         AND ($4 IS NULL OR minute >= $4) AND ($5 IS NULL OR minute < $5) AND {} \
         GROUP BY minute ORDER BY minute DESC LIMIT {MAX_MINUTES}",
        readers(6, 7)
    );
    let rows: Vec<(i64, i64, i64, i64, i64, i64)> = on_db!(db, pool => {
        sqlx::query_as(&sql)
            .bind(user.team_id).bind(trigger).bind(service).bind(since).bind(until)
            .bind(&user.identity).bind(user.is_admin())
            .fetch_all(pool).await?
    });
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(rows
        .into_iter()
        .map(
            |(minute, ok, failed, timed_out, lost, cancelled)| TriggerMinuteView {
                minute: rfc3339(minute),
                minute_unix_ms: minute,
                counts: StatusCounts {
                    ok: n(ok),
                    failed: n(failed),
                    timed_out: n(timed_out),
                    lost: n(lost),
                    cancelled: n(cancelled),
                },
            },
        )
        .collect())
}

/// One job of the caller's team, with every worker's outcome and the tail of its output (a
/// job the caller reads: see `GET /api/v1/jobs`). Secrets found by pattern in its command,
/// arguments and output are `***`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", security(("jwt" = [])),
    params(("id" = JobId, Path, description = "Job id")),
    responses((status = 200, body = JobView),
        (status = 404, description = "No job of that id in the caller's team that the caller reads", body = ErrorBody),
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
    let sql = format!(
        "SELECT {JOB_COLUMNS}, workers, workers_zstd FROM jobs WHERE id = $1 AND team_id = $2 \
         AND {}",
        readers(3, 4)
    );
    let row: Option<WithWorkers> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(job_id).bind(user.team_id).bind(&user.identity)
            .bind(user.is_admin())
            .fetch_optional(pool).await?
    });
    let row = row.ok_or_else(not_found)?;
    let job = Row::of("job", &user.team, &id);
    let json = unpack(row.workers, row.workers_zstd).ok_or_else(|| job.fail(Why::Unpack))?;
    let workers: Vec<JobWorker> = job.json(&json)?;
    Ok(Json(JobView {
        job: row.job.summary(&user.team)?,
        outcomes: workers
            .into_iter()
            .map(|w| JobWorkerView {
                worker: w.worker,
                outcome: w.outcome,
                exit_code: w.exit_code.map(i64::from),
                duration_ms: i64::try_from(w.duration_ms).unwrap_or(i64::MAX),
                output: redact_output(&w.output, &[]).into_owned(),
                truncated: w.truncated,
            })
            .collect(),
    }))
}

/// Deletes the jobs that started, and the triggers' counts of minutes that began, more than
/// `retention` ago; returns how many jobs.
pub(crate) async fn prune(db: &Db, retention: Duration) -> Result<u64, sqlx::Error> {
    let cutoff = now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let n = on_db!(db, pool => {
        sqlx::query("DELETE FROM trigger_minutes WHERE minute < $1")
            .bind(cutoff).execute(pool).await?;
        sqlx::query("DELETE FROM jobs WHERE started < $1")
            .bind(cutoff).execute(pool).await?.rows_affected()
    });
    Ok(n)
}
