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

use crate::config::{ConfigSource, Principal};
use crate::conn::{write_loop, FrameReader, Outbox, ReadError, SharedStream};
use crate::metrics;
use crate::registry::{Registry, WorkerAt, WorkerRef};
use crate::request::{Action, Policy, RequestRun, WorkerEvent};
use crate::{BrokerSettings, RoundRobin};
use glommio::channels::channel_mesh::Senders;
use glommio::net::TcpStream;
use proto::control::{WorkerState, WorkerStateReport};
use proto::{Algorithm, Credential, ErrorKind, Frame, ProtoError, Request, Role};
use std::cell::{Cell, RefCell};
// foldhash: the maps are keyed by broker-chosen ids and looked up several times per frame;
// SipHash's DoS resistance buys nothing there and cost ~2 % of the throughput profile.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long `Routed` may wait for the first reply before it is sent alone, so that a client
/// whose worker is slow to accept (busy, queued) still learns at once that it was routed.
const ROUTED_HOLD: Duration = Duration::from_millis(5);

/// Bits of a dispatch id below the owning shard's index.
const DISPATCH_SHARD_SHIFT: u32 = 56;

/// A message from one shard to another.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    WorkerOnline {
        team: String,
        identity: Arc<str>,
        at: WorkerAt,
        announced: Vec<String>,
    },
    WorkerOffline {
        team: String,
        identity: Arc<str>,
        at: WorkerAt,
    },
    /// Deliver to the worker connection `conn_id` on the receiving shard.
    Dispatch {
        conn_id: u64,
        dispatch: proto::Dispatch,
    },
    /// Tell the worker connection `conn_id` to stop `dispatch_id`.
    Cancel { conn_id: u64, dispatch_id: u64 },
    /// A worker's event for a request owned by the receiving shard.
    Event {
        dispatch_id: u64,
        event: WorkerEvent,
    },
}

/// What is known about one connection.
enum Peer {
    Client {
        /// Who it is, for routing and isolation.
        principal: Principal,
        /// Client request id → shard request key.
        requests: HashMap<u64, u64>,
    },
    Worker {
        /// Dispatches this worker is running, from any shard.
        inflight: HashSet<u64>,
    },
}

struct Conn {
    out: Rc<Outbox>,
    peer: Peer,
}

/// The fields of a request every dispatch repeats.
struct DispatchTemplate {
    service: String,
    plugin: String,
    command: Vec<String>,
    args: Vec<proto::Arg>,
    payload: Vec<u8>,
    timeout_ms: u64,
}

struct RequestEntry {
    /// `Routed`, held back until the first reply (or [`ROUTED_HOLD`]) so that on the fast
    /// path both leave in one write: a separate early write costs the client a wake-up and
    /// the broker a send per request.
    routed: Option<Frame>,
    started: Instant,
    service: Arc<crate::config::ServiceConfig>,
    algorithm: Algorithm,
    client_conn: u64,
    client_request_id: u64,
    wait: bool,
    deadline: Instant,
    template: DispatchTemplate,
    run: RequestRun,
}

#[derive(Default)]
struct State {
    registry: Registry,
    conns: HashMap<u64, Conn>,
    requests: HashMap<u64, RequestEntry>,
    /// Dispatch id → request key, for dispatches of requests owned here.
    dispatch_owner: HashMap<u64, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// Requests whose `Routed` is held back, oldest first.
    routed_held: std::collections::VecDeque<(Instant, u64)>,
    /// team → service → the broker-wide roundrobin counter, looked up once per shard.
    rr_cache: HashMap<String, HashMap<String, Arc<AtomicU64>>>,
}

/// Who the client of a request is, copied out before actions run.
#[derive(Clone, Copy)]
struct ClientSide {
    conn_id: u64,
    request_id: u64,
    wait: bool,
}

