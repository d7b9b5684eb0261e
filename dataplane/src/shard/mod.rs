//! One broker shard: the connections, request runs and registry replica owned by one
//! glommio executor.
//!
//! State lives in `RefCell`s on the shard and is never borrowed across an await. Work that
//! concerns another shard crosses once through the channel mesh as a [`ShardMsg`]: a dispatch
//! to a worker connected there, a worker's events back to the shard that owns the request,
//! cancellations, and worker online/offline news for every registry replica.
//!
//! A dispatch id carries the index of the shard that owns its request in its top 8 bits, so a
//! worker's frames are routed home without a lookup table.
//!
//! The shard's jobs, one module each:
//! - `lifecycle`: a connection's life (serve, handshake, heartbeats, close);
//! - `requests`: the requests this shard owns (routing, running the state machine, timeouts,
//!   the held-back `Routed`);
//! - `workers`: the workers connected here (dispatches and cancels to them, their frames,
//!   `Announce`, online/offline news);
//! - `mesh`: messages to other shards and the backpressure of a frame ([`Unsettled`]);
//! - `stats`: the shard's metric handles;
//! - `jobs`: the job-history trace of each request (off unless the source records jobs).

mod drain;
mod jobs;
mod lifecycle;
mod mesh;
mod requests;
mod stats;
mod workers;

pub(crate) use drain::Drain;
pub(crate) use lifecycle::PendingHandshakes;
pub(crate) use mesh::ShardMsg;

use crate::config::{ConfigSource, Principal};
use crate::conn::{ClientBudget, Outbox};
use crate::idem::IdemWindows;
use crate::registry::Registry;
use crate::request::Action;
use crate::{BrokerSettings, RoundRobin};
use glommio::channels::channel_mesh::Senders;
use mesh::{MeshLinks, Unsettled};
use requests::RequestEntry;
use stats::Stats;
use std::cell::{Cell, RefCell};
// foldhash: the maps are keyed by broker-chosen ids and looked up several times per frame;
// SipHash's DoS resistance buys nothing there and cost ~2 % of the throughput profile.
use foldhash::{HashMap, HashSet};
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;
use tracing::debug;

/// Bits of a dispatch id below the owning shard's index.
const DISPATCH_SHARD_SHIFT: u32 = 56;

/// The most shards a broker may have: what the top bits of a dispatch id can name.
pub(crate) const MAX_SHARDS: usize = 1 << (u64::BITS - DISPATCH_SHARD_SHIFT);

/// What is known about one connection.
enum Peer {
    Client {
        /// Client request id → shard request key.
        requests: HashMap<u64, u64>,
        /// Its request rate and its refusals' log.
        limits: ClientLimits,
    },
    Worker {
        /// Dispatches this worker is running, from any shard.
        inflight: HashSet<u64>,
        /// Orders this identity's connections broker-wide; the newest wins.
        generation: u64,
    },
}

/// A client connection's rate bucket (when a rate is set) and its refusals' log.
#[derive(Debug, Default)]
struct ClientLimits {
    bucket: Option<crate::limits::Bucket>,
    log: crate::limits::LogEvery,
}

struct Conn {
    out: Rc<Outbox>,
    /// Who it is, for routing, isolation and the worker's online/offline news.
    principal: Principal,
    peer: Peer,
}

#[derive(Default)]
struct State {
    registry: Registry,
    conns: HashMap<u64, Conn>,
    requests: HashMap<u64, RequestEntry>,
    /// Dispatch id → request key, for dispatches of requests owned here.
    dispatch_owner: HashMap<u64, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// A staged run's dispatches by when each times out: (due, dispatch id). Each worker of
    /// a batched mirror or a serial run has its timeout from its own start.
    dispatch_deadlines: BTreeSet<(Instant, u64)>,
    /// Dispatch id → its entry in `dispatch_deadlines` (removed with the dispatch).
    dispatch_due: HashMap<u64, Instant>,
    /// Requests whose `Routed` is held back, oldest first.
    routed_held: VecDeque<(Instant, u64)>,
    /// Connections whose credential expires: (expiry in seconds since the Unix epoch, conn).
    expiries: BTreeSet<(u64, u64)>,
    /// team → service → the broker-wide roundrobin counter, looked up once per shard.
    rr_cache: HashMap<String, HashMap<String, Arc<AtomicU64>>>,
}

