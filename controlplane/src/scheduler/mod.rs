//! The scheduler: every [`TICK`], the control plane that holds the scheduler's lock
//! ([`crate::once`]: one across replicas on PostgreSQL) starts the schedules' due runs.
//!
//! A due time is claimed by moving the schedule's `next_due` past it in the same
//! transaction that records the run (`schedule_runs`), on the condition that `next_due` is
//! still what was read: a due time is handled once, also across replicas and restarts.
//! Due times that passed while no control plane ran (more than one, or one more than
//! [`MISSED_AFTER_MS`] late) are missed: skipped, or with a starting deadline the latest
//! runs once if it is still within it. A run goes as its owner, with the owner's rights at
//! that moment (a JWT made for it); an owner who is no longer a member pauses the schedule,
//! which says why. The run itself is `run.rs`.

mod row;
mod run;

pub(crate) use row::{ScheduleRow, SELECT};

use crate::change::change;
use crate::db::{begin, now_ms, on_db};
use crate::error::ApiError;
use crate::once::{once, Work};
use crate::state::AppState;
use api::schedules::{Concurrency, RunOutcome, RunView};
use api::{Action, Object};
use proto::TextEnum;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

/// How often due schedules are looked for.
const TICK: Duration = Duration::from_millis(200);
/// A due time later than this when it is first seen was missed (no control plane ran).
const MISSED_AFTER_MS: i64 = 10_000;

/// The runs this process is sending, by tag: what cancels each (`replace`).
#[derive(Default)]
pub(crate) struct Runs(Mutex<HashMap<String, oneshot::Sender<()>>>);

impl Runs {
    fn add(&self, tag: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tag.to_string(), tx);
        rx
    }

    fn remove(&self, tag: &str) -> Option<oneshot::Sender<()>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(tag)
    }

    /// Cancels the run `tag` if this process sends it.
    fn cancel(&self, tag: &str) {
        if let Some(cancel) = self.remove(tag) {
            let _ = cancel.send(());
        }
    }
}

/// What asking for a run came to.
pub(crate) enum Start {
    /// It was sent.
    Started(RunView),
    /// The last run still runs and the schedule forbids another.
    Forbidden,
    /// Another process handled this due time first.
    Taken,
    /// Its owner is no longer a member: the schedule is paused now.
    Paused(String),
}

/// Looks for due schedules every [`TICK`] until aborted.
pub(crate) fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = forget_dead_runs(&state).await {
            tracing::warn!(error = %e, "cannot mark the runs of a previous start lost");
        }
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = cancel_replaced(&state).await {
                tracing::warn!(error = %e, "cannot read the runs to cancel");
            }
            match once(&state.db, Work::Schedules, due_round(&state)).await {
                Err(e) => tracing::warn!(error = %e, "cannot take the scheduler's lock"),
                Ok(Some(Err(e))) => tracing::warn!(error = %e, "scheduler round failed"),
                Ok(_) => {}
            }
        }
    })
}

/// On SQLite, where one process owns the store, the runs still `running` at a start were
/// its predecessor's, which died with it: they are `lost`, and `forbid` waits for them no
/// more. (On PostgreSQL another replica may be sending them: they end, or expire.)
async fn forget_dead_runs(state: &AppState) -> Result<(), ApiError> {
    if let crate::db::Db::Sqlite(pool) = &state.db {
        sqlx::query("UPDATE schedule_runs SET outcome = $1 WHERE outcome = $2")
            .bind(RunOutcome::Lost.as_str())
            .bind(RunOutcome::Running.as_str())
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Cancels the runs this process sends whose schedule replaced them (on any replica).
async fn cancel_replaced(state: &AppState) -> Result<(), ApiError> {
    let tags: Vec<String> = on_db!(&state.db, pool => {
        sqlx::query_scalar("SELECT tag FROM schedule_runs WHERE cancel AND outcome = 'running'")
            .fetch_all(pool).await?
    });
    for tag in tags {
        state.runs.cancel(&tag);
    }
    Ok(())
}

/// One round: every active schedule whose next due time has come.
async fn due_round(state: &AppState) -> Result<(), ApiError> {
    let now = now_ms();
    let sql = format!("{SELECT} WHERE NOT s.paused AND s.next_due <= $1 ORDER BY s.next_due");
    let due: Vec<ScheduleRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(now).fetch_all(pool).await?
    });
    for row in due {
        if let Err(e) = due_one(state, &row, now).await {
            tracing::warn!(schedule = %row.name, error = %e, "cannot start a due run");
        }
    }
    Ok(())
}

