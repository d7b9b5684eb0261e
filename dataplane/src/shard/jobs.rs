//! The job-history hooks of a request: a trace when it is routed, each relayed frame
//! (`RequestEntry::on_relay`), the record handed to the source when it finishes
//! ([`crate::jobs`]). Off (no trace, one branch
//! per relay) when the source does not record jobs; requests with an idempotency key (the fs
//! module's spooled log lines) are not traced: their trigger is counted ([`crate::triggers`]).

use super::requests::{Keyed, RequestEntry};
use super::State;
use crate::config::{Principal, ServiceConfig};
use crate::jobs::JobTrace;
use crate::metrics::JOBS_LOST;
use crate::registry::WorkerRef;
use crate::triggers::{unix_ms_now, RunHead, TallyKey, TriggerRun};
use proto::control::Visibility;
use proto::job::{JobHistory, JobReaders};
use proto::Request;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

impl State {
    /// The trace of a request about to run, when jobs are recorded (a keyed request's is
    /// its trigger's: [`State::trigger_run`]).
    pub(super) fn trace_request(
        &self,
        principal: &Principal,
        request: &Request,
        service: &ServiceConfig,
        targets: &[WorkerRef],
    ) -> Option<Box<JobTrace>> {
        if request.key.is_some() || !self.env.source.records_jobs() {
            return None;
        }
        let (name, readers) = self.job_naming(principal, service, targets);
        let mut trace = Box::new(JobTrace::new(
            &principal.team,
            &principal.identity,
            &name,
            service.algorithm,
            &request.plugin,
            &request.command,
            &request.args,
            Instant::now(),
        ));
        trace.set_readers(readers);
        if let Some(trigger) = &request.trigger {
            trace.set_trigger(trigger);
        }
        trace.set_tag(request.tag.as_deref());
        Some(trace)
    }

    /// The trigger run of a keyed request to `trigger`, when jobs are recorded.
    pub(super) fn trigger_run(
        &self,
        principal: &Principal,
        trigger: Option<String>,
        service: &ServiceConfig,
        targets: &[WorkerRef],
    ) -> Option<TriggerRun> {
        let trigger = trigger.filter(|_| self.env.source.records_jobs())?;
        let (_, readers) = self.job_naming(principal, service, targets);
        Some(TriggerRun::new(trigger, readers))
    }

    /// The service as the caller's team names it in the job history, and who reads the
    /// caller's job through it.
    fn job_naming<'s>(
        &self,
        principal: &Principal,
        service: &'s ServiceConfig,
        targets: &[WorkerRef],
    ) -> (Cow<'s, str>, JobReaders) {
        // Through a `local` service, or to a `local` worker by its name or what it announces
        // (a service with no workers bound): the record is its caller's alone, as the
        // service was (the team's other members do not see it). A configured service's
        // visibility is its own, whatever its workers' are. Otherwise the service's
        // `history` says, for its own team's requests: every member, or (the default, and
        // always for another team's request) the sender and the team's admins.
        let private = match service.visibility {
            Visibility::Local => true,
            _ if service.workers.is_empty() => {
                let registry = &self.routing.registry;
                targets
                    .iter()
                    .any(|t| registry.is_local_worker(&service.team, &t.identity))
            }
            _ => false,
        };
        let name = recorded_name(service, &principal.team);
        let readers = match private {
            true => JobReaders::Sender,
            false if service.team == principal.team && service.history == JobHistory::Team => {
                JobReaders::Team
            }
            false => JobReaders::SenderAndAdmins,
        };
        (name, readers)
    }

    /// A traced request finished: its trace goes to the source, which must not wait (and
    /// makes the record of it later, off the shard).
    pub(super) fn trace_finish(&self, job: Option<Box<JobTrace>>) {
        if let Some(mut job) = job {
            job.end(Instant::now());
            self.env.source.job(job);
        }
    }

    /// A keyed request to a trigger finished: counted, and recorded in full unless `ok`.
    pub(super) fn trigger_finish(
        &mut self,
        keyed: &Keyed,
        service: &ServiceConfig,
        run: TriggerRun,
    ) {
        let (path, readers, status, trace) = run.finish();
        let key = TallyKey {
            trigger: &path,
            team: &keyed.team,
            identity: &keyed.identity,
            service_team: &service.team,
            service: &service.name,
            readers,
        };
        self.triggers.count(key, status);
        self.trace_finish(trace);
    }

    /// Reports the triggers' counts: every second (`due`), and when the minute turns.
    pub(super) fn report_triggers(&mut self, due: bool) {
        let minutes = self.triggers.reports(unix_ms_now(), due);
        if due {
            let lost = self.triggers.take_uncounted();
            if lost > 0 {
                JOBS_LOST.with_label_values(&["tally_full"]).inc_by(lost);
            }
        }
        if !minutes.is_empty() {
            self.env.source.trigger_minutes(self.env.idx, minutes);
        }
    }
}

impl RequestEntry {
    /// The request relayed `event` from `worker`: its job trace, its trigger run and its
    /// key's recording follow.
    pub(super) fn on_relay(&mut self, worker: &Arc<str>, event: &proto::Event) {
        if let Some(job) = &mut self.job {
            job.on_relay(worker, event);
        }
        let Some(keyed) = self.keyed.as_deref_mut() else {
            return;
        };
        if let Some(run) = &mut keyed.trigger {
            if run.wants_trace(event) {
                run.start_trace(RunHead {
                    team: &keyed.team,
                    identity: &keyed.identity,
                    service: &recorded_name(&self.service, &keyed.team),
                    algorithm: self.service.algorithm,
                    dispatch: &self.template,
                    started: self.started,
                    recording: &keyed.recording,
                });
            }
            run.on_relay(worker, event);
        }
        keyed.recording.on_relay(worker, event);
    }
}

/// The service as the caller's team (`team`) names it in the job history: `dc1` whether the
/// request said `dc1` or `main/dc1`, so that one filter finds its jobs; another team's as
/// `team/name`.
fn recorded_name<'s>(service: &'s ServiceConfig, team: &str) -> Cow<'s, str> {
    match service.team == team {
        true => Cow::Borrowed(service.name.as_str()),
        false => Cow::Owned(format!("{}/{}", service.team, service.name)),
    }
}