pub(crate) struct Shard {
    idx: usize,
    settings: BrokerSettings,
    source: Arc<dyn ConfigSource>,
    rr: Arc<RoundRobin>,
    /// The idempotency window, shared by every shard; touched only by keyed requests.
    idem: Arc<IdemWindows>,
    /// The bytes queued towards every client of the broker, against their budget.
    budget: Arc<ClientBudget>,
    /// The channels to the other shards; `None` with one shard.
    mesh: Option<Rc<MeshLinks>>,
    state: RefCell<State>,
    next_conn: Cell<u64>,
    next_dispatch: Cell<u64>,
    next_request: Cell<u64>,
    session_base: u64,
    revision: Cell<u64>,
    n_ticks: Cell<u64>,
    stats: Stats,
    /// Emptied action lists, reused by [`Shard::with_request`] instead of a new one per call.
    action_lists: RefCell<Vec<Vec<Action>>>,
    /// What the frame being handled left to wait for; see [`Shard::settle`].
    unsettled: RefCell<Unsettled>,
    /// Set when the broker drains: new requests are refused with `ShuttingDown`.
    draining: Cell<bool>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        idx: usize,
        n_shards: usize,
        settings: BrokerSettings,
        source: Arc<dyn ConfigSource>,
        rr: Arc<RoundRobin>,
        idem: Arc<IdemWindows>,
        budget: Arc<ClientBudget>,
        senders: Option<Senders<ShardMsg>>,
    ) -> Shard {
        let mesh = senders.map(|s| Rc::new(MeshLinks::new(s, n_shards, settings.mesh_depth)));
        let revision = source.revision();
        let registry = Registry::new(source.routing());
        Shard {
            idx,
            settings,
            source,
            rr,
            idem,
            budget,
            mesh,
            state: RefCell::new(State {
                registry,
                ..State::default()
            }),
            next_conn: Cell::new(1),
            next_dispatch: Cell::new(1),
            next_request: Cell::new(1),
            session_base: (idx as u64) << DISPATCH_SHARD_SHIFT,
            revision: Cell::new(revision),
            n_ticks: Cell::new(0),
            stats: Stats::new(idx),
            action_lists: RefCell::new(Vec::new()),
            unsettled: RefCell::new(Unsettled::default()),
            draining: Cell::new(false),
        }
    }

    fn next_dispatch_id(&self) -> u64 {
        let n = self.next_dispatch.get();
        self.next_dispatch.set(n + 1);
        ((self.idx as u64) << DISPATCH_SHARD_SHIFT) | (n & ((1 << DISPATCH_SHARD_SHIFT) - 1))
    }

    /// The shard that owns the request of `dispatch_id`.
    fn home_of(dispatch_id: u64) -> usize {
        (dispatch_id >> DISPATCH_SHARD_SHIFT) as usize
    }

    /// The shard's periodic work: configuration reloads, due timeouts, sampled gauges.
    pub(crate) async fn tick(&self) {
        let revision = self.source.revision();
        if revision != self.revision.get() {
            self.revision.set(revision);
            let routing = self.source.routing();
            self.state.borrow_mut().registry.set_routing(routing);
            debug!(shard = self.idx, revision, "configuration reloaded");
            self.recheck_credentials();
        }
        let n = self.n_ticks.get() + 1;
        self.n_ticks.set(n);
        self.expire_credentials();
        if n.is_multiple_of(100) {
            let queued: usize = self
                .state
                .borrow()
                .conns
                .values()
                .map(|c| c.out.len())
                .sum();
            self.stats.set_queued(queued);
        }
        self.release_routed();
        self.expire();
        self.settle().await;
    }
}

#[cfg(test)]
mod tests;
