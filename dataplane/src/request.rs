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

/// Per-request settings taken from the service.
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
}

impl From<&ServiceConfig> for Policy {
    fn from(s: &ServiceConfig) -> Policy {
        Policy {
            algorithm: s.algorithm,
            batch: s.batch,
            stop_on_failure: s.stop_on_failure,
            retry: s.retry,
        }
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
    summary: Summary,
    failures: u32,
    finished: bool,
}

impl RequestRun {
    /// A request over `targets` (non-empty). For roundrobin, `targets` is already rotated so
    /// that the first is the chosen worker and the rest are fail-over candidates.
    pub fn new(policy: Policy, targets: Vec<WorkerRef>) -> RequestRun {
        RequestRun {
            policy,
            targets,
            next_idx: 0,
            running: Vec::new(),
            summary: Summary::default(),
            failures: 0,
            finished: false,
        }
    }

    /// How many workers the request will run on (for `Routed`/`Queued`).
    pub fn n_workers(&self) -> u32 {
        match self.policy.algorithm {
            Algorithm::Roundrobin => 1,
            Algorithm::Mirror | Algorithm::Serial => self.targets.len() as u32,
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

    /// Starts the first dispatch(es).
    pub fn start(&mut self, next_id: &mut impl FnMut() -> u64, out: &mut Vec<Action>) {
        self.advance(next_id, out);
    }

    /// A worker reported `event` for `dispatch_id`.
    pub fn on_event(
        &mut self,
        dispatch_id: u64,
        event: WorkerEvent,
        next_id: &mut impl FnMut() -> u64,
        out: &mut Vec<Action>,
    ) {
        if self.finished {
            return;
        }
        let Some(pos) = self
            .running
            .iter()
            .position(|r| r.dispatch_id == dispatch_id)
        else {
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

    /// The request's timeout fired: cancel what runs, report it, finish.
    pub fn on_timeout(&mut self, out: &mut Vec<Action>) {
        self.stop_all(ErrorKind::Timeout, "request timed out", out);
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
            self.count_failure(kind);
            out.push(Action::Relay {
                worker: target.identity,
                event: Event::Failed {
                    kind,
                    message: message.to_string(),
                },
            });
        }
        self.finish(out);
    }

    fn count_failure(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Timeout => self.summary.timed_out += 1,
            ErrorKind::WorkerLost => self.summary.lost += 1,
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
            Algorithm::Mirror => {
                let batch = self.policy.batch.unwrap_or(usize::MAX);
                while self.running.len() < batch && self.next_idx < self.targets.len() {
                    self.dispatch_next(next_id, out);
                }
                if self.running.is_empty() {
                    self.finish(out);
                }
            }
            Algorithm::Serial => {
                if !self.running.is_empty() {
                    return;
                }
                let stop = self.policy.stop_on_failure && self.failures > 0;
                if !stop && self.next_idx < self.targets.len() {
                    self.dispatch_next(next_id, out);
                } else {
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
