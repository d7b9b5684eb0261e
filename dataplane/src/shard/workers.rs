//! The workers connected to this shard: dispatches and cancels to them, their frames, and
//! the online/offline news every shard's registry replica follows.

use super::{Conn, Peer, Shard, ShardMsg};
use crate::config::Principal;
use crate::conn::Outbox;
use crate::registry::{Online, WorkerAt};
use crate::request::WorkerEvent;
use foldhash::HashSet;
use proto::control::WorkerState;
use proto::{ErrorKind, Frame, ProtoError};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::{info, warn};

/// Generations of worker connections, process-wide: every connection gets a higher one
/// than any before it, so "the newest" means the same on every shard.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A generation for a worker connection being opened.
pub(super) fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

impl Shard {
    /// Hands a dispatch to a worker connected to this shard, or reports it lost.
    pub(super) fn deliver_local(&self, conn_id: u64, dispatch: proto::Dispatch) {
        let dispatch_id = dispatch.id;
        let out = self.with_worker(conn_id, |out, inflight| {
            inflight.insert(dispatch_id);
            out.clone()
        });
        match out {
            // If the worker closed, its close handler reports the dispatch lost.
            // A worker's outbox has no byte bound: it cannot overflow, only push back.
            Some(out) => {
                self.push_to(&out, &Frame::Dispatch(Box::new(dispatch)));
            }
            None => self.route_event(dispatch_id, WorkerEvent::Lost),
        }
    }

    /// Tells a worker connected to this shard to stop a dispatch it still runs.
    pub(super) fn cancel_local(&self, conn_id: u64, dispatch_id: u64) {
        let out = self.with_worker(conn_id, |out, inflight| {
            inflight.remove(&dispatch_id).then(|| out.clone())
        });
        if let Some(out) = out.flatten() {
            self.push_to(&out, &Frame::Cancel { id: dispatch_id });
        }
    }

    /// Tells a worker connected to this shard to pause (or resume) the output of a dispatch
    /// it still runs.
    pub(super) fn flow_local(&self, conn_id: u64, dispatch_id: u64, paused: bool) {
        let out = self.with_worker(conn_id, |out, inflight| {
            inflight.contains(&dispatch_id).then(|| out.clone())
        });
        if let Some(out) = out.flatten() {
            let frame = if paused {
                Frame::Pause { id: dispatch_id }
            } else {
                Frame::Resume { id: dispatch_id }
            };
            self.push_to(&out, &frame);
        }
    }

    /// Pauses (or resumes) the output of dispatch `dispatch_id` at worker `at`, on whatever
    /// shard it is connected to.
    pub(super) fn flow_dispatch(&self, dispatch_id: u64, at: WorkerAt, paused: bool) {
        if at.shard_idx == self.idx {
            self.flow_local(at.conn_id, dispatch_id, paused);
        } else {
            self.to_shard(
                at.shard_idx,
                ShardMsg::Flow {
                    conn_id: at.conn_id,
                    dispatch_id,
                    paused,
                },
            );
        }
    }

