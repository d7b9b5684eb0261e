//! The requests this shard owns: routing a client's `Request`, running its state machine
//! and carrying out what it decides, timeouts, and the held-back `Routed`.

use super::{Conn, Peer, Shard, ShardMsg};
use crate::config::{Principal, ServiceConfig};
use crate::idem::Recording;
use crate::metrics;
use crate::registry::WorkerRef;
use crate::request::{Action, Policy, RequestRun, WorkerEvent};
use proto::{Algorithm, ErrorKind, Frame, ProtoError, Request};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long `Routed` may wait for the first reply before it is sent alone, so that a client
/// whose worker is slow to accept (busy, queued) still learns at once that it was routed.
const ROUTED_HOLD: Duration = Duration::from_millis(5);

/// Action lists the pool keeps: more than the deepest nesting of `with_request`.
const ACTION_LISTS_KEPT: usize = 8;

/// A routed request: its service, its online workers in order, its bound-but-offline ones.
type RouteTo = (Arc<ServiceConfig>, Vec<WorkerRef>, Vec<Arc<str>>);

/// The online and the offline workers a request runs on.
type Subset = (Vec<WorkerRef>, Vec<Arc<str>>);

/// The fields of a request every dispatch repeats.
struct DispatchTemplate {
    service: String,
    plugin: String,
    command: Vec<String>,
    args: Vec<proto::Arg>,
    payload: Vec<u8>,
    timeout_ms: u64,
    /// The request's key scoped to its caller ([`proto::IdemKey::scoped`]).
    key: Option<proto::IdemKey>,
}

/// A keyed request's key as its caller sent it, and how its run ends so far.
struct Keyed {
    team: String,
    identity: String,
    key: proto::IdemKey,
    recording: Recording,
}

pub(super) struct RequestEntry {
    /// `Routed`, held back until the first reply (or [`ROUTED_HOLD`]) so that on the fast
    /// path both leave in one write: a separate early write costs the client a wake-up and
    /// the broker a send per request.
    routed: Option<Frame>,
    started: Instant,
    service: Arc<ServiceConfig>,
    client_conn: u64,
    client_request_id: u64,
    pub(super) wait: bool,
    /// When the whole request ends: its deadline, or its timeout when every worker starts
    /// at once. `None` for a staged run without a deadline, whose workers each time out
    /// from their own start (`staged_timeout`).
    deadline: Option<Instant>,
    /// A staged run's timeout per worker, counted from its dispatch.
    staged_timeout: Option<Duration>,
    template: DispatchTemplate,
    pub(super) run: RequestRun,
    /// Set for a request with an idempotency key: recorded in the window when it finishes.
    keyed: Option<Box<Keyed>>,
    /// Its job-history record in the making (`shard/jobs.rs`).
    pub(super) job: Option<Box<crate::jobs::JobTrace>>,
}

/// Who the client of a request is, copied out before actions run.
#[derive(Clone, Copy)]
struct ClientSide {
    conn_id: u64,
    request_id: u64,
    wait: bool,
    /// The request has an idempotency key: its relayed ends are recorded.
    keyed: bool,
}

