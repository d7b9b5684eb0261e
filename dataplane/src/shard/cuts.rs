//! Cutting a connection: a client that does not read its replies, a credential revoked or
//! expired, a worker connection a newer one of the same identity superseded. What handling
//! an event finds to cut is noted ([`Unsettled::cut_later`](super::mesh::Unsettled)) and
//! cut once the event is handled, before anything waits: a cut client is never waited for.

use super::State;
use crate::config::Principal;
use proto::{ErrorKind, Frame};
use tracing::warn;

impl State {
    /// Cuts the connections noted to be cut: each is sent a final `Error { id: None }` if it
    /// fits (its backlog is dropped) and closed; a client's waited requests are cancelled.
    pub(super) fn cut_connections(&mut self) {
        loop {
            let to_cut = std::mem::take(&mut self.unsettled.to_cut);
            if to_cut.is_empty() {
                return;
            }
            for (conn_id, kind, why) in to_cut {
                self.cut(conn_id, kind, why);
            }
        }
    }

    fn cut(&mut self, conn_id: u64, kind: ErrorKind, why: String) {
        let Some(conn) = self.conns.get(conn_id) else {
            return;
        };
        let (shard, out) = (self.env.idx, &conn.out);
        let Principal { team, identity, .. } = &conn.principal;
        let (message, reason) = match kind {
            ErrorKind::SlowConsumer if !why.is_empty() => {
                warn!(shard, conn_id, %identity, %team, backlog = out.backlog_bytes(), total = self.env.budget.bytes(), kind = ?kind, "slow consumer over its share of the clients' budget: closing the client's connection and ending its requests");
                (why, "slow_consumer")
            }
            ErrorKind::SlowConsumer => {
                let backlog = out.backlog_bytes();
                warn!(shard, conn_id, %identity, %team, backlog, kind = ?kind, "slow consumer: closing the client's connection and ending its requests");
                (
                    format!(
                        "the client did not read its replies: {backlog} bytes waited for it, past the broker's bound of {}; its requests are ended",
                        self.env.settings.max_client_backlog
                    ),
                    "slow_consumer",
                )
            }
            ErrorKind::Revoked => {
                warn!(shard, conn_id, %identity, %team, %why, "credential revoked: closing the connection");
                (why, "revoked")
            }
            _ => {
                warn!(shard, conn_id, %identity, %team, kind = ?kind, "a newer connection of this worker took over; closing the old one");
                (
                    format!(
                        "a newer connection of worker `{identity}` took over; this one is closed"
                    ),
                    "superseded",
                )
            }
        };
        crate::metrics::CLOSED.with_label_values(&[reason]).inc();
        out.cut(&Frame::Error {
            id: None,
            kind,
            message,
        });
        self.close_conn(conn_id);
    }
}
