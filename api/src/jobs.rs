//! Job history: every request through a service, as the broker reported it when it ended
//! (`GET /api/v1/jobs`, `GET /api/v1/jobs/{id}`; the broker's `POST /api/v1/broker/jobs`
//! takes `proto::job::JobBatch` and answers [`JobsAnswer`]).

use proto::job::{JobOutcome, JobStatus, StatusCounts};
use proto::Algorithm;
use serde::{Deserialize, Serialize};

/// Jobs a page holds when the request does not say.
pub const DEFAULT_LIMIT: u32 = 50;
/// Jobs a page holds at most.
pub const MAX_LIMIT: u32 = 500;
/// Minutes of a trigger's counts a page holds at most (a day's), newest first.
pub const MAX_MINUTES: u32 = 1440;

/// What the control plane did with a batch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobsAnswer {
    /// Records (or parts of records) stored; a record delivered again is counted but not
    /// stored twice.
    pub stored: u64,
    /// Records of a team that does not exist (any more): left out.
    pub skipped: u64,
}

/// Which jobs, and which page of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Only requests to this service (`name` in the caller's team, `team/name` for another team's).
    pub service: Option<String>,
    /// Only runs of this schedule.
    pub schedule: Option<String>,
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs started at or after this time (RFC 3339, e.g. `2026-01-31T12:00:00Z`).
    pub since: Option<String>,
    /// Only jobs started before this time (RFC 3339).
    pub until: Option<String>,
    /// Only requests written to this trigger (its path as the fs wrote it, e.g.
    /// `/logs/access`): the page's jobs are its failures, and `minutes` holds its requests
    /// counted per minute by status (`since` and `until` apply to both).
    pub trigger: Option<String>,
    /// Jobs per page, 1 to 500 (default 50).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 500))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page: the jobs after it (newest first).
    pub cursor: Option<String>,
    /// Jobs to skip instead of a cursor.
    pub offset: Option<u32>,
}

/// A job in a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobSummary {
    /// Id.
    pub id: i64,
    /// When the broker received the request (RFC 3339).
    pub started: String,
    /// The same, in milliseconds since the Unix epoch.
    pub started_unix_ms: i64,
    /// Who sent it (user or worker identity).
    pub identity: String,
    /// The service: `name` in the caller's team, `team/name` for another team's.
    pub service: String,
    /// `roundrobin`, `serial` or `mirror`.
    pub algorithm: Algorithm,
    /// The plugin.
    pub plugin: String,
    /// The command words.
    pub command: Vec<String>,
    /// Arguments; values of secret-looking names (`secret`, `token`, `password`, `key`, ...)
    /// are `***`.
    pub args: Vec<JobArg>,
    /// The worst outcome of its workers: `ok`, `failed`, `timed_out`, `lost`, `cancelled`.
    pub status: JobStatus,
    /// Workers it went to.
    pub workers: i64,
    /// Of those, exited 0.
    pub ok: i64,
    /// Arrival to summary (milliseconds).
    pub duration_ms: i64,
    /// The schedule it was a run of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// For a schedule's run: when it was due (RFC 3339); `started` is when it arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
    /// The same in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_unix_ms: Option<i64>,
    /// The trigger file whose write the request was, if one was.
    #[serde(default)]
    pub trigger: Option<String>,
}

/// One argument of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobArg {
    /// Name.
    pub key: String,
    /// Value (`***` for a secret-looking name).
    pub value: String,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
    /// With `trigger`: its requests per minute by status, newest first (the minutes with
    /// requests, at most 1440, `MAX_MINUTES`, on every page); else empty.
    #[serde(default)]
    pub minutes: Vec<TriggerMinuteView>,
}

/// A trigger's requests in one minute, by status.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TriggerMinuteView {
    /// The minute's start (RFC 3339).
    pub minute: String,
    /// The same, in milliseconds since the Unix epoch.
    pub minute_unix_ms: i64,
    /// Its requests by status.
    #[serde(flatten)]
    pub counts: StatusCounts,
}

/// One worker's part of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobWorkerView {
    /// Worker identity.
    pub worker: String,
    /// `ok`, `failed`, `timed_out`, `lost`, `cancelled`, `no_response`, `offline`, `skipped`,
    /// `detached`, `retried`.
    pub outcome: JobOutcome,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    /// What the list shows.
    #[serde(flatten)]
    pub job: JobSummary,
    /// Every worker it went to, in the order they were reported.
    pub outcomes: Vec<JobWorkerView>,
}