impl Shard {
    pub(super) fn on_client_frame(&self, conn_id: u64, frame: Frame) -> bool {
        match frame {
            Frame::Heartbeat => true,
            Frame::Request(request) => {
                self.on_request(conn_id, *request);
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
        self.stats.request_refused(kind);
        self.send_to_conn(
            conn_id,
            &Frame::Error {
                id: Some(id),
                kind,
                message,
            },
        );
    }

    /// The caller of a new request `id` on client connection `conn_id`, or why the request
    /// is refused: a duplicate id, the broker draining, the connection's open requests or
    /// its rate at their limits (the connection stays; refusals are logged once a second).
    fn admit_request(&self, conn_id: u64, id: u64) -> Result<Principal, (ErrorKind, String)> {
        let mut state = self.state.borrow_mut();
        let Some(Conn {
            principal,
            peer: Peer::Client { requests, limits },
            ..
        }) = state.conns.get_mut(&conn_id)
        else {
            return Err((
                ErrorKind::BadRequest,
                format!("request id {id} is already in use on this connection"),
            ));
        };
        if requests.contains_key(&id) {
            return Err((
                ErrorKind::BadRequest,
                format!("request id {id} is already in use on this connection"),
            ));
        }
        if self.draining.get() {
            return Err((
                ErrorKind::ShuttingDown,
                "the broker is shutting down and takes no new requests".into(),
            ));
        }
        let max_open = self.settings.max_open_requests;
        let refused = if requests.len() >= max_open {
            Some((
                ErrorKind::TooManyRequests,
                format!(
                    "this connection has {max_open} requests open, the broker's limit (--max-open-requests); wait for some to end"
                ),
            ))
        } else {
            match (&self.settings.client_rate, &mut limits.bucket) {
                (Some(rate), Some(bucket)) => (!bucket.take(rate, Instant::now())).then(|| (
                    ErrorKind::RateLimited,
                    format!(
                        "this connection sent requests faster than the broker allows (--client-rate {}/s, burst {}); slow down",
                        rate.per_sec, rate.burst
                    ),
                )),
                _ => None,
            }
        };
        let Some((kind, message)) = refused else {
            return Ok(principal.clone());
        };
        if let Some(n) = limits.log.refused(Instant::now()) {
            let Principal { team, identity, .. } = &*principal;
            warn!(shard = self.idx, conn_id, %identity, %team, kind = ?kind, refused = n, open = requests.len(), "client over its limit: requests refused");
        }
        Err((kind, message))
    }

    fn on_request(&self, conn_id: u64, request: Request) {
        let id = request.id;
        if let Err(e) = proto::names::check_service_ref(&request.service) {
            return self.request_error(conn_id, id, ErrorKind::BadRequest, e.to_string());
        }
        if let Err(e) = proto::names::check_plugin(&request.plugin) {
            return self.request_error(conn_id, id, ErrorKind::PluginNotFound, e.to_string());
        }
        let principal = match self.admit_request(conn_id, id) {
            Ok(principal) => principal,
            Err((kind, message)) => return self.request_error(conn_id, id, kind, message),
        };
        // The key as the worker gets it: scoped to the caller.
        let scoped = request
            .key
            .map(|k| k.scoped(&principal.team, &principal.identity));
        let (service, targets, offline) = match self
            .route(&principal, &request.service, scoped.as_ref())
            .and_then(|(service, targets, offline)| {
                let (targets, offline) = only(&request.fleet.only, &service, targets, offline)?;
                Ok((service, targets, offline))
            }) {
            Ok(r) => r,
            Err((kind, message)) => return self.request_error(conn_id, id, kind, message),
        };
        // A replay of a key whose run ended is answered from the window, without a dispatch.
        if let Some(key) = &request.key {
            if let Some(recorded) = self.idem.lookup(&principal.team, &principal.identity, key) {
                metrics::IDEM_REPLAYS.inc();
                debug!(shard = self.idx, service = %service.name, seq = key.seq, "replay answered from the idempotency window");
                for frame in recorded.replay(id, request.wait) {
                    self.send_to_conn(conn_id, &frame);
                }
                return;
            }
        }
        let keyed = request.key.map(|key| {
            Box::new(Keyed {
                team: principal.team.clone(),
                identity: principal.identity.clone(),
                key,
                recording: Recording::default(),
            })
        });

        let timeout = if request.timeout_ms > 0 {
            Duration::from_millis(request.timeout_ms)
        } else {
            service.timeout
        };
        let job = self.trace_request(&principal, &request, &service, &targets);
        let fleet = &request.fleet;
        let mut policy = Policy::from(&*service).with_fleet(fleet, targets.len() + offline.len());
        policy.timeout = Some(timeout);
        if fleet.deadline_ms > 0 {
            policy.deadline = Some(Duration::from_millis(fleet.deadline_ms));
        }
        let run = RequestRun::new(policy, targets).with_offline(offline);
        // A staged run (waves of a batch, or one worker after another) gives each worker its
        // timeout from its own start: the request's timeout would cut the later waves short.
        let staged_timeout = run.staged().then_some(timeout);
        let whole = match (fleet.deadline_ms, staged_timeout) {
            (0, Some(_)) => None,
            (0, None) => Some(timeout),
            (ms, _) => Some(Duration::from_millis(ms)),
        };
        let n_workers = run.n_workers();
        let key = self.next_request.get();
        self.next_request.set(key + 1);
        let now = Instant::now();
        let deadline = whole.map(|whole| now + whole);
        {
            let mut state = self.state.borrow_mut();
            if let Some(Conn {
                peer: Peer::Client { requests, .. },
                ..
            }) = state.conns.get_mut(&conn_id)
            {
                requests.insert(id, key);
            }
            if let Some(deadline) = deadline {
                state.deadlines.insert((deadline, key));
            }
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
                    client_conn: conn_id,
                    client_request_id: id,
                    wait: request.wait,
                    deadline,
                    staged_timeout,
                    template: DispatchTemplate {
                        service: request.service,
                        plugin: request.plugin,
                        command: request.command,
                        args: request.args,
                        payload: request.payload,
                        timeout_ms: timeout.as_millis() as u64,
                        key: scoped,
                    },
                    run,
                    keyed,
                    job,
                },
            );
        }
        self.stats.request_started();
        debug!(shard = self.idx, service = %service.name, algorithm = %service.algorithm, n_workers, "request routed");
        if !request.wait {
            self.send_to_conn(conn_id, &Frame::Queued { id, n_workers });
        }
        self.with_request(key, |run, out| {
            let mut ids = || self.next_dispatch_id();
            run.start(&mut ids, out)
        });
    }

