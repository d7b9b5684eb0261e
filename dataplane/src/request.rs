//! One request's life on the shard that owns its client: the three algorithms as a pure
//! state machine.
//!
//! [`RequestRun`] takes events (a worker accepted, wrote a line, exited, was lost; the timeout
//! fired; the client cancelled or left) and answers with [`Action`]s for the shard to carry
//! out. It does no I/O, so every algorithm is tested here without sockets.

use crate::config::ServiceConfig;
use crate::registry::{WorkerAt, WorkerRef};
use proto::{Algorithm, Event, Summary};
use std::sync::Arc;

/// What a worker reported about one dispatch, or that it went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// An event of the run: the plugin started, wrote a line, exited, or the run failed
    /// (plugin missing, timeout on the worker, cancelled).
    Ran(Event),
    /// The worker's connection closed while the dispatch was open.
    Lost,
}

impl From<Event> for WorkerEvent {
    fn from(event: Event) -> WorkerEvent {
        WorkerEvent::Ran(event)
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

pub use run::RequestRun;

mod run;
#[cfg(test)]
mod tests;
