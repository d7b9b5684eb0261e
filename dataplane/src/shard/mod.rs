//! One broker shard: the connections, request runs and registry replica owned by one
//! glommio executor.
//!
//! What handling an event changes is the shard's [`State`]: one field per concern
//! (connections, requests, routing, stats, what the event left unsettled), each a type with
//! `&mut self` methods of its own. The state lives in one `RefCell` that only
//! [`Shard::handle`] borrows, once per event (a frame, a mesh message, a tick), to run a
//! plain `fn(&mut State, _)` on it. A function pointer captures nothing and the state holds
//! no way back to its cell, so nothing a handler calls can borrow it again: a nested borrow
//! does not compile, where it used to panic. A handler is not async, so it cannot await
//! while it holds the borrow; the awaits (reads, [`Shard::settle`]) come between events.
//!
//! Work that concerns another shard crosses once through the channel mesh as a
//! [`ShardMsg`]: a dispatch to a worker connected there, a worker's events back to the
//! shard that owns the request, cancellations, and worker online/offline news for every
//! registry replica. A dispatch id carries the index of the shard that owns its request in
//! its top 8 bits, so a worker's frames are routed home without a lookup table.
//!
//! The shard's jobs, one module each:
//! - `executor`: the shard's tasks (listener and accept loop, mesh receivers, ticks) until
//!   its shutdown; `drain`: the graceful one;
//! - `serve`: a connection's task (TLS, `Hello`, reads, heartbeats);
//! - `conns`: the connections (open, send, close, credentials, cutting one: a slow client,
//!   a revoked credential, a superseded worker);
//! - `requests`: admitting a client's `Request` (`routing`: to which workers); `runs`:
//!   running its state machine and carrying out what it decides, timeouts, the held-back
//!   `Routed`;
//! - `workers`: the workers connected here (dispatches, cancels and pauses to them, their
//!   frames, `Announce`, online/offline news);
//! - `mesh`: messages to other shards and the backpressure of a frame ([`Unsettled`]);
//! - `stats`: the shard's metric handles; `jobs`: the job-history trace of each request.

mod conns;
mod drain;
mod executor;
mod jobs;
mod mesh;
mod requests;
mod routing;
mod runs;
mod serve;
mod stats;
mod workers;

pub(crate) use executor::run;
pub(crate) use mesh::ShardMsg;

use crate::config::{ConfigSource, Principal};
use crate::conn::{ClientBudget, Outbox};
use crate::idem::IdemWindows;
use crate::limits::PendingHandshakes;
use crate::request::Action;
use crate::shutdown::Shutdown;
use crate::{BrokerSettings, RoundRobin};
use conns::Conns;
use glommio::channels::channel_mesh::Senders;
use mesh::{MeshLinks, Unsettled};
use proto::{Frame, ProtoError, Role};
use requests::Requests;
use routing::Routing;
use stats::Stats;
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use tracing::debug;

/// Bits of a dispatch id below the owning shard's index.
const DISPATCH_SHARD_SHIFT: u32 = 56;

/// The most shards a broker may have: what the top bits of a dispatch id can name.
pub(crate) const MAX_SHARDS: usize = 1 << (u64::BITS - DISPATCH_SHARD_SHIFT);

/// The shard that owns the request of `dispatch_id`.
fn home_of(dispatch_id: u64) -> usize {
    (dispatch_id >> DISPATCH_SHARD_SHIFT) as usize
}

/// What every shard of a broker shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) settings: BrokerSettings,
    pub(crate) source: Arc<dyn ConfigSource>,
    /// Roundrobin positions, so rotation is fair whichever shard a client landed on.
    rr: Arc<RoundRobin>,
    /// The idempotency window; touched only by keyed requests.
    idem: Arc<IdemWindows>,
    /// The bytes queued towards every client of the broker, against their budget.
    budget: Arc<ClientBudget>,
    /// Connections per peer address, pending and open.
    pending: Arc<PendingHandshakes>,
    pub(crate) shutdown: Arc<Shutdown>,
}

impl Shared {
    pub(crate) fn new(settings: BrokerSettings, source: Arc<dyn ConfigSource>) -> Shared {
        Shared {
            rr: Arc::default(),
            idem: Arc::default(),
            budget: Arc::new(ClientBudget::new(settings.max_client_backlog_total)),
            pending: Arc::new(PendingHandshakes::new(
                settings.max_pending_per_address,
                settings.max_connections_per_address,
            )),
            shutdown: Arc::new(Shutdown::new(settings.shards, settings.drain)),
            settings,
            source,
        }
    }
}

/// What a shard knows that does not change while it runs: read by its tasks and by the
/// handlers of its state alike.
pub(crate) struct Env {
    idx: usize,
    settings: BrokerSettings,
    source: Arc<dyn ConfigSource>,
    idem: Arc<IdemWindows>,
    budget: Arc<ClientBudget>,
    /// The channels to the other shards; `None` with one shard.
    mesh: Option<Rc<MeshLinks>>,
}

/// What handling an event changes, one concern per field. Borrowed only by
/// [`Shard::handle`].
pub(crate) struct State {
    env: Rc<Env>,
    conns: Conns,
    requests: Requests,
    routing: Routing,
    stats: Stats,
    /// What the event being handled left to do once it is over; see [`Shard::settle`].
    unsettled: Unsettled,
    /// Emptied action lists, reused by `State::with_request` instead of a new one per call.
    action_lists: Vec<Vec<Action>>,
    /// Set when the broker drains: new requests are refused with `ShuttingDown`.
    draining: bool,
    n_ticks: u64,
    /// The cell's nodes as last read from the source (`Welcome::nodes`), and the source's
    /// `nodes_revision` they were read at.
    nodes: Vec<String>,
    nodes_revision: u64,
    /// The triggers' requests of the minute now (`jobs.rs`).
    triggers: crate::triggers::TriggerTally,
}

