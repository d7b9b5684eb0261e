//! Schedules: a request on a timetable, started by the control plane as its owner
//! (`/api/v1/schedules/...`). Each run is a request through the broker, recorded in the job
//! history with the schedule's name and the time it was due.

use crate::gateway::GatewayRequest;
use crate::timeout::Timeout;
use proto::text_enum;
use serde::{Deserialize, Serialize};

text_enum! {
    ("concurrency", "lowercase")
    /// What a due run does while the schedule's last run still runs (as Kubernetes'
    /// CronJob): `forbid` (default: it is skipped, and counted), `allow` (both run) or
    /// `replace` (the last run is cancelled).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum Concurrency {
        /// Skip the new run.
        #[default]
        Forbid,
        /// Run both.
        Allow,
        /// Cancel the running one, then run.
        Replace,
    }
}

text_enum! {
    ("schedule state", "lowercase")
    /// Whether due runs start.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum ScheduleState {
        /// Runs start when due.
        Active,
        /// Nothing starts (see `reason`).
        Paused,
    }
}

text_enum! {
    ("run outcome", "snake_case")
    /// How one run of a schedule went: `running`, then as its job's status (`ok`, `failed`,
    /// `timed_out`, `lost`, `cancelled`), or `refused` (the broker did not run it:
    /// `NoWorkersOnline`, `Forbidden`, ...).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "snake_case")]
    pub enum RunOutcome {
        /// Started, not ended yet.
        Running,
        /// Every worker exited 0.
        Ok,
        /// Some worker failed, or the run was stopped by `max_failures`.
        Failed,
        /// Some worker timed out, gave no response or was offline.
        TimedOut,
        /// The connection to the broker or a worker was lost.
        Lost,
        /// Cancelled (`replace`).
        Cancelled,
        /// The broker refused it before anything ran.
        Refused,
    }
}

text_enum! {
    ("schedule visibility", "lowercase")
    /// Who sees a schedule: `local` (its owner and the team's admins) or `team` (every
    /// member). Only its owner or an admin changes it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum ScheduleVisibility {
        /// Its owner and the admins.
        #[default]
        Local,
        /// Every member of the team.
        Team,
    }
}

/// Every so long, counted from the schedule's creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Every {
    /// The period (`"10m"`), at least `1s`.
    pub every: Timeout,
    /// Each run starts up to this much later, at random (spreads the load of many
    /// schedules).
    pub jitter: Option<Timeout>,
}

/// A cron expression in a time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Cron {
    /// Five fields (minute hour day month weekday), six (with seconds first) or `@daily`-
    /// style; weekdays by name (`Mon-Fri`).
    pub cron: String,
    /// The IANA time zone it is read in (default `UTC`), e.g. `Europe/Berlin`; its
    /// daylight-saving changes are followed.
    pub time_zone: Option<String>,
}

/// When a schedule is due: `{"every": "10m"}` or `{"cron": "0 3 * * *", "time_zone":
/// "Europe/Berlin"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Timetable {
    /// Every so long.
    Every(Every),
    /// By a cron expression.
    Cron(Cron),
}

/// A new schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Name, unique in the team (409 when taken).
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::Name))]
    pub name: String,
    /// Free text.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Description>))]
    pub description: Option<String>,
    /// The service each run goes to (`service` or `team/service`).
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::ServiceRef))]
    pub service: String,
    /// What each run sends: plugin, command, args, timeout and the fleet options (`batch`,
    /// `max_failures`, `quorum`, `deadline`, `only`), as the gateway takes them (a run
    /// always waits for its end: `wait` is not read).
    pub request: GatewayRequest,
    /// When it is due (422 for a cron expression or time zone that does not read).
    pub timetable: Timetable,
    /// While the last run still runs: `forbid` (default), `allow` or `replace`.
    pub concurrency: Option<Concurrency>,
    /// Catch-up of runs missed while no control plane could start them: absent, they are
    /// skipped; given (`"1h"`), the latest missed one runs once if it is at most this late.
    pub starting_deadline: Option<Timeout>,
    /// `local` (default) or `team`.
    pub visibility: Option<ScheduleVisibility>,
    /// Created paused.
    pub paused: Option<bool>,
}

/// Why a schedule is paused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PauseSchedule {
    /// Shown in the schedule's `reason`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Description>))]
    pub reason: Option<String>,
}

/// One run of a schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunView {
    /// When it was due (RFC 3339); for a run started by hand, when it was asked for.
    pub scheduled_at: String,
    /// The same in milliseconds since the Unix epoch.
    pub scheduled_unix_ms: i64,
    /// When the control plane sent it (RFC 3339).
    pub started_at: String,
    /// How it went so far.
    pub outcome: RunOutcome,
}

/// A schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleView {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Where its runs go.
    pub service: String,
    /// What each run sends.
    pub request: GatewayRequest,
    /// When it is due.
    pub timetable: Timetable,
    /// `forbid`, `allow` or `replace`.
    pub concurrency: Concurrency,
    /// Missed runs: `null` skips them, else the latest runs once if at most this late.
    pub starting_deadline: Option<Timeout>,
    /// `active` or `paused`.
    pub state: ScheduleState,
    /// Why it is paused (by whom, or why it paused itself).
    pub reason: Option<String>,
    /// `local` or `team`.
    pub visibility: ScheduleVisibility,
    /// Whose rights its runs have (at the time of each run).
    pub owner: String,
    /// When it is next due (RFC 3339), `null` when paused.
    pub next_run: Option<String>,
    /// Its last run, if any.
    pub last_run: Option<RunView>,
    /// Runs started.
    pub runs: i64,
    /// Due runs that did not start (`forbid`, or missed and not caught up).
    pub skipped: i64,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub updated: String,
}
