//! One run of a schedule: a request through the broker as the schedule's owner (the
//! gateway's connection and request, with the run's tag for its job record), until its
//! summary, a refusal, or a cancel (`replace`); its outcome is stored and counted.

use super::ScheduleRow;
use crate::db::{now_ms, on_db};
use crate::error::ApiError;
use crate::routes::gateway;
use crate::state::AppState;
use api::gateway::GatewayRequest;
use api::schedules::RunOutcome;
use client::ClientEvent;
use proto::control::Claims;
use proto::{ErrorKind, Summary, TextEnum};
use rand::Rng;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a run's JWT, and a run without a timeout or deadline, may last.
const LONGEST_RUN_MS: i64 = 24 * 3600 * 1000;

/// A run about to be sent.
pub(super) struct Run {
    pub tag: String,
    pub scheduled: i64,
    pub service: String,
    pub request: GatewayRequest,
    pub token: String,
    pub jitter_ms: i64,
    pub lateness: Duration,
    pub cancel: oneshot::Receiver<()>,
}

#[derive(sqlx::FromRow)]
struct Owner {
    id: i64,
    secret_gen: i64,
    role: String,
    team: String,
}

/// A JWT for the schedule's owner with their rights now; `None` when they are no longer a
/// member of its team.
pub(super) async fn owner_token(
    state: &AppState,
    row: &ScheduleRow,
) -> Result<Option<String>, ApiError> {
    let owner: Option<Owner> = on_db!(&state.db, pool => {
        sqlx::query_as("SELECT u.id, u.secret_gen, m.role, t.name AS team FROM users u \
                        JOIN members m ON m.user_id = u.id JOIN teams t ON t.id = m.team_id \
                        WHERE m.team_id = $1 AND u.identity = $2")
            .bind(row.team_id).bind(&row.owner).fetch_optional(pool).await?
    });
    let Some(owner) = owner else { return Ok(None) };
    let role = crate::stored::Row::of("member", &owner.team, &row.owner).text(&owner.role)?;
    let now_s = (now_ms() / 1000) as u64;
    let claims = Claims {
        sub: row.owner.clone(),
        uid: owner.id,
        sgen: owner.secret_gen,
        team: owner.team,
        role,
        iat: now_s,
        exp: now_s + (LONGEST_RUN_MS / 1000) as u64,
    };
    state.jwt.sign(&claims).map(Some)
}

/// How long a run of `request` may take: its deadline or timeout, the longer; a day when
/// it has neither.
pub(super) fn longest_ms(request: &GatewayRequest) -> i64 {
    let ms = |t: &Option<api::Timeout>| t.as_ref().and_then(|t| t.ms().ok()).unwrap_or(0);
    match ms(&request.timeout).max(ms(&request.deadline)) {
        0 => LONGEST_RUN_MS,
        longest => longest as i64,
    }
}

/// Sends the run, waits for its end, and records how it went.
pub(super) async fn run(state: AppState, run: Run) {
    let tag = run.tag.clone();
    if run.jitter_ms > 0 {
        let jitter = rand::thread_rng().gen_range(0..=run.jitter_ms as u64);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    state
        .metrics
        .schedule_lateness
        .observe(run.lateness.as_secs_f64());
    let outcome = send(&state, run).await;
    state.runs.remove(&tag);
    state
        .metrics
        .schedule_runs
        .with_label_values(&[outcome.as_str()])
        .inc();
    let stored = on_db!(&state.db, pool => {
        sqlx::query("UPDATE schedule_runs SET outcome = $1 WHERE tag = $2")
            .bind(outcome.as_str()).bind(&tag).execute(pool).await.map(|_| ())
    });
    if let Err(e) = stored {
        tracing::warn!(%tag, error = %e, "cannot store a run's outcome");
    }
}

/// The request, until it ends or is cancelled.
async fn send(state: &AppState, run: Run) -> RunOutcome {
    let mut spec = match gateway::request_spec(run.service, run.request) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::warn!(tag = %run.tag, error = %e, "a schedule's request does not read");
            return RunOutcome::Refused;
        }
    };
    spec.wait = true;
    spec.tag = Some(run.tag.clone());
    let client = match gateway::connect(state, run.token).await {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(tag = %run.tag, error = %e, "a schedule's run cannot reach the broker");
            return RunOutcome::Refused;
        }
    };
    let Ok(mut handle) = client.request(spec).await else {
        return RunOutcome::Lost;
    };
    tracing::info!(tag = %run.tag, scheduled = run.scheduled, "schedule's run sent");
    let mut cancel = run.cancel;
    loop {
        let event = tokio::select! {
            event = handle.next() => event,
            _ = &mut cancel => {
                // Dropping the handle cancels the request at the broker.
                drop(handle);
                return RunOutcome::Cancelled;
            }
        };
        match event {
            Some(ClientEvent::Summary(summary)) => return outcome(&summary),
            None
            | Some(ClientEvent::Error {
                kind: ErrorKind::BrokerLost,
                ..
            }) => return RunOutcome::Lost,
            Some(ClientEvent::Error { kind, message }) => {
                tracing::warn!(tag = %run.tag, %kind, %message, "a schedule's run was refused");
                return RunOutcome::Refused;
            }
            Some(_) => {}
        }
    }
}

/// A run's outcome from its summary, as a job's status is made: the worst there is.
fn outcome(s: &Summary) -> RunOutcome {
    if s.failed > 0 || s.stopped {
        RunOutcome::Failed
    } else if s.timed_out + s.no_response + s.offline > 0 {
        RunOutcome::TimedOut
    } else if s.lost > 0 {
        RunOutcome::Lost
    } else if s.skipped > 0 && !s.quorum_met {
        RunOutcome::Cancelled
    } else {
        RunOutcome::Ok
    }
}