/// One shard: what it knows, and its state.
pub(crate) struct Shard {
    env: Rc<Env>,
    state: RefCell<State>,
}

impl Shard {
    pub(crate) fn new(idx: usize, shared: &Shared, senders: Option<Senders<ShardMsg>>) -> Shard {
        let settings = shared.settings.clone();
        let mesh =
            senders.map(|s| Rc::new(MeshLinks::new(s, settings.shards, settings.mesh_depth)));
        let env = Rc::new(Env {
            idx,
            source: shared.source.clone(),
            idem: shared.idem.clone(),
            budget: shared.budget.clone(),
            mesh,
            settings,
        });
        let state = State {
            conns: Conns::default(),
            requests: Requests::new(idx),
            routing: Routing::new(&*shared.source, shared.rr.clone()),
            stats: Stats::new(idx),
            unsettled: Unsettled::default(),
            action_lists: Vec::new(),
            draining: false,
            n_ticks: 0,
            nodes: shared.source.nodes(),
            nodes_revision: shared.source.nodes_revision(),
            triggers: crate::triggers::TriggerTally::new(crate::triggers::unix_ms_now()),
            env: env.clone(),
        };
        Shard {
            env,
            state: RefCell::new(state),
        }
    }

    /// Handles one event: runs `f` on the state, borrowed for it alone (see the module
    /// docs: `f` cannot reach the cell again, nor await).
    fn handle<A, R>(&self, arg: A, f: fn(&mut State, A) -> R) -> R {
        f(&mut self.state.borrow_mut(), arg)
    }

    /// Registers a connection whose `Hello` was accepted (see `State::open_conn`); its id.
    pub(crate) fn open_conn(
        &self,
        out: Rc<Outbox>,
        principal: Principal,
        role: Role,
        version: u16,
    ) -> u64 {
        self.handle((out, principal, role, version), |st, (o, p, r, v)| {
            st.open_conn(o, p, r, v)
        })
    }

    /// Handles one frame of an open connection; `false` means close it.
    pub(crate) fn on_frame(&self, conn_id: u64, role: Role, frame: Frame) -> bool {
        self.handle(
            (conn_id, frame),
            match role {
                Role::Client => |st, (c, f)| st.on_client_frame(c, f),
                Role::Worker => |st, (c, f)| st.on_worker_frame(c, f),
            },
        )
    }

    /// Answers a frame that could not be decoded; the caller then closes the connection.
    pub(crate) fn reject(&self, conn_id: u64, e: &ProtoError) {
        self.handle((conn_id, e), |st, (c, e)| st.reject(c, e))
    }

    /// Forgets a closed connection (see `State::close_conn`).
    pub(crate) fn close_conn(&self, conn_id: u64) {
        self.handle(conn_id, State::close_conn)
    }

    /// Pauses (or resumes) the output of client `conn_id`'s waited requests at their workers.
    pub(crate) fn flow_client(&self, conn_id: u64, paused: bool) {
        self.handle((conn_id, paused), |st, (c, p)| st.flow_client(c, p))
    }

    /// Handles a message from another shard.
    pub(crate) fn on_shard_msg(&self, msg: ShardMsg) {
        self.handle(msg, State::on_shard_msg)
    }

    /// The shard's periodic work: configuration reloads, expired credentials, due timeouts,
    /// the held-back `Routed`, sampled gauges; then what that left to wait for.
    pub(crate) fn tick(&self) -> impl Future<Output = ()> + '_ {
        self.handle((), |st, ()| st.tick());
        self.settle()
    }
}

impl State {
    fn tick(&mut self) {
        let idx = self.env.idx;
        if let Some(revision) = self.routing.reload(&*self.env.source) {
            debug!(shard = idx, revision, "configuration reloaded");
            self.recheck_credentials();
        }
        self.n_ticks += 1;
        self.tell_nodes();
        self.expire_credentials();
        if self.n_ticks.is_multiple_of(10) {
            self.close_if_stale();
        }
        if self.n_ticks.is_multiple_of(100) {
            self.stats.set_queued(self.conns.queued());
        }
        self.report_triggers(self.n_ticks.is_multiple_of(100));
        self.release_routed();
        self.expire();
    }

    /// When the cell's nodes changed (one atomic load per tick otherwise): takes the new list
    /// for the next `Welcome`s and sends it as `Nodes` to every peer connected here.
    fn tell_nodes(&mut self) {
        let revision = self.env.source.nodes_revision();
        if revision == self.nodes_revision {
            return;
        }
        self.nodes_revision = revision;
        let nodes = self.env.source.nodes();
        if nodes == self.nodes {
            return;
        }
        debug!(shard = self.env.idx, ?nodes, "the cell's nodes changed");
        self.nodes = nodes;
        let frame = Frame::Nodes {
            nodes: self.nodes.clone(),
        };
        let peers: Vec<u64> = self.conns.iter().map(|(id, _)| id).collect();
        for conn_id in peers {
            self.send_to_conn(conn_id, &frame);
        }
    }
}

#[cfg(test)]
mod tests;
