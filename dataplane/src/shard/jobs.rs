//! The job-history hooks of a request: a trace when it is routed, each relayed frame
//! (`RequestEntry::on_relay`), the record handed to the source when it finishes
//! ([`crate::jobs`]). Off (no trace, one branch
//! per relay) when the source does not record jobs; requests with an idempotency key (the fs
//! module's spooled log lines) are not traced: their record is the trigger's.

use super::State;
use crate::config::{Principal, ServiceConfig};
use crate::jobs::JobTrace;
use crate::registry::WorkerRef;
use proto::control::Visibility;
use proto::job::{JobHistory, JobReaders};
use proto::Request;
use std::time::Instant;

impl State {
    /// The trace of a request about to run, when jobs are recorded.
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
        // The service as the caller's team names it: `dc1` whether the request said `dc1`
        // or `main/dc1`, so that one filter finds its jobs; another team's as `team/name`.
        let name = match service.team == principal.team {
            true => std::borrow::Cow::Borrowed(service.name.as_str()),
            false => std::borrow::Cow::Owned(format!("{}/{}", service.team, service.name)),
        };
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
        trace.set_readers(match private {
            true => JobReaders::Sender,
            false if service.team == principal.team && service.history == JobHistory::Team => {
                JobReaders::Team
            }
            false => JobReaders::SenderAndAdmins,
        });
        trace.set_tag(request.tag.as_deref());
        Some(trace)
    }

    /// A traced request finished: its trace goes to the source, which must not wait (and
    /// makes the record of it later, off the shard).
    pub(super) fn trace_finish(&self, job: Option<Box<JobTrace>>) {
        if let Some(mut job) = job {
            job.end(Instant::now());
            self.env.source.job(job);
        }
    }
}