/// Handles the due times of `row` up to `now`: runs one, or skips them as missed.
async fn due_one(state: &AppState, row: &ScheduleRow, now: i64) -> Result<(), ApiError> {
    let timetable = row.timetable()?;
    let first = row.next_due;
    let (passed, latest) = timetable.passed(first, now).unwrap_or((1, first));
    let Some(next) = timetable.next_after(now) else {
        let reason = "its timetable has no more due times".to_string();
        return pause(state, row, Some(first), &reason).await;
    };
    let missed = passed > 1 || now - first > MISSED_AFTER_MS;
    let run_at = match (missed, row.starting_deadline_ms) {
        (false, _) => Some(first),
        (true, Some(deadline)) if now - latest <= deadline => Some(latest),
        (true, _) => None,
    };
    let missed_count = passed - u64::from(run_at.is_some());
    if missed_count > 0 {
        tracing::info!(schedule = %row.name, missed = missed_count, "due runs missed");
    }
    let claim = Claim {
        old: first,
        new: next,
        skipped: missed_count as i64,
    };
    let Some(at) = run_at else {
        if skip(state, row, &claim).await? {
            state
                .metrics
                .schedule_skipped
                .with_label_values(&["missed"])
                .inc_by(passed);
        }
        return Ok(());
    };
    let started = start(state, row, at, Some(claim)).await?;
    if !matches!(started, Start::Taken) && missed_count > 0 {
        let skipped = &state.metrics.schedule_skipped;
        skipped.with_label_values(&["missed"]).inc_by(missed_count);
    }
    Ok(())
}

/// A due time handled: `next_due` moves from `old` to `new` (only if it is still `old`),
/// and `skipped` more due runs did not start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    old: i64,
    new: i64,
    skipped: i64,
}

/// Moves past the due times of `claim` without a run; whether this process did.
async fn skip(state: &AppState, row: &ScheduleRow, claim: &Claim) -> Result<bool, ApiError> {
    let n = on_db!(&state.db, pool => {
        sqlx::query("UPDATE schedules SET next_due = $1, skipped = skipped + $2 \
                     WHERE id = $3 AND next_due = $4 AND NOT paused")
            .bind(claim.new).bind(claim.skipped).bind(row.id).bind(claim.old)
            .execute(pool).await?.rows_affected()
    });
    Ok(n == 1)
}

/// Pauses `row` saying `reason`, and (with `due`) moves past that due time, which runs
/// nothing. A change like any other: the event stream hears of it.
pub(crate) async fn pause(
    state: &AppState,
    row: &ScheduleRow,
    due: Option<i64>,
    reason: &str,
) -> Result<(), ApiError> {
    let team: String = on_db!(&state.db, pool => {
        sqlx::query_scalar("SELECT name FROM teams WHERE id = $1").bind(row.team_id)
            .fetch_one(pool).await?
    });
    tracing::warn!(schedule = %row.name, %team, reason, "schedule paused");
    let (now, skipped) = (now_ms(), i64::from(due.is_some()));
    change!(state, Object::Schedule, Action::Updated, team, row.name, tx => {
        sqlx::query("UPDATE schedules SET paused = TRUE, reason = $1, updated = $2, \
                     skipped = skipped + $3 WHERE id = $4")
            .bind(reason).bind(now).bind(skipped).bind(row.id).execute(&mut *tx).await?;
    });
    if due.is_some() {
        state
            .metrics
            .schedule_skipped
            .with_label_values(&["paused"])
            .inc();
    }
    Ok(())
}

