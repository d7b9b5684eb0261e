//! The broker's graceful shutdown: stop accepting, let the requests in flight finish (up to
//! the drain deadline), then tell every peer `ShuttingDown` and close.

use super::{Peer, Shard};
use crate::conn::Outbox;
use proto::{ErrorKind, Frame};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a shard waits for the last frames (`ShuttingDown` among them) to reach the
/// peers' sockets before it exits.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// The drain every shard follows: when it started (and so its deadline), and each shard's
/// requests in flight as that shard last saw them. Touched only while draining (per tick),
/// never on the request path.
#[derive(Debug)]
pub(crate) struct Drain {
    drain_for: Duration,
    deadline: OnceLock<Instant>,
    /// Requests in flight per shard; `usize::MAX` until that shard reports.
    open: Vec<AtomicUsize>,
    /// Shards that have closed their clients: workers are closed only after every shard
    /// did, so no request ends `WorkerLost` instead of `ShuttingDown`.
    clients_closed: AtomicUsize,
}

impl Drain {
    pub(crate) fn new(shards: usize, drain_for: Duration) -> Drain {
        Drain {
            drain_for,
            deadline: OnceLock::new(),
            open: (0..shards).map(|_| AtomicUsize::new(usize::MAX)).collect(),
            clients_closed: AtomicUsize::new(0),
        }
    }

    /// Starts the drain (a second call changes nothing).
    pub(crate) fn start(&self) {
        let _ = self.deadline.set(Instant::now() + self.drain_for);
    }

    pub(crate) fn started(&self) -> bool {
        self.deadline.get().is_some()
    }

    fn past_deadline(&self) -> bool {
        self.deadline.get().is_some_and(|d| Instant::now() >= *d)
    }

    /// Once every shard has refused new requests, the counts only go down: zero on every
    /// shard means nothing is in flight anywhere (a request on one shard may run on a worker
    /// of another, which therefore waits too).
    fn all_done(&self) -> bool {
        self.open.iter().all(|n| n.load(Ordering::Acquire) == 0)
    }
}

impl Shard {
    /// Drains this shard (the listener is closed already): refuses new requests, waits until
    /// no shard has a request in flight or the drain's deadline, then sends every
    /// connection `Error { ShuttingDown }` after what is queued for it, closes them and waits
    /// up to [`FLUSH_WAIT`] for the bytes to leave. A `stop` cuts it short.
    pub(crate) async fn drain_out(&self, drain: &Drain, stop: &AtomicBool) {
        self.draining.set(true);
        let (conns, open) = {
            let state = self.state.borrow();
            (state.conns.len(), state.requests.len())
        };
        info!(
            shard = self.idx,
            conns, open, "draining: new connections refused, new requests refused with ShuttingDown; waiting for the requests in flight"
        );
        loop {
            let open = self.state.borrow().requests.len();
            drain.open[self.idx].store(open, Ordering::Release);
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if drain.all_done() {
                break;
            }
            if drain.past_deadline() {
                if open > 0 {
                    warn!(
                        shard = self.idx,
                        open,
                        "drain deadline passed: the requests still open end with ShuttingDown"
                    );
                }
                break;
            }
            glommio::timer::sleep(crate::TICK).await;
        }
        let open = self.state.borrow().requests.len();
        let message = if open > 0 {
            format!(
                "the broker is shutting down; requests not finished within its drain ({}) are ended",
                humantime_secs(drain.drain_for)
            )
        } else {
            "the broker is shutting down".to_string()
        };
        let conns: Vec<(u64, bool, Rc<Outbox>)> = self
            .state
            .borrow()
            .conns
            .iter()
            .map(|(&id, c)| (id, matches!(c.peer, Peer::Client { .. }), c.out.clone()))
            .collect();
        info!(
            shard = self.idx,
            conns = conns.len(),
            open,
            "shutting down: closing every connection with ShuttingDown"
        );
        // Clients first, on every shard: a request still open ends with `ShuttingDown`,
        // not with its worker's connection closing (`WorkerLost`).
        for (conn_id, _, out) in conns.iter().filter(|(_, client, _)| *client) {
            self.close_with_shutdown(*conn_id, out, &message);
        }
        drain.clients_closed.fetch_add(1, Ordering::AcqRel);
        let until = Instant::now() + FLUSH_WAIT;
        while drain.clients_closed.load(Ordering::Acquire) < drain.open.len()
            && Instant::now() < until
            && !stop.load(Ordering::Relaxed)
        {
            glommio::timer::sleep(crate::TICK).await;
        }
        for (conn_id, _, out) in conns.iter().filter(|(_, client, _)| !*client) {
            self.close_with_shutdown(*conn_id, out, &message);
        }
        crate::metrics::CLOSED
            .with_label_values(&["shutting_down"])
            .inc_by(conns.len() as u64);
        self.cut_connections();
        let until = Instant::now() + FLUSH_WAIT;
        while Instant::now() < until && conns.iter().any(|(_, _, out)| out.backlog_bytes() > 0) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Shard {
    /// Queues `Error { ShuttingDown }` after what is queued for connection `conn_id` (the
    /// last replies of the requests that finished), closes its outbox and forgets it: the
    /// frames that forgetting it causes are dropped.
    fn close_with_shutdown(&self, conn_id: u64, out: &Outbox, message: &str) {
        let _ = out.push(&Frame::Error {
            id: None,
            kind: ErrorKind::ShuttingDown,
            message: message.to_string(),
        });
        out.close();
        self.close_conn(conn_id);
    }
}

/// `30s`, `1.5s`: a drain's length as the flag reads.
fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
