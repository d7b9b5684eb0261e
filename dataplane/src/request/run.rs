//! [`RequestRun`]: the state of one request, and how each event moves it.

use super::{Action, Policy, WorkerEvent};
use crate::registry::{WorkerAt, WorkerRef};
use proto::{Algorithm, ErrorKind, Event, Summary};
use std::sync::Arc;

#[derive(Debug)]
struct Running {
    dispatch_id: u64,
    target_idx: usize,
    accepted: bool,
}

/// The state of one request.
#[derive(Debug)]
pub struct RequestRun {
    policy: Policy,
    /// roundrobin: candidates in fail-over order; mirror/serial: every worker, in order.
    targets: Vec<WorkerRef>,
    next_idx: usize,
    running: Vec<Running>,
    /// mirror/serial: workers bound to the service but offline, reported at start.
    offline: Vec<Arc<str>>,
    summary: Summary,
    failures: u32,
    finished: bool,
}

impl RequestRun {
    /// A request over `targets` (non-empty for roundrobin; a mirror or serial request may
    /// have only offline workers). For roundrobin, `targets` is already rotated so that the
    /// first is the chosen worker and the rest are fail-over candidates.
    pub fn new(policy: Policy, targets: Vec<WorkerRef>) -> RequestRun {
        RequestRun {
            policy,
            targets,
            next_idx: 0,
            running: Vec::new(),
            offline: Vec::new(),
            summary: Summary::default(),
            failures: 0,
            finished: false,
        }
    }

    /// Workers bound to a mirror or serial service but offline: each is reported
    /// `Failed { Offline }` when the request starts (ignored for roundrobin).
    pub fn with_offline(mut self, offline: Vec<Arc<str>>) -> RequestRun {
        if self.policy.algorithm != Algorithm::Roundrobin {
            self.offline = offline;
        }
        self
    }

    fn fans_out(&self) -> bool {
        self.policy.algorithm != Algorithm::Roundrobin
    }

    /// How many workers the request will run on (for `Routed`/`Queued`).
    pub fn n_workers(&self) -> u32 {
        match self.policy.algorithm {
            Algorithm::Roundrobin => 1,
            Algorithm::Mirror | Algorithm::Serial => {
                (self.targets.len() + self.offline.len()) as u32
            }
        }
    }

    /// True when its workers start at different times (a mirror batch smaller than the
    /// fleet, or serial over more than one worker): each worker's timeout then runs from its
    /// own start ([`RequestRun::on_dispatch_timeout`]) instead of from the request's.
    pub fn staged(&self) -> bool {
        match self.policy.algorithm {
            Algorithm::Roundrobin => false,
            Algorithm::Serial => self.targets.len() > 1,
            Algorithm::Mirror => self.policy.batch.is_some_and(|b| b < self.targets.len()),
        }
    }