/// Starts a run of `row` due at `scheduled` as its owner, under its concurrency policy;
/// with `claim`, only if this process is the one that moves its `next_due`.
pub(crate) async fn start(
    state: &AppState,
    row: &ScheduleRow,
    scheduled: i64,
    claim: Option<Claim>,
) -> Result<Start, ApiError> {
    let Some(token) = run::owner_token(state, row).await? else {
        let reason = format!(
            "its owner {} is no longer a member of the team: paused at {}",
            row.owner,
            crate::db::rfc3339(now_ms())
        );
        pause(state, row, claim.map(|c| c.old), &reason).await?;
        return Ok(Start::Paused(reason));
    };
    let (concurrency, request) = (row.concurrency()?, row.request()?);
    let now = now_ms();
    let tag = format!("schedule-{}-{}", row.id, uuid::Uuid::new_v4().simple());
    let expires = now + run::longest_ms(&request) + 60_000;
    let decided = on_db!(&state.db, pool => {
        let mut tx = begin(pool).await?;
        if let Some(c) = claim {
            let n = sqlx::query("UPDATE schedules SET next_due = $1, skipped = skipped + $2 \
                                 WHERE id = $3 AND next_due = $4 AND NOT paused")
                .bind(c.new).bind(c.skipped).bind(row.id).bind(c.old)
                .execute(&mut *tx).await?.rows_affected();
            if n != 1 {
                return Ok(Start::Taken);
            }
        }
        let running: Vec<String> = sqlx::query_scalar(
            "SELECT tag FROM schedule_runs WHERE schedule_id = $1 AND outcome = 'running' \
             AND expires > $2")
            .bind(row.id).bind(now).fetch_all(&mut *tx).await?;
        if concurrency == Concurrency::Forbid && !running.is_empty() {
            if claim.is_some() {
                sqlx::query("UPDATE schedules SET skipped = skipped + 1 WHERE id = $1")
                    .bind(row.id).execute(&mut *tx).await?;
                tx.commit().await?;
                state.metrics.schedule_skipped.with_label_values(&["forbid"]).inc();
            }
            return Ok(Start::Forbidden);
        }
        if concurrency == Concurrency::Replace {
            for tag in &running {
                sqlx::query("UPDATE schedule_runs SET cancel = TRUE WHERE tag = $1")
                    .bind(tag).execute(&mut *tx).await?;
            }
        }
        sqlx::query("INSERT INTO schedule_runs (schedule_id, tag, scheduled, started, expires, \
                     outcome) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(row.id).bind(&tag).bind(scheduled).bind(now).bind(expires)
            .bind(RunOutcome::Running.as_str()).execute(&mut *tx).await?;
        sqlx::query("UPDATE schedules SET runs = runs + 1 WHERE id = $1")
            .bind(row.id).execute(&mut *tx).await?;
        tx.commit().await?;
        running
    });
    for replaced in &decided {
        state.runs.cancel(replaced);
    }
    let cancel = state.runs.add(&tag);
    let lateness = Duration::from_millis((now - scheduled).max(0) as u64);
    let run = run::Run {
        tag,
        scheduled,
        service: row.service.clone(),
        request,
        token,
        jitter_ms: row.jitter_ms,
        lateness,
        cancel,
    };
    tokio::spawn(run::run(state.clone(), run));
    Ok(Start::Started(RunView {
        scheduled_at: crate::db::rfc3339(scheduled),
        scheduled_unix_ms: scheduled,
        started_at: crate::db::rfc3339(now),
        outcome: RunOutcome::Running,
    }))
}
