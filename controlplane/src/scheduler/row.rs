//! A schedule as the store holds it, and what it reads back as: its view, its timetable,
//! its request.

use crate::db::rfc3339;
use crate::stored::{Row, Unreadable, Why};
use crate::timetable::Timetable;
use api::gateway::GatewayRequest;
use api::schedules::{self, Concurrency, RunView, ScheduleState, ScheduleView, ScheduleVisibility};
use api::Timeout;

/// The columns of [`ScheduleRow`], `s` the schedule and `r` its last run.
pub(crate) const SELECT: &str = "SELECT s.id, s.team_id, s.name, s.description, s.service, \
    s.request, s.every_ms, s.jitter_ms, s.cron, s.time_zone, s.concurrency, \
    s.starting_deadline_ms, s.paused, s.reason, s.visibility, s.owner, s.next_due, s.runs, \
    s.skipped, s.created, s.updated, r.scheduled AS last_scheduled, r.started AS last_started, \
    r.outcome AS last_outcome FROM schedules s LEFT JOIN schedule_runs r ON r.id = \
    (SELECT MAX(id) FROM schedule_runs WHERE schedule_id = s.id)";

/// One schedule with its last run.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ScheduleRow {
    pub id: i64,
    pub team_id: i64,
    pub name: String,
    pub description: String,
    pub service: String,
    pub request: String,
    pub every_ms: Option<i64>,
    pub jitter_ms: i64,
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    pub concurrency: String,
    pub starting_deadline_ms: Option<i64>,
    pub paused: bool,
    pub reason: Option<String>,
    pub visibility: String,
    pub owner: String,
    pub next_due: i64,
    pub runs: i64,
    pub skipped: i64,
    pub created: i64,
    pub updated: i64,
    pub last_scheduled: Option<i64>,
    pub last_started: Option<i64>,
    pub last_outcome: Option<String>,
}

impl ScheduleRow {
    fn row(&self) -> Row<'_> {
        Row::of("schedule", "", &self.name)
    }

    /// When it is due.
    pub fn timetable(&self) -> Result<Timetable, Unreadable> {
        let made = match (&self.cron, self.every_ms) {
            (Some(cron), _) => Timetable::cron(cron, self.time_zone.as_deref()),
            (None, Some(every)) => Timetable::every(every, self.created),
            (None, None) => return Err(self.row().fail(Why::Invalid("no timetable".into()))),
        };
        made.map_err(|e| self.row().fail(Why::Invalid(e.to_string())))
    }

    /// What each run sends.
    pub fn request(&self) -> Result<GatewayRequest, Unreadable> {
        self.row().json(&self.request)
    }

    /// `forbid`, `allow` or `replace`.
    pub fn concurrency(&self) -> Result<Concurrency, Unreadable> {
        self.row().text(&self.concurrency)
    }

    /// The schedule as the API shows it.
    pub fn view(self) -> Result<ScheduleView, Unreadable> {
        let row = self.row();
        let last_run = match (self.last_scheduled, self.last_started, &self.last_outcome) {
            (Some(scheduled), Some(started), Some(outcome)) => Some(RunView {
                scheduled_at: rfc3339(scheduled),
                scheduled_unix_ms: scheduled,
                started_at: rfc3339(started),
                outcome: row.text(outcome)?,
            }),
            _ => None,
        };
        let duration = |ms: Option<i64>| ms.and_then(|ms| Timeout::from_ms(ms.max(0) as u64));
        let timetable = match (self.cron.clone(), duration(self.every_ms)) {
            (Some(cron), _) => schedules::Timetable::Cron(schedules::Cron {
                cron,
                time_zone: self.time_zone.clone(),
            }),
            (None, Some(every)) => schedules::Timetable::Every(schedules::Every {
                every,
                jitter: duration(Some(self.jitter_ms).filter(|j| *j > 0)),
            }),
            (None, None) => return Err(row.fail(Why::Invalid("no timetable".into()))),
        };
        Ok(ScheduleView {
            request: self.request()?,
            concurrency: self.concurrency()?,
            visibility: row.text::<ScheduleVisibility>(&self.visibility)?,
            state: match self.paused {
                true => ScheduleState::Paused,
                false => ScheduleState::Active,
            },
            next_run: (!self.paused).then(|| rfc3339(self.next_due)),
            timetable,
            starting_deadline: duration(self.starting_deadline_ms),
            last_run,
            name: self.name,
            description: self.description,
            service: self.service,
            reason: self.reason,
            owner: self.owner,
            runs: self.runs,
            skipped: self.skipped,
            created: rfc3339(self.created),
            updated: rfc3339(self.updated),
        })
    }
}