    /// Dispatches still open, with the worker each runs on.
    pub fn open_dispatches_at(&self) -> impl Iterator<Item = (u64, WorkerAt)> + '_ {
        self.running
            .iter()
            .map(|r| (r.dispatch_id, self.targets[r.target_idx].at))
    }

    /// Starts the first dispatch(es).
    pub fn start(&mut self, next_id: &mut impl FnMut() -> u64, out: &mut Vec<Action>) {
        for worker in std::mem::take(&mut self.offline) {
            self.summary.offline += 1;
            self.summary.workers += 1;
            let message = format!("worker {worker} is bound to the service but offline");
            out.push(failed(worker, ErrorKind::Offline, message));
        }
        self.advance(next_id, out);
    }

    /// Where `dispatch_id` is in `running`, while the request runs.
    fn running_at(&self, dispatch_id: u64) -> Option<usize> {
        if self.finished {
            return None;
        }
        self.running
            .iter()
            .position(|r| r.dispatch_id == dispatch_id)
    }

    /// A worker reported `event` for `dispatch_id`.
    pub fn on_event(
        &mut self,
        dispatch_id: u64,
        event: WorkerEvent,
        next_id: &mut impl FnMut() -> u64,
        out: &mut Vec<Action>,
    ) {
        let Some(pos) = self.running_at(dispatch_id) else {
            return;
        };
        let worker = self.targets[self.running[pos].target_idx].identity.clone();
        let event = match event {
            WorkerEvent::Ran(Event::Accepted) => {
                self.running[pos].accepted = true;
                Event::Accepted
            }
            WorkerEvent::Ran(output @ Event::Output { .. }) => output,
            ended => {
                let run = self.running.swap_remove(pos);
                out.push(Action::Forget { dispatch_id });
                return self.on_end(run, worker, ended, next_id, out);
            }
        };
        out.push(Action::Relay { worker, event });
    }

    /// A running dispatch ended with `event` (`Done`, `Failed` or `Lost`): counted and
    /// reported (a roundrobin worker lost when it may fail over is not), then the run goes
    /// on.
    fn on_end(
        &mut self,
        run: Running,
        worker: Arc<str>,
        event: WorkerEvent,
        next_id: &mut impl FnMut() -> u64,
        out: &mut Vec<Action>,
    ) {
        match event {
            WorkerEvent::Ran(Event::Done { exit_code }) => {
                if exit_code == 0 {
                    self.summary.ok += 1;
                } else {
                    self.summary.failed += 1;
                    self.failures += 1;
                }
                self.summary.workers += 1;
                let event = Event::Done { exit_code };
                out.push(Action::Relay { worker, event });
            }
            WorkerEvent::Ran(Event::Failed { kind, message }) => {
                // One text for a timeout, whichever side noticed it.
                let message = match kind {
                    ErrorKind::Timeout => self.policy.timeout_message(),
                    _ => message,
                };
                self.fail(worker, kind, message, out);
            }
            // `Lost` (`Accepted` and `Output` do not end a run).
            _ => {
                let may_retry = !run.accepted || self.policy.retry;
                let fails_over = self.policy.algorithm == Algorithm::Roundrobin
                    && may_retry
                    && self.next_idx < self.targets.len();
                if !fails_over {
                    let message = format!("worker {worker} went away during the request");
                    self.fail(worker, ErrorKind::WorkerLost, message, out);
                } else if run.accepted {
                    // The client saw this worker start: it hears that the request runs again
                    // elsewhere (not a failure, not counted). Lost before `Accepted`, the
                    // worker is never heard of.
                    let next = &self.targets[self.next_idx].identity;
                    let message = format!(
                        "worker {worker} went away after it accepted the request; run again on {next}"
                    );
                    out.push(failed(worker, ErrorKind::Retried, message));
                }
            }
        }
        self.advance(next_id, out);
    }

    /// The request's timeout (or deadline) fired: cancel what runs, report it (a worker
    /// that never accepted as `NoResponse`), report the workers not started, finish.
    pub fn on_timeout(&mut self, out: &mut Vec<Action>) {
        let message = self.policy.deadline_message();
        self.stop_all(ErrorKind::Timeout, &message, out);
    }

    /// A staged run's worker reached its timeout, counted from its own dispatch: it is
    /// cancelled and reported (`Timeout` with the request's one timeout text, or
    /// `NoResponse` when it never accepted), and the run goes on with the next worker.
    pub fn on_dispatch_timeout(
        &mut self,
        dispatch_id: u64,
        next_id: &mut impl FnMut() -> u64,
        out: &mut Vec<Action>,
    ) {
        let Some(pos) = self.running_at(dispatch_id) else {
            return;
        };
        let run = self.running.swap_remove(pos);
        let worker = self.take_off(&run, true, out);
        let (kind, message) = if run.accepted {
            (ErrorKind::Timeout, self.policy.timeout_message())
        } else {
            let within = match self.policy.timeout {
                Some(t) => format!(" ({})", humantime::format_duration(t)),
                None => String::new(),
            };
            let message = format!("worker {worker} did not answer within its timeout{within}");
            (ErrorKind::NoResponse, message)
        };
        self.fail(worker, kind, message, out);
        self.advance(next_id, out);
    }

    /// The client sent `Cancel`.
    pub fn on_cancel(&mut self, out: &mut Vec<Action>) {
        self.stop_all(ErrorKind::Cancelled, "cancelled by the client", out);
    }

    fn stop_all(&mut self, kind: ErrorKind, message: &str, out: &mut Vec<Action>) {
        if self.finished {
            return;
        }
        for run in std::mem::take(&mut self.running) {
            let worker = self.take_off(&run, true, out);
            if kind == ErrorKind::Timeout && !run.accepted && self.fans_out() {
                let message = format!("worker {worker} did not answer before the deadline");
                self.fail(worker, ErrorKind::NoResponse, message, out);
            } else {
                self.fail(worker, kind, message.to_string(), out);
            }
        }
        let why = match kind {
            ErrorKind::Timeout => "not started: the request ran out of time",
            _ => "not started: the request was cancelled",
        };
        self.skip_rest(why, out);
        self.finish(out);
    }

    /// Takes a running dispatch off: told to stop when `cancel`, and forgotten. Its worker.
    fn take_off(&self, run: &Running, cancel: bool, out: &mut Vec<Action>) -> Arc<str> {
        let (dispatch_id, target) = (run.dispatch_id, &self.targets[run.target_idx]);
        if cancel {
            out.push(Action::Cancel {
                dispatch_id,
                at: target.at,
            });
        }
        out.push(Action::Forget { dispatch_id });
        target.identity.clone()
    }

    /// Reports every worker not started yet as `Skipped` (mirror, serial).
    fn skip_rest(&mut self, why: &str, out: &mut Vec<Action>) {
        if !self.fans_out() {
            return;
        }
        while self.next_idx < self.targets.len() {
            let worker = self.targets[self.next_idx].identity.clone();
            self.next_idx += 1;
            self.summary.skipped += 1;
            self.summary.workers += 1;
            out.push(failed(worker, ErrorKind::Skipped, why.to_string()));
        }
    }

    /// The quorum is reached: workers not started are skipped, running ones cancelled
    /// (`quorum_cancel`) or left to run on (`Detached`); the request ends.
    fn end_at_quorum(&mut self, out: &mut Vec<Action>) {
        self.summary.quorum_met = true;
        let cancel = self.policy.quorum_cancel;
        for run in std::mem::take(&mut self.running) {
            let worker = self.take_off(&run, cancel, out);
            if cancel {
                let message = "cancelled: the quorum was reached".to_string();
                self.fail(worker, ErrorKind::Cancelled, message, out);
            } else {
                self.summary.detached += 1;
                self.summary.workers += 1;
                let message = "still running when the quorum was reached; left to run on";
                out.push(failed(worker, ErrorKind::Detached, message.to_string()));
            }
        }
        self.skip_rest("not started: the quorum was reached", out);
        self.finish(out);
    }

    /// A worker failed with `kind`: counted, and reported to the client.
    fn fail(&mut self, worker: Arc<str>, kind: ErrorKind, message: String, out: &mut Vec<Action>) {
        match kind {
            ErrorKind::Timeout => self.summary.timed_out += 1,
            ErrorKind::WorkerLost => self.summary.lost += 1,
            ErrorKind::NoResponse => self.summary.no_response += 1,
            _ => self.summary.failed += 1,
        }
        self.summary.workers += 1;
        self.failures += 1;
        out.push(failed(worker, kind, message));
    }

    fn dispatch_next(&mut self, next_id: &mut impl FnMut() -> u64, out: &mut Vec<Action>) {
        let target_idx = self.next_idx;
        self.next_idx += 1;
        let dispatch_id = next_id();
        self.running.push(Running {
            dispatch_id,
            target_idx,
            accepted: false,
        });
        out.push(Action::Dispatch {
            dispatch_id,
            worker: self.targets[target_idx].clone(),
        });
    }

    fn advance(&mut self, next_id: &mut impl FnMut() -> u64, out: &mut Vec<Action>) {
        if self.policy.algorithm == Algorithm::Roundrobin {
            return self.advance_roundrobin(next_id, out);
        }
        if self.policy.quorum > 0 && self.summary.ok as usize >= self.policy.quorum {
            return self.end_at_quorum(out);
        }
        let serial = self.policy.algorithm == Algorithm::Serial;
        let max_failures = self.policy.max_failures;
        if let Some(max) = max_failures.filter(|&max| self.failures as usize > max) {
            // Stopped only when some worker is left not started.
            if !self.summary.stopped && self.next_idx < self.targets.len() {
                self.summary.stopped = true;
                let why = format!(
                    "not started: {} workers failed, more than --max-failures {max}",
                    self.failures,
                );
                self.skip_rest(&why, out);
            }
        } else if serial && self.policy.stop_on_failure && self.failures > 0 {
            self.skip_rest("not started: the serial run stops at a failure", out);
        }
        let batch = match serial {
            true => 1,
            false => self.policy.batch.unwrap_or(usize::MAX),
        };
        while self.running.len() < batch && self.next_idx < self.targets.len() {
            self.dispatch_next(next_id, out);
        }
        if self.running.is_empty() {
            self.finish(out);
        }
    }

    /// Roundrobin: one worker at a time, the next candidate only while none has answered.
    fn advance_roundrobin(&mut self, next_id: &mut impl FnMut() -> u64, out: &mut Vec<Action>) {
        if !self.running.is_empty() {
            return;
        }
        if self.summary.workers == 0 && self.next_idx < self.targets.len() {
            return self.dispatch_next(next_id, out);
        }
        if self.summary.workers == 0 {
            // Every candidate was lost before accepting.
            let worker = self.targets[self.targets.len() - 1].identity.clone();
            let message = "every worker of the service went away".to_string();
            self.fail(worker, ErrorKind::WorkerLost, message, out);
        }
        self.finish(out);
    }

    fn finish(&mut self, out: &mut Vec<Action>) {
        if !self.finished {
            self.finished = true;
            out.push(Action::Finish {
                summary: self.summary,
            });
        }
    }
}

/// The relay of a worker's failure.
fn failed(worker: Arc<str>, kind: ErrorKind, message: String) -> Action {
    let event = Event::Failed { kind, message };
    Action::Relay { worker, event }
}
