//! The broker's graceful shutdown on one shard: its listener closed (by its executor), it
//! lets the requests in flight finish (up to the drain deadline), then tells every peer
//! `ShuttingDown` and closes.

use super::conns::Peer;
use super::{Shard, State};
use crate::conn::Outbox;
use crate::shutdown::Shutdown;
use proto::{ErrorKind, Frame};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a shard waits for the last frames (`ShuttingDown` among them) to reach the
/// peers' sockets before it exits.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// A connection to close: its id, whether it is a client's, its outbox.
type Closing = (u64, bool, Rc<Outbox>);

impl Shard {
    /// Drains this shard (the listener is closed already): refuses new requests, waits until
    /// no shard has a request in flight or the drain's deadline, then sends every
    /// connection `Error { ShuttingDown }` after what is queued for it, closes them and waits
    /// up to [`FLUSH_WAIT`] for the bytes to leave. A stop cuts it short.
    pub(crate) async fn drain_out(&self, shutdown: &Shutdown) {
        let idx = self.env.idx;
        let (conns, open) = self.handle((), |st, ()| {
            st.draining = true;
            (st.conns.len(), st.requests.len())
        });
        info!(
            shard = idx,
            conns, open, "draining: new connections refused, new requests refused with ShuttingDown; waiting for the requests in flight"
        );
        let drained = shutdown.unless_stopped(self.wait_for_requests(shutdown));
        if drained.await.is_none() {
            return;
        }
        let open = self.handle((), |st, ()| st.requests.len());
        let message = match open {
            0 => "the broker is shutting down".to_string(),
            _ => format!(
                "the broker is shutting down; requests not finished within its drain ({}) are ended",
                humantime_secs(shutdown.drain_for)
            ),
        };
        let conns: Vec<Closing> = self.handle((), |st, ()| {
            let conns = st.conns.iter();
            let client = |c: &super::conns::Conn| matches!(c.peer, Peer::Client { .. });
            conns
                .map(|(id, c)| (id, client(c), c.out.clone()))
                .collect()
        });
        info!(
            shard = idx,
            conns = conns.len(),
            open,
            "shutting down: closing every connection with ShuttingDown"
        );
        // Clients first, on every shard: a request still open ends with `ShuttingDown`,
        // not with its worker's connection closing (`WorkerLost`).
        let close = |clients| self.handle((&conns[..], clients, &message[..]), State::close_all);
        close(true);
        shutdown.clients_closed();
        let until = Instant::now() + FLUSH_WAIT;
        let others = async {
            while !shutdown.all_clients_closed() && Instant::now() < until {
                glommio::timer::sleep(crate::TICK).await;
            }
        };
        shutdown.unless_stopped(others).await;
        close(false);
        crate::metrics::CLOSED
            .with_label_values(&["shutting_down"])
            .inc_by(conns.len() as u64);
        self.handle((), |st, ()| st.cut_connections());
        // The triggers' counts since the last report, with the job records still queued.
        self.handle(true, State::report_triggers);
        let until = Instant::now() + FLUSH_WAIT;
        while Instant::now() < until && conns.iter().any(|(_, _, out)| out.backlog_bytes() > 0) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publishes this shard's requests in flight each tick, until no shard has one or the
    /// drain's deadline passed.
    async fn wait_for_requests(&self, shutdown: &Shutdown) {
        loop {
            let open = self.handle((), |st, ()| st.requests.len());
            shutdown.publish(self.env.idx, open);
            if shutdown.all_done() {
                return;
            }
            if shutdown.past_deadline() {
                if open > 0 {
                    warn!(
                        shard = self.env.idx,
                        open,
                        "drain deadline passed: the requests still open end with ShuttingDown"
                    );
                }
                return;
            }
            glommio::timer::sleep(crate::TICK).await;
        }
    }
}

impl State {
    /// [`State::close_with_shutdown`] for each of `conns` that is a client's (`true`) or a
    /// worker's (`false`).
    fn close_all(&mut self, (conns, clients, message): (&[Closing], bool, &str)) {
        for (conn_id, _, out) in conns.iter().filter(|c| c.1 == clients) {
            self.close_with_shutdown(*conn_id, out, message);
        }
    }

    /// Queues `Error { ShuttingDown }` after what is queued for connection `conn_id` (the
    /// last replies of the requests that finished), closes its outbox and forgets it: the
    /// frames that forgetting it causes are dropped.
    fn close_with_shutdown(&mut self, conn_id: u64, out: &Outbox, message: &str) {
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
