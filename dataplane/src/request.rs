//! One request's life on the shard that owns its client: the three algorithms as a pure
//! state machine.
//!
//! [`RequestRun`] takes events (a worker accepted, wrote a line, exited, was lost; the timeout
//! fired; the client cancelled or left) and answers with [`Action`]s for the shard to carry
//! out. It does no I/O, so every algorithm is tested here without sockets.

use crate::config::ServiceConfig;
use crate::registry::{WorkerAt, WorkerRef};
use proto::{Algorithm, ErrorKind, Event, Stream, Summary};
use std::sync::Arc;

/// What a worker reported about one dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// Plugin started.
    Accepted,
    /// A line of output.
    Output {
        /// Sequence number.
        seq: u64,
        /// stdout or stderr.
        stream: Stream,
        /// Bytes.
        data: Vec<u8>,
    },
    /// Plugin exited.
    Done {
        /// Exit status.
        exit_code: i32,
    },
    /// The run failed (plugin missing, timeout on the worker, cancelled).
    Failed {
        /// Why.
        kind: ErrorKind,
        /// Detail.
        message: String,
    },
    /// The worker's connection closed while the dispatch was open.
    Lost,
}

impl From<proto::Event> for WorkerEvent {
    fn from(event: proto::Event) -> WorkerEvent {
        match event {
            proto::Event::Accepted => WorkerEvent::Accepted,
            proto::Event::Output { seq, stream, data } => WorkerEvent::Output { seq, stream, data },
            proto::Event::Done { exit_code } => WorkerEvent::Done { exit_code },
            proto::Event::Failed { kind, message } => WorkerEvent::Failed { kind, message },
        }
    }
}

/// What the shard must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a `Dispatch` with this id to this worker.
    Dispatch {
        /// Broker-unique dispatch id.
        dispatch_id: u64,
        /// The worker.
        worker: WorkerRef,
    },
    /// Tell the worker to stop this dispatch.
    Cancel {
        /// The dispatch.
        dispatch_id: u64,
        /// Its worker.
        at: WorkerAt,
    },
    /// Forget the dispatch id (no more events are wanted for it).
    Forget {
        /// The dispatch.
        dispatch_id: u64,
    },
    /// Send this to the client as a `Reply`.
    Relay {
        /// Worker identity.
        worker: Arc<str>,
        /// The event.
        event: Event,
    },
    /// The request is over: send the summary (when the client waits) and drop the request.
    Finish {
        /// Counts.
        summary: Summary,
    },
}

#[derive(Debug)]
struct Running {
    dispatch_id: u64,
    target_idx: usize,
    accepted: bool,
}

/// Per-request settings taken from the service (and the request's [`proto::Fleet`]).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// mirror: workers at once.
    pub batch: Option<usize>,
    /// serial: stop at first failure.
    pub stop_on_failure: bool,
    /// roundrobin: retry after Accepted on loss.
    pub retry: bool,
    /// mirror, serial: start no worker once more than this many failed.
    pub max_failures: Option<usize>,
    /// mirror, serial: end once this many exited 0 (0: no quorum).
    pub quorum: usize,
    /// With `quorum`: cancel the workers still running instead of leaving them to run on.
    pub quorum_cancel: bool,
    /// The request's timeout: its one text ([`Policy::timeout_message`]), whether the worker
    /// or the broker noticed it. (Kept as a duration and worded only when a timeout
    /// happens: formatting it for every request cost more than the rest of `Policy`.)
    pub timeout: Option<std::time::Duration>,
    /// The request's deadline (`Fleet::deadline_ms`), if it has one.
    pub deadline: Option<std::time::Duration>,
}

impl From<&ServiceConfig> for Policy {
    fn from(s: &ServiceConfig) -> Policy {
        Policy {
            algorithm: s.algorithm,
            batch: s.batch,
            stop_on_failure: s.stop_on_failure,
            retry: s.retry,
            max_failures: None,
            quorum: 0,
            quorum_cancel: false,
            timeout: None,
            deadline: None,
        }
    }
}