pub(crate) struct Shard {
    idx: usize,
    n_shards: usize,
    settings: BrokerSettings,
    source: Arc<dyn ConfigSource>,
    rr: Arc<RoundRobin>,
    senders: Option<Rc<Senders<ShardMsg>>>,
    state: RefCell<State>,
    next_conn: Cell<u64>,
    next_dispatch: Cell<u64>,
    next_request: Cell<u64>,
    session_base: u64,
    revision: Cell<u64>,
    n_ticks: Cell<u64>,
    /// Metric handles resolved once, so the request path does no label lookups for them.
    inflight: prometheus::IntGauge,
    queued: prometheus::IntGauge,
    /// Request latency histograms, indexed by [`algorithm_idx`].
    durations: [prometheus::Histogram; 3],
    /// (service, algorithm, outcome) → counter, resolved on first use.
    /// team → service → (algorithm, outcome) → counter: found without building a label.
    #[allow(clippy::type_complexity)]
    request_counters: RefCell<
        HashMap<
            String,
            HashMap<String, HashMap<(Algorithm, &'static str), prometheus::IntCounter>>,
        >,
    >,
    /// Emptied action lists, reused by [`Shard::with_request`] instead of a new one per call.
    action_lists: RefCell<Vec<Vec<Action>>>,
    /// What the frame being handled left to wait for; see [`Shard::take_unsettled`].
    unsettled: RefCell<Unsettled>,
}

/// What handling one frame (or mesh message, or tick) left behind to wait for.
///
/// Frames are handled without an await, so that the chain of calls a frame goes through
/// builds no futures (each would be moved, at its full size, into its caller's). Sends that
/// find a connection's outbox at its bound or the mesh channel full are noted here instead,
/// and the task that handled the frame waits for them before it reads the next one: the
/// same backpressure as awaiting each send, one frame later.
#[derive(Default)]
pub(crate) struct Unsettled {
    /// Outboxes at or over their bound.
    congested: Vec<Rc<Outbox>>,
    /// Cross-shard messages that found the channel full, in order.
    mesh: Vec<(usize, ShardMsg)>,
}

/// Action lists the pool keeps: more than the deepest nesting of `with_request`.
const ACTION_LISTS_KEPT: usize = 8;

impl Shard {
    pub(crate) fn new(
        idx: usize,
        n_shards: usize,
        settings: BrokerSettings,
        source: Arc<dyn ConfigSource>,
        rr: Arc<RoundRobin>,
        senders: Option<Senders<ShardMsg>>,
    ) -> Shard {
        let senders = senders.map(Rc::new);
        let revision = source.revision();
        let registry = Registry::new(source.routing());
        Shard {
            idx,
            n_shards,
            settings,
            source,
            rr,
            senders,
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
            inflight: metrics::INFLIGHT.with_label_values(&[&idx.to_string()]),
            queued: metrics::QUEUED.with_label_values(&[&idx.to_string()]),
            durations: [Algorithm::Roundrobin, Algorithm::Mirror, Algorithm::Serial]
                .map(|a| metrics::REQUEST_SECONDS.with_label_values(&[&a.to_string()])),
            request_counters: RefCell::new(HashMap::new()),
            action_lists: RefCell::new(Vec::new()),
            unsettled: RefCell::new(Unsettled::default()),
        }
    }

    fn next_dispatch_id(&self) -> u64 {
        let n = self.next_dispatch.get();
        self.next_dispatch.set(n + 1);
        ((self.idx as u64) << DISPATCH_SHARD_SHIFT) | (n & ((1 << DISPATCH_SHARD_SHIFT) - 1))
    }

    // ---------------------------------------------------------------- connections

    /// Serves one accepted connection until it closes.
    pub(crate) async fn serve(self: Rc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let stream = SharedStream::new(stream);
        let mut reader = FrameReader::new(stream.clone(), self.settings.max_frame);
        let out = Rc::new(Outbox::new(
            self.settings.queue_depth,
            self.settings.max_frame,
        ));
        glommio::spawn_local(write_loop(stream.clone(), out.clone())).detach();

        let principal_role = match self.handshake(&mut reader, &out).await {
            Some(p) => p,
            None => {
                // The writer flushes the refusal, then closes the socket.
                out.close();
                return;
            }
        };
        let conn_id = self.next_conn.get();
        self.next_conn.set(conn_id + 1);
        let (principal, role) = principal_role;
        let team = principal.team.clone();
        let peer = match role {
            Role::Client => Peer::Client {
                principal: principal.clone(),
                requests: HashMap::new(),
            },
            Role::Worker => Peer::Worker {
                inflight: HashSet::new(),
            },
        };
        self.state.borrow_mut().conns.insert(
            conn_id,
            Conn {
                out: out.clone(),
                peer,
            },
        );
        let _ = out
            .send(&Frame::Welcome {
                session: self.session_base | conn_id,
                heartbeat_ms: self.settings.heartbeat.as_millis() as u32,
            })
            .await;
        let at = WorkerAt {
            shard_idx: self.idx,
            conn_id,
        };
        let identity: Arc<str> = principal.identity.as_str().into();
        metrics::CONNECTED
            .with_label_values(&[role_label(role), &self.idx.to_string()])
            .inc();
        if role == Role::Worker {
            info!(shard = self.idx, %identity, %team, "worker online");
            self.report_worker(&team, &identity, WorkerState::Online);
            self.broadcast_worker(
                ShardMsgKind::Online(Vec::new()),
                &team,
                identity.clone(),
                at,
            )
            .await;
        }

        let last_seen = Rc::new(Cell::new(Instant::now()));
        let alive = Rc::new(Cell::new(true));
        glommio::spawn_local(heartbeat_loop(
            stream.clone(),
            out.clone(),
            last_seen.clone(),
            alive.clone(),
            self.settings.heartbeat,
        ))
        .detach();

        loop {
            let frame = match reader.read_frame().await {
                Ok(frame) => frame,
                Err(ReadError::Closed) => break,
                Err(ReadError::Io(e)) => {
                    debug!(conn_id, error = %e, "read failed");
                    break;
                }
                Err(ReadError::Proto(e)) => {
                    self.reject(conn_id, &e);
                    self.settle().await;
                    break;
                }
            };
            last_seen.set(reader.last_read());
            let ok = match (role, frame) {
                (Role::Client, frame) => self.on_client_frame(conn_id, frame),
                (Role::Worker, Frame::Announce { services }) => {
                    Box::pin(self.on_announce(conn_id, &team, &identity, at, services)).await
                }
                (Role::Worker, frame) => self.on_worker_frame(conn_id, frame),
            };
            self.settle().await;
            if !ok {
                break;
            }
        }
        alive.set(false);
        metrics::CONNECTED
            .with_label_values(&[role_label(role), &self.idx.to_string()])
            .dec();
        self.close_conn(conn_id, &team, identity, at).await;
        self.settle().await;
        out.close();
    }