    /// A frame from a worker.
    pub(super) fn on_worker_frame(&self, conn_id: u64, frame: Frame) -> bool {
        let (id, event) = match frame.into_worker_event() {
            Ok(event) => event,
            Err(Frame::Heartbeat) => return true,
            Err(Frame::Events { id, events }) => return self.on_worker_events(conn_id, id, events),
            Err(Frame::Announce { services }) => return self.on_announce(conn_id, services),
            Err(other) => {
                self.reject(
                    conn_id,
                    &ProtoError::Malformed {
                        reason: format!("a worker may not send {}", other.kind_name()),
                    },
                );
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
    fn worker_runs(&self, conn_id: u64, id: u64, ends: bool) -> bool {
        let known = self.with_worker(conn_id, |_, inflight| {
            if ends {
                inflight.remove(&id)
            } else {
                inflight.contains(&id)
            }
        });
        known == Some(true)
    }

    /// A worker's `Events`: handled as its single frames would be, routed (and carried to
    /// the request's shard) once for all of them.
    fn on_worker_events(&self, conn_id: u64, id: u64, events: Vec<proto::Event>) -> bool {
        let Some((last, before)) = events.split_last() else {
            self.reject(
                conn_id,
                &ProtoError::Malformed {
                    reason: "Events without an event".into(),
                },
            );
            return false;
        };
        if before.iter().any(proto::Event::ends_run) {
            self.reject(
                conn_id,
                &ProtoError::Malformed {
                    reason: "Events with an event after the run's end".into(),
                },
            );
            return false;
        }
        if self.worker_runs(conn_id, id, last.ends_run()) {
            self.route_events(id, events.into_iter().map(WorkerEvent::from).collect());
        }
        true
    }

    /// Runs `f` on worker connection `conn_id`'s outbox and open dispatches; `None` if no
    /// such worker is connected here.
    fn with_worker<R>(
        &self,
        conn_id: u64,
        f: impl FnOnce(&Rc<Outbox>, &mut HashSet<u64>) -> R,
    ) -> Option<R> {
        let mut state = self.state.borrow_mut();
        match state.conns.get_mut(&conn_id) {
            Some(Conn {
                out,
                peer: Peer::Worker { inflight, .. },
                ..
            }) => Some(f(out, inflight)),
            _ => None,
        }
    }

    /// A worker's `Announce`: the services it serves besides its identity.
    fn on_announce(&self, conn_id: u64, services: Vec<String>) -> bool {
        for s in &services {
            if let Err(e) = proto::names::check_simple("service", s) {
                self.reject(
                    conn_id,
                    &ProtoError::Malformed {
                        reason: e.to_string(),
                    },
                );
                return false;
            }
        }
        let principal = match self.state.borrow().conns.get(&conn_id) {
            Some(conn) => conn.principal.clone(),
            None => return false,
        };
        info!(shard = self.idx, identity = %principal.identity, ?services, "worker announced services");
        {
            let state = self.state.borrow();
            for s in &services {
                if state
                    .registry
                    .configured_elsewhere(&principal.team, s, &principal.identity)
                {
                    // Once per announcement: a worker announces once per connection.
                    warn!(shard = self.idx, identity = %principal.identity, team = %principal.team, service = %s,
                        "worker announced a configured service it is not bound to; ignored (bind it to the service to serve it)");
                }
            }
        }
        self.report_worker(conn_id, WorkerState::Online, services.clone());
        self.worker_online(conn_id, &principal, services);
        true
    }

    /// Records a worker connected here (again, with what it announced) in this shard's
    /// registry and in every other shard's. An older connection of the same identity is
    /// closed wherever it is (here, or by its shard when the news arrives there); if a newer
    /// one is known already, this one is closed instead.
    pub(super) fn worker_online(&self, conn_id: u64, who: &Principal, announced: Vec<String>) {
        let generation = match self.state.borrow().conns.get(&conn_id) {
            Some(Conn {
                peer: Peer::Worker { generation, .. },
                ..
            }) => *generation,
            _ => return,
        };
        let identity: Arc<str> = who.identity.as_str().into();
        let at = WorkerAt {
            shard_idx: self.idx,
            conn_id,
        };
        let online = self.state.borrow_mut().registry.worker_online(
            &who.team,
            identity.clone(),
            at,
            generation,
            announced.clone(),
        );
        match online {
            Online::Stale => {
                self.close_later(conn_id, ErrorKind::Superseded);
                return;
            }
            Online::Replaced(old) if old.shard_idx == self.idx => {
                self.close_later(old.conn_id, ErrorKind::Superseded);
            }
            _ => {}
        }
        self.to_every_shard(|| ShardMsg::WorkerOnline {
            team: who.team.clone(),
            identity: identity.clone(),
            at,
            generation,
            announced: announced.clone(),
        });
    }

    /// Removes a worker that was connected here from every shard's registry. Sent on the
    /// same path as its online news, so every replica sees them in order.
    pub(super) fn worker_offline(&self, team: &str, identity: &str, at: WorkerAt) {
        self.state
            .borrow_mut()
            .registry
            .worker_offline(team, identity, at);
        let identity: Arc<str> = identity.into();
        self.to_every_shard(|| ShardMsg::WorkerOffline {
            team: team.to_string(),
            identity: identity.clone(),
            at,
        });
    }
}