impl Policy {
    /// The one text of a timeout, whichever side noticed it.
    pub fn timeout_message(&self) -> String {
        match self.timeout {
            Some(t) => format!("timed out after {}", humantime::format_duration(t)),
            None => "request timed out".to_string(),
        }
    }

    /// The text of the request's end at its deadline (or at its timeout, without one).
    fn deadline_message(&self) -> String {
        match self.deadline {
            Some(d) => format!(
                "timed out at the request's deadline ({})",
                humantime::format_duration(d)
            ),
            None => self.timeout_message(),
        }
    }

    /// Applies a request's fleet options for a request over `total` workers (online and
    /// offline).
    pub fn with_fleet(mut self, fleet: &proto::Fleet, total: usize) -> Policy {
        if let Some(batch) = fleet.batch {
            self.batch = Some(batch.of(total, true).max(1));
        }
        self.max_failures = fleet.max_failures.map(|m| m.of(total, false));
        self.quorum = fleet.quorum as usize;
        self.quorum_cancel = fleet.quorum_cancel;
        self
    }
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

    /// True once `Finish` was emitted.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Dispatch ids still open.
    pub fn open_dispatches(&self) -> impl Iterator<Item = u64> + '_ {
        self.running.iter().map(|r| r.dispatch_id)
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
            out.push(Action::Relay {
                event: Event::Failed {
                    kind: ErrorKind::Offline,
                    message: format!("worker {worker} is bound to the service but offline"),
                },
                worker,
            });
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
        match event {
            WorkerEvent::Accepted => {
                self.running[pos].accepted = true;
                out.push(Action::Relay {
                    worker,
                    event: Event::Accepted,
                });
            }
            WorkerEvent::Output { seq, stream, data } => out.push(Action::Relay {
                worker,
                event: Event::Output { seq, stream, data },
            }),
            WorkerEvent::Done { exit_code } => {
                self.running.swap_remove(pos);
                out.push(Action::Forget { dispatch_id });
                if exit_code == 0 {
                    self.summary.ok += 1;
                } else {
                    self.summary.failed += 1;
                    self.failures += 1;
                }
                self.summary.workers += 1;
                out.push(Action::Relay {
                    worker,
                    event: Event::Done { exit_code },
                });
                self.advance(next_id, out);
            }
            WorkerEvent::Failed { kind, message } => {
                // One text for a timeout, whichever side noticed it.
                let message = if kind == ErrorKind::Timeout {
                    self.policy.timeout_message()
                } else {
                    message
                };
                self.running.swap_remove(pos);
                out.push(Action::Forget { dispatch_id });
                self.count_failure(kind);
                out.push(Action::Relay {
                    worker,
                    event: Event::Failed { kind, message },
                });
                self.advance(next_id, out);
            }
            WorkerEvent::Lost => {
                let run = self.running.swap_remove(pos);
                out.push(Action::Forget { dispatch_id });
                let may_retry = !run.accepted || self.policy.retry;
                if self.policy.algorithm == Algorithm::Roundrobin
                    && may_retry
                    && self.next_idx < self.targets.len()
                {
                    // Fail-over: the client never hears about the lost worker.
                    self.advance(next_id, out);
                    return;
                }
                self.count_failure(ErrorKind::WorkerLost);
                out.push(Action::Relay {
                    worker: worker.clone(),
                    event: Event::Failed {
                        kind: ErrorKind::WorkerLost,
                        message: format!("worker {worker} went away during the request"),
                    },
                });
                self.advance(next_id, out);
            }
        }
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
        let target = self.targets[run.target_idx].clone();
        out.push(Action::Cancel {
            dispatch_id,
            at: target.at,
        });
        out.push(Action::Forget { dispatch_id });
        let (kind, message) = if run.accepted {
            (ErrorKind::Timeout, self.policy.timeout_message())
        } else {
            (
                ErrorKind::NoResponse,
                format!(
                    "worker {} did not answer within its timeout{}",
                    target.identity,
                    self.policy
                        .timeout
                        .map(|t| format!(" ({})", humantime::format_duration(t)))
                        .unwrap_or_default()
                ),
            )
        };
        self.count_failure(kind);
        out.push(Action::Relay {
            worker: target.identity,
            event: Event::Failed { kind, message },
        });
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
            let target = self.targets[run.target_idx].clone();
            out.push(Action::Cancel {
                dispatch_id: run.dispatch_id,
                at: target.at,
            });
            out.push(Action::Forget {
                dispatch_id: run.dispatch_id,
            });
            let (kind, message) = if kind == ErrorKind::Timeout && !run.accepted && self.fans_out()
            {
                (
                    ErrorKind::NoResponse,
                    format!(
                        "worker {} did not answer before the deadline",
                        target.identity
                    ),
                )
            } else {
                (kind, message.to_string())
            };
            self.count_failure(kind);
            out.push(Action::Relay {
                worker: target.identity,
                event: Event::Failed { kind, message },
            });
        }
        let why = match kind {
            ErrorKind::Timeout => "not started: the request ran out of time",
            _ => "not started: the request was cancelled",
        };
        self.skip_rest(why, out);
        self.finish(out);
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
            out.push(Action::Relay {
                worker,
                event: Event::Failed {
                    kind: ErrorKind::Skipped,
                    message: why.to_string(),
                },
            });
        }
    }

    /// The quorum is reached: workers not started are skipped, running ones cancelled
    /// (`quorum_cancel`) or left to run on (`Detached`); the request ends.
    fn end_at_quorum(&mut self, out: &mut Vec<Action>) {
        self.summary.quorum_met = true;
        for run in std::mem::take(&mut self.running) {
            let target = self.targets[run.target_idx].clone();
            if self.policy.quorum_cancel {
                out.push(Action::Cancel {
                    dispatch_id: run.dispatch_id,
                    at: target.at,
                });
            }
            out.push(Action::Forget {
                dispatch_id: run.dispatch_id,
            });
            let (kind, message) = if self.policy.quorum_cancel {
                self.count_failure(ErrorKind::Cancelled);
                (ErrorKind::Cancelled, "cancelled: the quorum was reached")
            } else {
                self.summary.detached += 1;
                self.summary.workers += 1;
                (
                    ErrorKind::Detached,
                    "still running when the quorum was reached; left to run on",
                )
            };
            out.push(Action::Relay {
                worker: target.identity,
                event: Event::Failed {
                    kind,
                    message: message.to_string(),
                },
            });
        }
        self.skip_rest("not started: the quorum was reached", out);
        self.finish(out);
    }

    fn count_failure(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Timeout => self.summary.timed_out += 1,
            ErrorKind::WorkerLost => self.summary.lost += 1,
            ErrorKind::NoResponse => self.summary.no_response += 1,
            _ => self.summary.failed += 1,
        }
        self.summary.workers += 1;
        self.failures += 1;
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
        match self.policy.algorithm {
            Algorithm::Roundrobin => {
                if self.running.is_empty() {
                    if self.summary.workers == 0 && self.next_idx < self.targets.len() {
                        self.dispatch_next(next_id, out);
                    } else if self.summary.workers == 0 {
                        // Every candidate was lost before accepting.
                        self.count_failure(ErrorKind::WorkerLost);
                        let worker = self.targets[self.targets.len() - 1].identity.clone();
                        out.push(Action::Relay {
                            worker,
                            event: Event::Failed {
                                kind: ErrorKind::WorkerLost,
                                message: "every worker of the service went away".into(),
                            },
                        });
                        self.finish(out);
                    } else {
                        self.finish(out);
                    }
                }
            }
            Algorithm::Mirror | Algorithm::Serial => {
                if self.policy.quorum > 0 && self.summary.ok as usize >= self.policy.quorum {
                    return self.end_at_quorum(out);
                }
                let serial = self.policy.algorithm == Algorithm::Serial;
                if self
                    .policy
                    .max_failures
                    .is_some_and(|max| self.failures as usize > max)
                {
                    // Stopped only when some worker is left not started.
                    if !self.summary.stopped && self.next_idx < self.targets.len() {
                        self.summary.stopped = true;
                        let why = format!(
                            "not started: {} workers failed, more than --max-failures {}",
                            self.failures,
                            self.policy.max_failures.unwrap_or_default()
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
        }
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

#[cfg(test)]
mod tests;