    /// Resolves `name` for `principal` and picks its workers: for roundrobin, rotated so
    /// that the first is the one whose turn it is and the rest are fail-over candidates. A
    /// keyed request's turn is its key's instead ([`affinity`]): a replay goes to the worker
    /// that ran it (whose window knows the key) while the same workers are online.
    fn route(
        &self,
        principal: &crate::config::Principal,
        name: &str,
        key: Option<&proto::IdemKey>,
    ) -> Result<RouteTo, crate::registry::RouteError> {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let route = state.registry.resolve(principal, name)?;
        let service = route.service;
        let mut members = route.members;
        if let (Some(key), Algorithm::Roundrobin) = (key, service.algorithm) {
            let start = (affinity(key) % members.len() as u64) as usize;
            members.rotate_left(start);
        } else if service.algorithm == Algorithm::Roundrobin && members.len() > 1 {
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
            let start =
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize % members.len();
            members.rotate_left(start);
        }
        Ok((service, members, route.offline))
    }

    /// Runs `f` on request `key`'s state machine and carries out the actions it returns.
    pub(super) fn with_request(&self, key: u64, f: impl FnOnce(&mut RequestRun, &mut Vec<Action>)) {
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
                keyed: entry.keyed.is_some(),
            }
        };
        self.carry_out(key, client, actions);
    }

    fn carry_out(&self, key: u64, client: ClientSide, mut actions: Vec<Action>) {
        // Consecutive relays of one worker's events leave as one frame (`Replies` when
        // there are several): gathered here, sent before the effect of any other action
        // but `Forget` (which only drops a map entry; the others may send to the client,
        // some through a nested call).
        let mut relays: Option<(Arc<str>, Vec<proto::Event>)> = None;
        for action in actions.drain(..) {
            let gathers = match &action {
                Action::Relay { worker, .. } => relays.as_ref().is_none_or(|(w, _)| w == worker),
                Action::Forget { .. } => true,
                _ => false,
            };
            if !gathers {
                self.send_relays(key, client, relays.take());
            }
            match action {
                Action::Dispatch {
                    dispatch_id,
                    worker,
                } => self.dispatch(key, dispatch_id, worker),
                Action::Cancel { dispatch_id, at } => {
                    if at.shard_idx == self.idx {
                        self.cancel_local(at.conn_id, dispatch_id);
                    } else {
                        self.to_shard(
                            at.shard_idx,
                            ShardMsg::Cancel {
                                conn_id: at.conn_id,
                                dispatch_id,
                            },
                        );
                    }
                }
                Action::Forget { dispatch_id } => {
                    let mut state = self.state.borrow_mut();
                    state.dispatch_owner.remove(&dispatch_id);
                    if !state.dispatch_due.is_empty() {
                        if let Some(due) = state.dispatch_due.remove(&dispatch_id) {
                            state.dispatch_deadlines.remove(&(due, dispatch_id));
                        }
                    }
                }
                Action::Relay { worker, event } => {
                    self.trace_relay(key, &worker, &event);
                    if client.keyed {
                        if let Some(keyed) = self
                            .state
                            .borrow_mut()
                            .requests
                            .get_mut(&key)
                            .and_then(|e| e.keyed.as_mut())
                        {
                            keyed.recording.on_relay(&worker, &event);
                        }
                    }
                    if client.wait {
                        relays
                            .get_or_insert_with(|| (worker, Vec::new()))
                            .1
                            .push(event);
                    }
                }
                Action::Finish { summary } => self.finish(key, client, summary),
            }
        }
        self.send_relays(key, client, relays);
        let mut pool = self.action_lists.borrow_mut();
        if pool.len() < ACTION_LISTS_KEPT {
            pool.push(actions);
        }
    }

    /// Sends one worker's relayed events to the client: after the held `Routed` if it is
    /// still held, as a `Reply` (one event) or a `Replies` frame (several).
    fn send_relays(
        &self,
        key: u64,
        client: ClientSide,
        relays: Option<(Arc<str>, Vec<proto::Event>)>,
    ) {
        let Some((worker, events)) = relays else {
            return;
        };
        let routed = self
            .state
            .borrow_mut()
            .requests
            .get_mut(&key)
            .and_then(|e| e.routed.take());
        if let Some(routed) = routed {
            self.send_to_conn(client.conn_id, &routed);
        }
        // Merged only within `MERGE_BYTES` (a worker's `Events` frame may be as large as
        // the largest frame, and the client's limit must hold for the relay too).
        let bytes: usize = events.iter().map(proto::Event::payload_len).sum();
        if events.len() > 1 && bytes <= proto::MERGE_BYTES {
            let frame = Frame::Replies {
                id: client.request_id,
                worker: worker.to_string(),
                events,
            };
            return self.send_to_conn(client.conn_id, &frame);
        }
        for event in events {
            let frame = Frame::Reply {
                id: client.request_id,
                worker: worker.to_string(),
                event,
            };
            self.send_to_conn(client.conn_id, &frame);
        }
    }

    /// Drops a request that is over and tells its client.
    fn finish(&self, key: u64, client: ClientSide, summary: proto::Summary) {
        let mut entry = {
            let mut state = self.state.borrow_mut();
            let entry = state.requests.remove(&key);
            if let Some(deadline) = entry.as_ref().and_then(|e| e.deadline) {
                state.deadlines.remove(&(deadline, key));
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
        if let Some(e) = &mut entry {
            self.stats.request_finished(&e.service, e.started, &summary);
            self.trace_finish(e.job.take());
            if let Some(keyed) = e.keyed.take() {
                let Keyed {
                    team,
                    identity,
                    key,
                    recording,
                } = *keyed;
                let ended = recording.finish(e.service.algorithm, e.run.n_workers(), summary);
                if let Some(recorded) = ended {
                    self.idem.record(&team, &identity, &key, recorded);
                }
            }
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

    fn dispatch(&self, key: u64, dispatch_id: u64, worker: WorkerRef) {
        let (dispatch, paused) = {
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
                key: t.key,
            };
            let paused = entry.wait
                && state
                    .conns
                    .get(&entry.client_conn)
                    .is_some_and(|c| c.out.is_paused());
            if let Some(timeout) = entry.staged_timeout {
                let due = Instant::now() + timeout;
                state.dispatch_deadlines.insert((due, dispatch_id));
                state.dispatch_due.insert(dispatch_id, due);
            }
            state.dispatch_owner.insert(dispatch_id, key);
            (dispatch, paused)
        };
        if worker.at.shard_idx == self.idx {
            self.deliver_local(worker.at.conn_id, dispatch);
        } else {
            self.to_shard(
                worker.at.shard_idx,
                ShardMsg::Dispatch {
                    conn_id: worker.at.conn_id,
                    dispatch,
                },
            );
        }
        // Its client is behind: the new run starts paused (the same path as the dispatch,
        // so the pause never overtakes it).
        if paused {
            self.flow_dispatch(dispatch_id, worker.at, true);
        }
    }

    /// A worker's event for a request owned here.
    pub(super) fn on_event(&self, dispatch_id: u64, event: WorkerEvent) {
        self.on_events(dispatch_id, [event]);
    }

    /// [`Shard::on_event`] for several events of one dispatch, in order: the request runs
    /// them in one go, so that what it relays of them leaves as one `Replies` frame.
    pub(super) fn on_events(
        &self,
        dispatch_id: u64,
        events: impl IntoIterator<Item = WorkerEvent>,
    ) {
        let key = self
            .state
            .borrow()
            .dispatch_owner
            .get(&dispatch_id)
            .copied();
        if let Some(key) = key {
            self.with_request(key, |run, out| {
                let mut ids = || self.next_dispatch_id();
                for event in events {
                    run.on_event(dispatch_id, event, &mut ids, out);
                }
            });
        }
    }

    /// Sends the `Routed` frames held back longer than [`ROUTED_HOLD`].
    pub(super) fn release_routed(&self) {
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

    /// Fires the timeouts that are due.
    pub(super) fn expire(&self) {
        let now = Instant::now();
        loop {
            let Some(key) = take_due(&mut self.state.borrow_mut().deadlines, now) else {
                break;
            };
            self.with_request(key, |run, out| run.on_timeout(out));
        }
        // Workers of staged runs past their own timeout.
        loop {
            let (dispatch_id, owner) = {
                let mut state = self.state.borrow_mut();
                let Some(dispatch_id) = take_due(&mut state.dispatch_deadlines, now) else {
                    break;
                };
                state.dispatch_due.remove(&dispatch_id);
                (dispatch_id, state.dispatch_owner.get(&dispatch_id).copied())
            };
            if let Some(key) = owner {
                self.with_request(key, |run, out| {
                    let mut ids = || self.next_dispatch_id();
                    run.on_dispatch_timeout(dispatch_id, &mut ids, out)
                });
            }
        }
    }
}

/// The first entry of a deadline set that is due by `now`, taken out of it: its id.
fn take_due(set: &mut BTreeSet<(Instant, u64)>, now: Instant) -> Option<u64> {
    match set.first() {
        Some(&(due, _)) if due <= now => set.pop_first().map(|(_, id)| id),
        _ => None,
    }
}

/// The request's `Fleet::only`: keeps the online and offline workers it names, and refuses
/// a name that is neither (`BadRequest`) or a subset with none online and none to report
/// offline (`NoWorkersOnline`; a mirror or serial subset of offline workers reports them).
fn only(
    names: &[String],
    service: &ServiceConfig,
    targets: Vec<WorkerRef>,
    offline: Vec<Arc<str>>,
) -> Result<Subset, crate::registry::RouteError> {
    if names.is_empty() {
        return Ok((targets, offline));
    }
    if let Some(unknown) = names.iter().find(|n| {
        !targets.iter().any(|t| *t.identity == ***n)
            && !offline.iter().any(|o| **o == ***n)
            && !service.workers.iter().any(|w| w == *n)
    }) {
        return Err((
            ErrorKind::BadRequest,
            format!("{unknown} is not a worker of service {}", service.name),
        ));
    }
    let wanted = |id: &str| names.iter().any(|n| n == id);
    let targets: Vec<WorkerRef> = targets
        .into_iter()
        .filter(|t| wanted(&t.identity))
        .collect();
    let offline: Vec<Arc<str>> = offline.into_iter().filter(|o| wanted(o)).collect();
    if targets.is_empty() && offline.is_empty() {
        return Err((
            ErrorKind::NoWorkersOnline,
            format!("none of {} is online", names.join(", ")),
        ));
    }
    Ok((targets, offline))
}

/// A keyed request's place among its service's workers: the same for every replay of the
/// key, and consecutive records of one spool spread over the workers.
fn affinity(key: &proto::IdemKey) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&key.source[..8]);
    u64::from_le_bytes(head).wrapping_add(key.seq)
}