    /// Takes what the handling so far left to wait for. Taken at once, before any await,
    /// so each task waits only for what its own frame caused, in order.
    fn take_unsettled(&self) -> Option<Unsettled> {
        let mut unsettled = self.unsettled.borrow_mut();
        if unsettled.congested.is_empty() && unsettled.mesh.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut *unsettled))
    }

    /// Waits for room in every outbox the last frame filled and sends the cross-shard
    /// messages that found the mesh full. Nothing to wait for (the usual case) costs no
    /// future.
    pub(crate) fn settle(&self) -> impl std::future::Future<Output = ()> + '_ {
        let unsettled = self.take_unsettled();
        async move {
            let Some(unsettled) = unsettled else { return };
            for (peer, msg) in unsettled.mesh {
                if let Some(senders) = &self.senders {
                    let _ = senders.send_to(peer, msg).await;
                }
            }
            for out in unsettled.congested {
                out.room().await;
            }
        }
    }

    /// As [`Shard::settle`], for the task that receives from the mesh: it must never wait
    /// on the mesh itself (two shards waiting on each other's full channel would
    /// deadlock), so its cross-shard sends go out from tasks of their own.
    pub(crate) async fn settle_mesh_receiver(&self) {
        let Some(unsettled) = self.take_unsettled() else {
            return;
        };
        for (peer, msg) in unsettled.mesh {
            self.mesh_send(peer, msg);
        }
        for out in unsettled.congested {
            out.room().await;
        }
    }

    /// Queues `frame` on `out`; an outbox at its bound is noted for [`Shard::settle`]. A
    /// closed connection drops its frames; its close handler cleans up.
    fn push_to(&self, out: &Rc<Outbox>, frame: &Frame) {
        if let Ok(true) = out.push(frame) {
            self.unsettled.borrow_mut().congested.push(out.clone());
        }
    }

    /// Reads and checks the `Hello`. On refusal, queues the answer and returns `None`.
    async fn handshake(&self, reader: &mut FrameReader, out: &Outbox) -> Option<(Principal, Role)> {
        let deadline = self.settings.heartbeat * 3;
        let first = futures_lite::FutureExt::or(async { Some(reader.read_frame().await) }, async {
            glommio::timer::sleep(deadline).await;
            None
        })
        .await;
        let refuse = |kind: ErrorKind, reason: String| Frame::Refused { kind, reason };
        let answer = match first {
            None => refuse(
                ErrorKind::Malformed,
                "no Hello within the handshake deadline".into(),
            ),
            Some(Err(ReadError::Closed)) | Some(Err(ReadError::Io(_))) => return None,
            Some(Err(ReadError::Proto(e))) => {
                let (kind, message) = proto_error_kind(&e);
                Frame::Error {
                    id: None,
                    kind,
                    message,
                }
            }
            Some(Ok(frame)) => match proto::codec::check_hello(frame) {
                Err(e) => refuse(ErrorKind::BadRequest, e.to_string()),
                Ok(hello) => match self.source.authenticate(&hello.credential) {
                    Ok(principal) => {
                        let role = match hello.credential {
                            Credential::Jwt { .. } => Role::Client,
                            Credential::Worker { .. } => Role::Worker,
                        };
                        return Some((principal, role));
                    }
                    Err(refusal) => {
                        warn!(shard = self.idx, kind = ?refusal.kind, reason = %refusal.message, "handshake refused");
                        refuse(refusal.kind, refusal.message)
                    }
                },
            },
        };
        let reason = match &answer {
            Frame::Refused { kind, .. } | Frame::Error { kind, .. } => metrics::kind_label(*kind),
            _ => "handshake",
        };
        metrics::REJECTED.with_label_values(&[reason]).inc();
        let _ = out.send(&answer).await;
        None
    }

    /// Answers a frame that could not be decoded; the caller then closes the connection.
    fn reject(&self, conn_id: u64, e: &ProtoError) {
        let (kind, message) = proto_error_kind(e);
        metrics::REJECTED
            .with_label_values(&[metrics::kind_label(kind)])
            .inc();
        warn!(shard = self.idx, conn_id, %message, "closing connection on bad frame");
        self.send_to_conn(
            conn_id,
            &Frame::Error {
                id: None,
                kind,
                message,
            },
        );
    }

    async fn close_conn(&self, conn_id: u64, team: &str, identity: Arc<str>, at: WorkerAt) {
        let conn = self.state.borrow_mut().conns.remove(&conn_id);
        let Some(conn) = conn else { return };
        match conn.peer {
            Peer::Client { requests, .. } => {
                // The client left: cancel what it waits for; fire-and-forget runs on.
                for (_, key) in requests {
                    let waited = self
                        .state
                        .borrow()
                        .requests
                        .get(&key)
                        .is_some_and(|r| r.wait);
                    if waited {
                        self.with_request(key, |run, out| run.on_cancel(out));
                    }
                }
            }
            Peer::Worker { inflight, .. } => {
                info!(shard = self.idx, %identity, %team, n_inflight = inflight.len(), "worker offline");
                self.report_worker(team, &identity, WorkerState::Disconnected);
                self.broadcast_worker(ShardMsgKind::Offline, team, identity, at)
                    .await;
                for dispatch_id in inflight {
                    self.route_event(dispatch_id, WorkerEvent::Lost);
                }
            }
        }
    }

    fn send_to_conn(&self, conn_id: u64, frame: &Frame) {
        let state = self.state.borrow();
        if let Some(conn) = state.conns.get(&conn_id) {
            self.push_to(&conn.out, frame);
        }
    }

    // ---------------------------------------------------------------- clients

    fn on_client_frame(&self, conn_id: u64, frame: Frame) -> bool {
        match frame {
            Frame::Heartbeat => true,
            Frame::Request(request) => {
                self.on_request(conn_id, request);
                true
            }
            Frame::Cancel { id } => {
                let key = match self.state.borrow().conns.get(&conn_id) {
                    Some(Conn {
                        peer: Peer::Client { requests, .. },
                        ..
                    }) => requests.get(&id).copied(),
                    _ => None,
                };
                if let Some(key) = key {
                    self.with_request(key, |run, out| run.on_cancel(out));
                }
                true
            }
            other => {
                self.reject(
                    conn_id,
                    &ProtoError::Malformed {
                        reason: format!("a client may not send {}", other.kind_name()),
                    },
                );
                false
            }
        }
    }

    fn request_error(&self, conn_id: u64, id: u64, kind: ErrorKind, message: String) {
        metrics::REQUESTS
            .with_label_values(&["", "", metrics::kind_label(kind)])
            .inc();
        self.send_to_conn(
            conn_id,
            &Frame::Error {
                id: Some(id),
                kind,
                message,
            },
        );
    }

    fn on_request(&self, conn_id: u64, request: Request) {
        let id = request.id;
        if let Err(e) = proto::names::check_service_ref(&request.service) {
            return self.request_error(conn_id, id, ErrorKind::BadRequest, e.to_string());
        }
        if let Err(e) = proto::names::check_plugin(&request.plugin) {
            return self.request_error(conn_id, id, ErrorKind::PluginNotFound, e.to_string());
        }
        let principal = match self.state.borrow().conns.get(&conn_id) {
            Some(Conn {
                peer:
                    Peer::Client {
                        requests,
                        principal,
                    },
                ..
            }) if !requests.contains_key(&id) => Some(principal.clone()),
            _ => None,
        };
        let Some(principal) = principal else {
            return self.request_error(
                conn_id,
                id,
                ErrorKind::BadRequest,
                format!("request id {id} is already in use on this connection"),
            );
        };

        // Resolve and pick workers without holding the borrow past this block.
        let resolved = {
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            match state.registry.resolve(&principal, &request.service) {
                Err(e) => Err(e),
                Ok(route) => {
                    let service = route.service;
                    let mut members = route.members;
                    if service.algorithm == Algorithm::Roundrobin && members.len() > 1 {
                        let cached = state
                            .rr_cache
                            .get(&service.team)
                            .and_then(|m| m.get(&service.name))
                            .cloned();
                        let counter = match cached {
                            Some(c) => c,
                            None => {
                                let c = self
                                    .rr
                                    .counter(&format!("{}/{}", service.team, service.name));
                                state
                                    .rr_cache
                                    .entry(service.team.clone())
                                    .or_default()
                                    .insert(service.name.clone(), c.clone());
                                c
                            }
                        };
                        let start = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            as usize
                            % members.len();
                        members.rotate_left(start);
                    }
                    Ok((service, members))
                }
            }
        };
        let (service, targets) = match resolved {
            Ok(r) => r,
            Err((kind, message)) => return self.request_error(conn_id, id, kind, message),
        };

        let timeout = if request.timeout_ms > 0 {
            Duration::from_millis(request.timeout_ms)
        } else {
            service.timeout
        };
        let run = RequestRun::new(Policy::from(&*service), targets);
        let n_workers = run.n_workers();
        let key = self.next_request.get();
        self.next_request.set(key + 1);
        let now = Instant::now();
        let deadline = now + timeout;
        let client = ClientSide {
            conn_id,
            request_id: id,
            wait: request.wait,
        };
        {
            let mut state = self.state.borrow_mut();
            if let Some(Conn {
                peer: Peer::Client { requests, .. },
                ..
            }) = state.conns.get_mut(&conn_id)
            {
                requests.insert(id, key);
            }
            state.deadlines.insert((deadline, key));
            if request.wait {
                state.routed_held.push_back((now, key));
            }
            state.requests.insert(
                key,
                RequestEntry {
                    routed: request.wait.then_some(Frame::Routed {
                        id,
                        algorithm: service.algorithm,
                        n_workers,
                    }),
                    started: now,
                    service: service.clone(),
                    algorithm: service.algorithm,
                    client_conn: conn_id,
                    client_request_id: id,
                    wait: request.wait,
                    deadline,
                    template: DispatchTemplate {
                        service: request.service,
                        plugin: request.plugin,
                        command: request.command,
                        args: request.args,
                        payload: request.payload,
                        timeout_ms: timeout.as_millis() as u64,
                    },
                    run,
                },
            );
        }
        self.inflight.inc();
        debug!(shard = self.idx, service = %service.name, algorithm = %service.algorithm, n_workers, "request routed");
        if !client.wait {
            self.send_to_conn(conn_id, &Frame::Queued { id, n_workers });
        }
        self.with_request(key, |run, out| {
            let mut ids = || self.next_dispatch_id();
            run.start(&mut ids, out)
        });
    }

    /// Runs `f` on request `key`'s state machine and carries out the actions it returns.
    fn with_request(&self, key: u64, f: impl FnOnce(&mut RequestRun, &mut Vec<Action>)) {
        // A list from the pool: with_request runs several times per request (start, every
        // worker event), and carrying out actions may nest another call.
        let mut actions = self.action_lists.borrow_mut().pop().unwrap_or_default();
        let client = {
            let mut state = self.state.borrow_mut();
            let Some(entry) = state.requests.get_mut(&key) else {
                return;
            };
            f(&mut entry.run, &mut actions);
            ClientSide {
                conn_id: entry.client_conn,
                request_id: entry.client_request_id,
                wait: entry.wait,
            }
        };
        self.carry_out(key, client, actions);
    }

    fn carry_out(&self, key: u64, client: ClientSide, mut actions: Vec<Action>) {
        for action in actions.drain(..) {
            match action {
                Action::Dispatch {
                    dispatch_id,
                    worker,
                } => self.dispatch(key, dispatch_id, worker),
                Action::Cancel { dispatch_id, at } => {
                    if at.shard_idx == self.idx {
                        self.cancel_local(at.conn_id, dispatch_id);
                    } else {
                        self.mesh_send(
                            at.shard_idx,
                            ShardMsg::Cancel {
                                conn_id: at.conn_id,
                                dispatch_id,
                            },
                        );
                    }
                }
                Action::Forget { dispatch_id } => {
                    self.state.borrow_mut().dispatch_owner.remove(&dispatch_id);
                }
                Action::Relay { worker, event } => {
                    if client.wait {
                        let routed = self
                            .state
                            .borrow_mut()
                            .requests
                            .get_mut(&key)
                            .and_then(|e| e.routed.take());
                        if let Some(routed) = routed {
                            self.send_to_conn(client.conn_id, &routed);
                        }
                        self.send_to_conn(
                            client.conn_id,
                            &Frame::Reply {
                                id: client.request_id,
                                worker: worker.to_string(),
                                event,
                            },
                        );
                    }
                }
                Action::Finish { summary } => {
                    let mut entry = {
                        let mut state = self.state.borrow_mut();
                        let entry = state.requests.remove(&key);
                        if let Some(e) = &entry {
                            state.deadlines.remove(&(e.deadline, key));
                        }
                        if let Some(Conn {
                            peer: Peer::Client { requests, .. },
                            ..
                        }) = state.conns.get_mut(&client.conn_id)
                        {
                            requests.remove(&client.request_id);
                        }
                        entry
                    };
                    if let Some(e) = &entry {
                        self.count_finished(e, &summary);
                    }
                    if let Some(routed) = entry.as_mut().and_then(|e| e.routed.take()) {
                        self.send_to_conn(client.conn_id, &routed);
                    }
                    if client.wait && entry.is_some() {
                        self.send_to_conn(
                            client.conn_id,
                            &Frame::Summary {
                                id: client.request_id,
                                summary,
                            },
                        );
                    }
                }
            }
        }
        let mut pool = self.action_lists.borrow_mut();
        if pool.len() < ACTION_LISTS_KEPT {
            pool.push(actions);
        }
    }

    fn dispatch(&self, key: u64, dispatch_id: u64, worker: WorkerRef) {
        let dispatch = {
            let mut state = self.state.borrow_mut();
            let Some(entry) = state.requests.get(&key) else {
                return;
            };
            let t = &entry.template;
            let dispatch = proto::Dispatch {
                id: dispatch_id,
                service: t.service.clone(),
                plugin: t.plugin.clone(),
                command: t.command.clone(),
                args: t.args.clone(),
                payload: t.payload.clone(),
                timeout_ms: t.timeout_ms,
            };
            state.dispatch_owner.insert(dispatch_id, key);
            dispatch
        };
        if worker.at.shard_idx == self.idx {
            self.deliver_local(worker.at.conn_id, dispatch);
        } else {
            self.mesh_send(
                worker.at.shard_idx,
                ShardMsg::Dispatch {
                    conn_id: worker.at.conn_id,
                    dispatch,
                },
            );
        }
    }

    // ---------------------------------------------------------------- workers

    /// Hands a dispatch to a worker connected to this shard, or reports it lost.
    fn deliver_local(&self, conn_id: u64, dispatch: proto::Dispatch) {
        let dispatch_id = dispatch.id;
        let out = {
            let mut state = self.state.borrow_mut();
            match state.conns.get_mut(&conn_id) {
                Some(Conn {
                    out,
                    peer: Peer::Worker { inflight, .. },
                }) => {
                    inflight.insert(dispatch_id);
                    Some(out.clone())
                }
                _ => None,
            }
        };
        match out {
            // If the worker closed, its close handler reports the dispatch lost.
            Some(out) => self.push_to(&out, &Frame::Dispatch(dispatch)),
            None => self.route_event(dispatch_id, WorkerEvent::Lost),
        }
    }

    fn cancel_local(&self, conn_id: u64, dispatch_id: u64) {
        let out = {
            let mut state = self.state.borrow_mut();
            match state.conns.get_mut(&conn_id) {
                Some(Conn {
                    out,
                    peer: Peer::Worker { inflight, .. },
                }) => inflight.remove(&dispatch_id).then(|| out.clone()),
                _ => None,
            }
        };
        if let Some(out) = out {
            self.push_to(&out, &Frame::Cancel { id: dispatch_id });
        }
    }

    /// A worker's `Announce`: the services it serves besides its identity.
    async fn on_announce(
        &self,
        conn_id: u64,
        team: &str,
        identity: &Arc<str>,
        at: WorkerAt,
        services: Vec<String>,
    ) -> bool {
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
        info!(shard = self.idx, %identity, ?services, "worker announced services");
        self.broadcast_worker(ShardMsgKind::Online(services), team, identity.clone(), at)
            .await;
        true
    }

    /// Any other frame from a worker (`Announce` is [`Shard::on_announce`]'s).
    fn on_worker_frame(&self, conn_id: u64, frame: Frame) -> bool {
        let (id, event, last) = match frame {
            Frame::Heartbeat => return true,
            Frame::Accepted { id } => (id, WorkerEvent::Accepted, false),
            Frame::Output {
                id,
                seq,
                stream,
                data,
            } => (id, WorkerEvent::Output { seq, stream, data }, false),
            Frame::Done { id, exit_code } => (id, WorkerEvent::Done { exit_code }, true),
            Frame::Failed { id, kind, message } => {
                (id, WorkerEvent::Failed { kind, message }, true)
            }
            other => {
                self.reject(
                    conn_id,
                    &ProtoError::Malformed {
                        reason: format!("a worker may not send {}", other.kind_name()),
                    },
                );
                return false;
            }
        };
        // A worker may only speak of dispatches it was given (and not yet finished or
        // cancelled); anything else is stale and dropped.
        let known = {
            let mut state = self.state.borrow_mut();
            match state.conns.get_mut(&conn_id) {
                Some(Conn {
                    peer: Peer::Worker { inflight, .. },
                    ..
                }) => {
                    if last {
                        inflight.remove(&id)
                    } else {
                        inflight.contains(&id)
                    }
                }
                _ => false,
            }
        };
        if known {
            self.route_event(id, event);
        }
        true
    }

    /// Sends a worker event to the shard that owns its request. A full mesh channel is
    /// waited for by [`Shard::settle`]: the backpressure from a slow request owner to this
    /// worker. Behind a message already waiting for that shard, the event waits too, so
    /// that events keep their order.
    fn route_event(&self, dispatch_id: u64, event: WorkerEvent) {
        let home = (dispatch_id >> DISPATCH_SHARD_SHIFT) as usize;
        if home == self.idx {
            self.on_event(dispatch_id, event);
        } else if home < self.n_shards {
            let Some(senders) = &self.senders else { return };
            let msg = ShardMsg::Event { dispatch_id, event };
            let mut unsettled = self.unsettled.borrow_mut();
            if unsettled.mesh.iter().any(|(peer, _)| *peer == home) {
                unsettled.mesh.push((home, msg));
                return;
            }
            if let Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg))) =
                senders.try_send_to(home, msg)
            {
                unsettled.mesh.push((home, msg));
            }
        }
    }

    fn on_event(&self, dispatch_id: u64, event: WorkerEvent) {
        let key = self
            .state
            .borrow()
            .dispatch_owner
            .get(&dispatch_id)
            .copied();
        if let Some(key) = key {
            self.with_request(key, |run, out| {
                let mut ids = || self.next_dispatch_id();
                run.on_event(dispatch_id, event, &mut ids, out)
            });
        }
    }

    async fn broadcast_worker(
        &self,
        kind: ShardMsgKind,
        team: &str,
        identity: Arc<str>,
        at: WorkerAt,
    ) {
        {
            let mut state = self.state.borrow_mut();
            match &kind {
                ShardMsgKind::Online(announced) => {
                    state
                        .registry
                        .worker_online(team, identity.clone(), at, announced.clone())
                }
                ShardMsgKind::Offline => state.registry.worker_offline(team, &identity, at),
            }
        }
        if let Some(senders) = &self.senders {
            for peer in 0..self.n_shards {
                if peer == self.idx {
                    continue;
                }
                let msg = match &kind {
                    ShardMsgKind::Online(announced) => ShardMsg::WorkerOnline {
                        team: team.to_string(),
                        identity: identity.clone(),
                        at,
                        announced: announced.clone(),
                    },
                    ShardMsgKind::Offline => ShardMsg::WorkerOffline {
                        team: team.to_string(),
                        identity: identity.clone(),
                        at,
                    },
                };
                // Awaited, in order, so every replica sees online before offline.
                let _ = senders.send_to(peer, msg).await;
            }
        }
    }

    /// Sends without waiting when there is room; otherwise from a task of its own, so a
    /// mesh receiver never waits on another shard (two shards waiting on each other's full
    /// channel would deadlock).
    fn mesh_send(&self, peer: usize, msg: ShardMsg) {
        let Some(senders) = &self.senders else { return };
        if let Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg))) =
            senders.try_send_to(peer, msg)
        {
            let senders = senders.clone();
            glommio::spawn_local(async move {
                let _ = senders.send_to(peer, msg).await;
            })
            .detach();
        }
    }

    /// Handles a message from another shard.
    pub(crate) fn on_shard_msg(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::WorkerOnline {
                team,
                identity,
                at,
                announced,
            } => {
                let mut state = self.state.borrow_mut();
                state.registry.worker_online(&team, identity, at, announced);
            }
            ShardMsg::WorkerOffline { team, identity, at } => {
                let mut state = self.state.borrow_mut();
                state.registry.worker_offline(&team, &identity, at);
            }
            ShardMsg::Dispatch { conn_id, dispatch } => self.deliver_local(conn_id, dispatch),
            ShardMsg::Cancel {
                conn_id,
                dispatch_id,
            } => self.cancel_local(conn_id, dispatch_id),
            ShardMsg::Event { dispatch_id, event } => self.on_event(dispatch_id, event),
        }
    }

    /// The shard's periodic work: configuration reloads, due timeouts, sampled gauges.
    pub(crate) async fn tick(&self) {
        let revision = self.source.revision();
        if revision != self.revision.get() {
            self.revision.set(revision);
            let routing = self.source.routing();
            self.state.borrow_mut().registry.set_routing(routing);
            debug!(shard = self.idx, revision, "configuration reloaded");
        }
        let n = self.n_ticks.get() + 1;
        self.n_ticks.set(n);
        if n.is_multiple_of(100) {
            let queued: usize = self
                .state
                .borrow()
                .conns
                .values()
                .map(|c| c.out.len())
                .sum();
            self.queued.set(queued as i64);
        }
        self.release_routed();
        self.expire();
        self.settle().await;
    }

    /// Sends the `Routed` frames held back longer than [`ROUTED_HOLD`].
    fn release_routed(&self) {
        let now = Instant::now();
        loop {
            let due = {
                let mut state = self.state.borrow_mut();
                match state.routed_held.front() {
                    Some(&(at, key)) if now.duration_since(at) >= ROUTED_HOLD => {
                        state.routed_held.pop_front();
                        state.requests.get_mut(&key).and_then(|e| {
                            let conn_id = e.client_conn;
                            e.routed.take().map(|frame| (conn_id, frame))
                        })
                    }
                    _ => break,
                }
            };
            if let Some((conn_id, frame)) = due {
                self.send_to_conn(conn_id, &frame);
            }
        }
    }

    fn report_worker(&self, team: &str, identity: &str, state: WorkerState) {
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.source.report(WorkerStateReport {
            team: team.to_string(),
            identity: identity.to_string(),
            state,
            at_unix_ms,
        });
    }

    fn count_finished(&self, entry: &RequestEntry, summary: &proto::Summary) {
        let outcome = if summary.timed_out > 0 {
            "timeout"
        } else if summary.lost > 0 {
            "lost"
        } else if summary.failed > 0 {
            "failed"
        } else {
            "ok"
        };
        let service = &entry.service;
        let key = (entry.algorithm, outcome);
        let mut counters = self.request_counters.borrow_mut();
        let known = counters
            .get(&service.team)
            .and_then(|m| m.get(&service.name))
            .and_then(|m| m.get(&key));
        match known {
            Some(counter) => counter.inc(),
            None => {
                let counter = metrics::REQUESTS.with_label_values(&[
                    &format!("{}/{}", service.team, service.name),
                    &entry.algorithm.to_string(),
                    outcome,
                ]);
                counter.inc();
                counters
                    .entry(service.team.clone())
                    .or_default()
                    .entry(service.name.clone())
                    .or_default()
                    .insert(key, counter);
            }
        }
        self.durations[algorithm_idx(entry.algorithm)]
            .observe(entry.started.elapsed().as_secs_f64());
        self.inflight.dec();
    }

    /// Fires the timeouts that are due.
    fn expire(&self) {
        let now = Instant::now();
        loop {
            let due = {
                let state = self.state.borrow();
                match state.deadlines.first() {
                    Some(&(deadline, key)) if deadline <= now => Some((deadline, key)),
                    _ => None,
                }
            };
            let Some((deadline, key)) = due else { break };
            self.state.borrow_mut().deadlines.remove(&(deadline, key));
            self.with_request(key, |run, out| run.on_timeout(out));
        }
    }
}

