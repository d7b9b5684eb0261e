//! Flow control of a slow client: its requests' output is paused at the workers running them
//! (`Frame::Pause`) while its backlog is past its pause mark, and resumed once it came down.

use super::{ShardMsg, State};
use crate::registry::WorkerAt;
use proto::Frame;
use tracing::debug;

impl State {
    /// Pauses the output of the clients noted by `send_to_conn` at their workers.
    pub(super) fn pause_clients(&mut self) {
        for conn_id in std::mem::take(&mut self.unsettled.to_pause) {
            self.flow_client(conn_id, true);
        }
    }

    /// Pauses (or resumes) the output of every waited request of client `conn_id` at the
    /// workers running it.
    pub(super) fn flow_client(&mut self, conn_id: u64, paused: bool) {
        let requests = &self.requests;
        let Some(keys) = self.conns.client_requests(conn_id) else {
            return;
        };
        let dispatches: Vec<(u64, WorkerAt)> = keys
            .values()
            .filter_map(|&key| requests.get(key))
            .filter(|entry| entry.wait)
            .flat_map(|entry| entry.run.open_dispatches_at())
            .collect();
        if paused {
            crate::metrics::CLIENT_PAUSES.inc();
            debug!(
                shard = self.env.idx,
                conn_id,
                dispatches = dispatches.len(),
                backlog = self.env.budget.bytes(),
                "client behind: pausing its requests' output"
            );
        }
        for (dispatch_id, at) in dispatches {
            self.flow_dispatch(dispatch_id, at, paused);
        }
    }

    /// Pauses (or resumes) the output of dispatch `dispatch_id` at worker `at`, on whatever
    /// shard it is connected to.
    pub(super) fn flow_dispatch(&mut self, dispatch_id: u64, at: WorkerAt, paused: bool) {
        if at.shard_idx == self.env.idx {
            self.flow_local(at.conn_id, dispatch_id, paused);
        } else {
            let conn_id = at.conn_id;
            let msg = ShardMsg::Flow {
                conn_id,
                dispatch_id,
                paused,
            };
            self.send_to_shard(at.shard_idx, msg);
        }
    }

    /// Tells a worker connected to this shard to pause (or resume) the output of a dispatch
    /// it still runs.
    pub(super) fn flow_local(&mut self, conn_id: u64, dispatch_id: u64, paused: bool) {
        let Some((out, inflight)) = self.conns.worker(conn_id) else {
            return;
        };
        if inflight.contains(&dispatch_id) {
            let frame = match paused {
                true => Frame::Pause { id: dispatch_id },
                false => Frame::Resume { id: dispatch_id },
            };
            self.unsettled.push_to(out, &frame);
        }
    }
}
