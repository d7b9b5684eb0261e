//! The workers connected to this shard: dispatches and cancels to them, their frames, the
//! online/offline news every shard's registry replica follows, and flow control: a slow
//! client's requests' output paused at the workers running them (`Frame::Pause`) while its
//! backlog is past its pause mark, and resumed once it came down.

use super::conns::{Conn, Peer};
use super::{ShardMsg, State};
use crate::config::Principal;
use crate::registry::{Online, WorkerAt};
use crate::request::WorkerEvent;
use proto::control::WorkerState;
use proto::{ErrorKind, Frame, ProtoError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Generations of worker connections, process-wide: every connection gets a higher one
/// than any before it, so "the newest" means the same on every shard.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A generation for a worker connection being opened.
pub(super) fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

impl State {
    /// Hands a dispatch to a worker connected to this shard, or reports it lost.
    pub(super) fn deliver_local(&mut self, conn_id: u64, dispatch: proto::Dispatch) {
        let dispatch_id = dispatch.id;
        match self.conns.worker(conn_id) {
            // If the worker closed, its close handler reports the dispatch lost.
            // A worker's outbox has no byte bound: it cannot overflow, only push back.
            Some((out, inflight)) => {
                inflight.insert(dispatch_id);
                self.unsettled
                    .push_to(out, &Frame::Dispatch(Box::new(dispatch)));
            }
            None => self.route_event(dispatch_id, WorkerEvent::Lost),
        }
    }

    /// Tells a worker connected to this shard to stop a dispatch it still runs.
    pub(super) fn cancel_local(&mut self, conn_id: u64, dispatch_id: u64) {
        if let Some((out, inflight)) = self.conns.worker(conn_id) {
            if inflight.remove(&dispatch_id) {
                self.unsettled
                    .push_to(out, &Frame::Cancel { id: dispatch_id });
            }
        }
    }

    /// A frame from a worker.
    pub(super) fn on_worker_frame(&mut self, conn_id: u64, frame: Frame) -> bool {
        let (id, event) = match frame.into_worker_event() {
            Ok(event) => event,
            Err(Frame::Heartbeat) => return true,
            Err(Frame::Events { id, events }) => return self.on_worker_events(conn_id, id, events),
            Err(Frame::Announce { services }) => return self.on_announce(conn_id, services),
            Err(other) => {
                let reason = format!("a worker may not send {}", other.kind_name());
                self.reject(conn_id, &ProtoError::Malformed { reason });
                return false;
            }
        };
        if self.worker_runs(conn_id, id, event.ends_run()) {
            self.route_event(id, event.into());
        }
        true
    }

    /// Whether worker connection `conn_id` runs dispatch `id` (was given it, and has not
    /// finished it nor been told to cancel it): a worker may only speak of those, anything
    /// else is stale and dropped. With `ends`, the dispatch is over for it from now on.
    fn worker_runs(&mut self, conn_id: u64, id: u64, ends: bool) -> bool {
        self.conns
            .worker(conn_id)
            .is_some_and(|(_, inflight)| match ends {
                true => inflight.remove(&id),
                false => inflight.contains(&id),
            })
    }

    /// A worker's `Events`: handled as its single frames would be, routed (and carried to
    /// the request's shard) once for all of them.
    fn on_worker_events(&mut self, conn_id: u64, id: u64, events: Vec<proto::Event>) -> bool {
        let broken = match events.split_last() {
            None => Some("Events without an event"),
            Some((_, before)) if before.iter().any(proto::Event::ends_run) => {
                Some("Events with an event after the run's end")
            }
            Some(_) => None,
        };
        if let Some(reason) = broken {
            let reason = reason.to_string();
            self.reject(conn_id, &ProtoError::Malformed { reason });
            return false;
        }
        let ends = events.last().is_some_and(proto::Event::ends_run);
        if self.worker_runs(conn_id, id, ends) {
            self.route_events(id, events.into_iter().map(WorkerEvent::from).collect());
        }
        true
    }

    /// A worker's `Announce`: the services it serves besides its identity.
    fn on_announce(&mut self, conn_id: u64, services: Vec<String>) -> bool {
        for s in &services {
            if let Err(e) = proto::names::check_simple("service", s) {
                let reason = e.to_string();
                self.reject(conn_id, &ProtoError::Malformed { reason });
                return false;
            }
        }
        let Some(principal) = self.conns.get(conn_id).map(|c| c.principal.clone()) else {
            return false;
        };
        let Principal { team, identity, .. } = &principal;
        info!(shard = self.env.idx, %identity, ?services, "worker announced services");
        for s in &services {
            if self
                .routing
                .registry
                .configured_elsewhere(team, s, identity)
            {
                // Once per announcement: a worker announces once per connection.
                warn!(shard = self.env.idx, %identity, %team, service = %s,
                    "worker announced a configured service it is not bound to; ignored (bind it to the service to serve it)");
            }
        }
        let services_bound = self.routing.registry.bound_to(team, identity);
        let bound = Frame::Bound {
            services: services_bound,
        };
        self.send_to_conn(conn_id, &bound);
        self.report_worker(conn_id, WorkerState::Online, services.clone());
        self.worker_online(conn_id, &principal, services);
        true
    }

    /// Records a worker connected here (again, with what it announced) in this shard's
    /// registry and in every other shard's. An older connection of the same identity is
    /// closed wherever it is (here, or by its shard when the news arrives there); if a newer
    /// one is known already, this one is closed instead.
    pub(super) fn worker_online(&mut self, conn_id: u64, who: &Principal, announced: Vec<String>) {
        let generation = match self.conns.get(conn_id) {
            Some(Conn {
                peer: Peer::Worker { generation, .. },
                ..
            }) => *generation,
            _ => return,
        };
        let identity: Arc<str> = who.identity.as_str().into();
        let at = WorkerAt {
            shard_idx: self.env.idx,
            conn_id,
        };
        let online = self.routing.registry.worker_online(
            &who.team,
            identity.clone(),
            at,
            generation,
            announced.clone(),
        );
        if online == Online::Stale {
            // A newer connection of the identity is known: this one is superseded.
            return self.cut_superseded(Online::Replaced(at));
        }
        self.cut_superseded(online);
        self.send_to_every_shard(|| ShardMsg::WorkerOnline {
            team: who.team.clone(),
            identity: identity.clone(),
            at,
            generation,
            announced: announced.clone(),
        });
    }

    /// Notes the connection here that `online` found replaced by a newer one to be cut.
    pub(super) fn cut_superseded(&mut self, online: Online) {
        match online {
            Online::Replaced(old) if old.shard_idx == self.env.idx => {
                let (kind, why) = (ErrorKind::Superseded, String::new());
                self.unsettled.cut_later(old.conn_id, kind, why);
            }
            _ => {}
        }
    }

    /// Removes a worker that was connected here from every shard's registry. Sent on the
    /// same path as its online news, so every replica sees them in order.
    pub(super) fn worker_offline(&mut self, team: &str, identity: &str, at: WorkerAt) {
        self.routing.registry.worker_offline(team, identity, at);
        let identity: Arc<str> = identity.into();
        self.send_to_every_shard(|| ShardMsg::WorkerOffline {
            team: team.to_string(),
            identity: identity.clone(),
            at,
        });
    }

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
            .filter(|entry| entry.client.wait)
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

    /// Pauses (or resumes) the output of dispatch `dispatch_id` at worker `at`.
    pub(super) fn flow_dispatch(&mut self, dispatch_id: u64, at: WorkerAt, paused: bool) {
        self.send_to_worker(at, |conn_id| ShardMsg::Flow {
            conn_id,
            dispatch_id,
            paused,
        });
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