enum ShardMsgKind {
    Online(Vec<String>),
    Offline,
}

/// Sends heartbeats and closes the connection when the peer has been silent for three.
async fn heartbeat_loop(
    stream: SharedStream,
    out: Rc<Outbox>,
    last_seen: Rc<Cell<Instant>>,
    alive: Rc<Cell<bool>>,
    every: Duration,
) {
    loop {
        glommio::timer::sleep(every).await;
        if !alive.get() {
            return;
        }
        if last_seen.get().elapsed() > every * 3 {
            debug!("peer missed three heartbeats; closing");
            stream.shutdown();
            return;
        }
        // A full queue means traffic is flowing; no heartbeat needed then.
        let _ = out.try_send(&Frame::Heartbeat);
    }
}

fn proto_error_kind(e: &ProtoError) -> (ErrorKind, String) {
    let kind = match e {
        ProtoError::Oversized { .. } => ErrorKind::TooLarge,
        ProtoError::UnsupportedVersion { .. } | ProtoError::BadHandshake { .. } => {
            ErrorKind::BadRequest
        }
        ProtoError::Empty | ProtoError::Malformed { .. } => ErrorKind::Malformed,
    };
    (kind, e.to_string())
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Worker => "worker",
    }
}

fn algorithm_idx(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::Roundrobin => 0,
        Algorithm::Mirror => 1,
        Algorithm::Serial => 2,
    }
}
