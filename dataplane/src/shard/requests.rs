//! The requests this shard owns, and a client's `Request` admitted and routed into one.

use super::{State, DISPATCH_SHARD_SHIFT};
use crate::config::{Principal, ServiceConfig};
use crate::idem::Recording;
use crate::metrics;
use crate::registry::{RouteError, WorkerRef};
use crate::request::{Policy, RequestRun};
use foldhash::HashMap;
use proto::{ErrorKind, Frame, ProtoError, Request};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long `Routed` may wait for the first reply before it is sent alone, so that a client
/// whose worker is slow to accept (busy, queued) still learns at once that it was routed.
const ROUTED_HOLD: Duration = Duration::from_millis(5);

/// Who the client of a request is: its connection, its id for the request, whether it
/// waits for the replies, whether it takes a whole answer as one [`Frame::Answer`].
#[derive(Clone, Copy)]
pub(super) struct ClientSide {
    pub(super) conn_id: u64,
    pub(super) request_id: u64,
    pub(super) wait: bool,
    pub(super) answers: bool,
}

/// A keyed request's key as its caller sent it, and how its run ends so far.
pub(super) struct Keyed {
    pub(super) team: String,
    pub(super) identity: String,
    pub(super) key: proto::IdemKey,
    pub(super) recording: Recording,
    /// The trigger it was written to (the fs's requests), when jobs are recorded.
    pub(super) trigger: Option<crate::triggers::TriggerRun>,
}

pub(super) struct RequestEntry {
    /// `Routed`, held back until the first reply (or [`ROUTED_HOLD`]) so that on the fast
    /// path both leave in one write (or, when the reply ends the request and the client
    /// speaks protocol 8, one [`Frame::Answer`]): a separate early write costs the client a
    /// wake-up and the broker a send per request.
    pub(super) routed: Option<Frame>,
    pub(super) started: Instant,
    pub(super) service: Arc<ServiceConfig>,
    pub(super) client: ClientSide,
    /// When the whole request ends: its deadline, or its timeout when every worker starts
    /// at once. `None` for a staged run without a deadline, whose workers each time out
    /// from their own start (`staged_timeout`).
    deadline: Option<Instant>,
    /// A staged run's timeout per worker, counted from its dispatch.
    pub(super) staged_timeout: Option<Duration>,
    /// What every dispatch of it repeats: a `Dispatch` but for its id; its key is scoped
    /// to the caller ([`proto::IdemKey::scoped`]).
    pub(super) template: proto::Dispatch,
    pub(super) run: RequestRun,
    /// Set for a request with an idempotency key: recorded in the window when it finishes.
    pub(super) keyed: Option<Box<Keyed>>,
    /// Its job-history record in the making (`shard/jobs.rs`).
    pub(super) job: Option<Box<crate::jobs::JobTrace>>,
}

/// The dispatch ids of a shard: its index in the top bits, a count below.
#[derive(Default)]
pub(super) struct DispatchIds {
    base: u64,
    last: u64,
}

impl DispatchIds {
    pub(super) fn next(&mut self) -> u64 {
        self.last += 1;
        self.base | (self.last & ((1 << DISPATCH_SHARD_SHIFT) - 1))
    }
}

/// The requests a shard owns, by key, and what finds them: dispatch ids, deadlines, the
/// `Routed` frames held back.
#[derive(Default)]
pub(super) struct Requests {
    by_key: HashMap<u64, RequestEntry>,
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
    last_key: u64,
    ids: DispatchIds,
}

impl Requests {
    pub(super) fn new(idx: usize) -> Requests {
        let base = (idx as u64) << DISPATCH_SHARD_SHIFT;
        let ids = DispatchIds { base, last: 0 };
        Requests {
            ids,
            ..Requests::default()
        }
    }

    /// Adds a request that starts now; its key.
    fn insert(&mut self, entry: RequestEntry) -> u64 {
        self.last_key += 1;
        let key = self.last_key;
        if let Some(deadline) = entry.deadline {
            self.deadlines.insert((deadline, key));
        }
        if entry.client.wait {
            self.routed_held.push_back((entry.started, key));
        }
        self.by_key.insert(key, entry);
        key
    }

    /// Takes request `key` out (it is over).
    pub(super) fn remove(&mut self, key: u64) -> Option<RequestEntry> {
        let entry = self.by_key.remove(&key)?;
        if let Some(deadline) = entry.deadline {
            self.deadlines.remove(&(deadline, key));
        }
        Some(entry)
    }

    pub(super) fn get(&self, key: u64) -> Option<&RequestEntry> {
        self.by_key.get(&key)
    }

    pub(super) fn get_mut(&mut self, key: u64) -> Option<&mut RequestEntry> {
        self.by_key.get_mut(&key)
    }

    /// Requests in flight.
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Runs `f` on request `key`'s state machine, with the shard's dispatch ids.
    pub(super) fn step(
        &mut self,
        key: u64,
        f: impl FnOnce(&mut RequestRun, &mut DispatchIds),
    ) -> Option<&RequestEntry> {
        let entry = self.by_key.get_mut(&key)?;
        f(&mut entry.run, &mut self.ids);
        Some(entry)
    }

    /// Dispatch `dispatch_id` of request `key` went out; a staged run's times out at `due`.
    pub(super) fn dispatched(&mut self, dispatch_id: u64, key: u64, due: Option<Instant>) {
        if let Some(due) = due {
            self.dispatch_deadlines.insert((due, dispatch_id));
            self.dispatch_due.insert(dispatch_id, due);
        }
        self.dispatch_owner.insert(dispatch_id, key);
    }

    /// No more events are wanted for `dispatch_id`.
    pub(super) fn forget_dispatch(&mut self, dispatch_id: u64) {
        self.dispatch_owner.remove(&dispatch_id);
        if !self.dispatch_due.is_empty() {
            if let Some(due) = self.dispatch_due.remove(&dispatch_id) {
                self.dispatch_deadlines.remove(&(due, dispatch_id));
            }
        }
    }

    /// The request that dispatch `dispatch_id` belongs to.
    pub(super) fn owner_of(&self, dispatch_id: u64) -> Option<u64> {
        self.dispatch_owner.get(&dispatch_id).copied()
    }

    /// A request whose deadline is due by `now`, taken off the deadlines.
    pub(super) fn due_request(&mut self, now: Instant) -> Option<u64> {
        take_due(&mut self.deadlines, now)
    }

    /// A staged dispatch whose timeout is due by `now`, taken off the deadlines: its id and
    /// its request.
    pub(super) fn due_dispatch(&mut self, now: Instant) -> Option<(u64, Option<u64>)> {
        let dispatch_id = take_due(&mut self.dispatch_deadlines, now)?;
        self.dispatch_due.remove(&dispatch_id);
        Some((dispatch_id, self.owner_of(dispatch_id)))
    }

    /// A `Routed` frame held back longer than [`ROUTED_HOLD`] by `now`, taken out: its
    /// client connection and the frame.
    pub(super) fn routed_due(&mut self, now: Instant) -> Option<(u64, Frame)> {
        while let Some(&(at, key)) = self.routed_held.front() {
            if now.duration_since(at) < ROUTED_HOLD {
                return None;
            }
            self.routed_held.pop_front();
            let entry = self.by_key.get_mut(&key);
            if let Some((conn, frame)) =
                entry.and_then(|e| Some((e.client.conn_id, e.routed.take()?)))
            {
                return Some((conn, frame));
            }
        }
        None
    }
}

/// The first entry of a deadline set that is due by `now`, taken out of it: its id.
fn take_due(set: &mut BTreeSet<(Instant, u64)>, now: Instant) -> Option<u64> {
    match set.first() {
        Some(&(due, _)) if due <= now => set.pop_first().map(|(_, id)| id),
        _ => None,
    }
}

/// A request admitted and routed: its caller, its service, the workers it runs on.
struct Admitted {
    principal: Principal,
    service: Arc<ServiceConfig>,
    targets: Vec<WorkerRef>,
    offline: Vec<Arc<str>>,
    /// Its key as the worker gets it: scoped to the caller.
    scoped: Option<proto::IdemKey>,
}

impl State {
    pub(super) fn on_client_frame(&mut self, conn_id: u64, frame: Frame) -> bool {
        match frame {
            Frame::Heartbeat => true,
            Frame::Request(request) => {
                let id = request.id;
                match self.admit(conn_id, &request) {
                    Ok(admitted) => self.start_request(conn_id, *request, admitted),
                    Err((kind, message)) => self.request_error(conn_id, id, kind, message),
                }
                true
            }
            Frame::Cancel { id } => {
                let key = self.conns.client_requests(conn_id);
                if let Some(key) = key.and_then(|requests| requests.get(&id).copied()) {
                    self.with_request(key, |run, _, out| run.on_cancel(out));
                }
                true
            }
            other => {
                let reason = format!("a client may not send {}", other.kind_name());
                self.reject(conn_id, &ProtoError::Malformed { reason });
                false
            }
        }
    }

    fn request_error(&mut self, conn_id: u64, id: u64, kind: ErrorKind, message: String) {
        self.stats.request_refused(kind);
        let id = Some(id);
        self.send_to_conn(conn_id, &Frame::Error { id, kind, message });
    }

    /// Checks `request`'s names, admits its caller, resolves its service and picks its
    /// workers; or why it is refused.
    fn admit(&mut self, conn_id: u64, request: &Request) -> Result<Admitted, RouteError> {
        let refuse = |kind: ErrorKind| move |e: proto::names::NameError| (kind, e.to_string());
        proto::names::check_service_ref(&request.service).map_err(refuse(ErrorKind::BadRequest))?;
        proto::names::check_plugin(&request.plugin).map_err(refuse(ErrorKind::PluginNotFound))?;
        let principal = self.admit_caller(conn_id, request.id)?;
        let scoped = request
            .key
            .map(|k| k.scoped(&principal.team, &principal.identity));
        let routed = self
            .routing
            .route(&principal, &request.service, scoped.as_ref())?;
        let (service, targets, offline) = routed;
        let (targets, offline) =
            super::routing::only(&request.fleet.only, &service, targets, offline)?;
        Ok(Admitted {
            principal,
            service,
            targets,
            offline,
            scoped,
        })
    }

    /// The caller of a new request `id` on client connection `conn_id`, or why the request
    /// is refused: a duplicate id, the broker draining, the connection's open requests or
    /// its rate at their limits (the connection stays; refusals are logged once a second).
    fn admit_caller(&mut self, conn_id: u64, id: u64) -> Result<Principal, RouteError> {
        let (settings, draining) = (&self.env.settings, self.draining);
        let conn = self.conns.client(conn_id);
        let Some((principal, requests, limits)) = conn.filter(|(_, r, _)| !r.contains_key(&id))
        else {
            return Err((
                ErrorKind::BadRequest,
                format!("request id {id} is already in use on this connection"),
            ));
        };
        if draining {
            return Err((
                ErrorKind::ShuttingDown,
                "the broker is shutting down and takes no new requests".into(),
            ));
        }
        let max_open = settings.max_open_requests;
        let refused = if requests.len() >= max_open {
            Some((
                ErrorKind::TooManyRequests,
                format!(
                    "this connection has {max_open} requests open, the broker's limit (--max-open-requests); wait for some to end"
                ),
            ))
        } else {
            match (&settings.client_rate, &mut limits.bucket) {
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
            let Principal { team, identity, .. } = principal;
            warn!(shard = self.env.idx, conn_id, %identity, %team, kind = ?kind, refused = n, open = requests.len(), "client over its limit: requests refused");
        }
        Err((kind, message))
    }

    /// Runs an admitted request: a replay of a key whose run ended is answered from the
    /// window, without a dispatch; any other request starts on its workers.
    fn start_request(&mut self, conn_id: u64, mut request: Request, admitted: Admitted) {
        let Admitted {
            principal,
            service,
            targets,
            offline,
            scoped,
        } = admitted;
        let id = request.id;
        if let Some(key) = &request.key {
            let (team, identity) = (&principal.team, &principal.identity);
            if let Some(recorded) = self.env.idem.lookup(team, identity, key) {
                metrics::IDEM_REPLAYS.inc();
                debug!(shard = self.env.idx, service = %service.name, seq = key.seq, "replay answered from the idempotency window");
                for frame in recorded.replay(id, request.wait) {
                    self.send_to_conn(conn_id, &frame);
                }
                return;
            }
        }
        let trigger = match request.key {
            Some(_) => request.trigger.take(),
            None => None,
        };
        let keyed = request.key.map(|key| {
            Box::new(Keyed {
                team: principal.team.clone(),
                identity: principal.identity.clone(),
                key,
                recording: Recording::default(),
                trigger: self.trigger_run(&principal, trigger, &service, &targets),
            })
        });
        let timeout = match request.timeout_ms {
            0 => service.timeout,
            ms => Duration::from_millis(ms),
        };
        let job = self.trace_request(&principal, &request, &service, &targets);
        let (run, staged_timeout, whole) =
            plan(&request.fleet, &service, targets, offline, timeout);
        let n_workers = run.n_workers();
        let now = Instant::now();
        let entry = RequestEntry {
            routed: request.wait.then_some(Frame::Routed {
                id,
                algorithm: service.algorithm,
                n_workers,
            }),
            started: now,
            service: service.clone(),
            client: ClientSide {
                conn_id,
                request_id: id,
                wait: request.wait,
                answers: self.conns.takes_answers(conn_id),
            },
            deadline: whole.map(|whole| now + whole),
            staged_timeout,
            template: proto::Dispatch {
                id: 0,
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
        };
        let key = self.requests.insert(entry);
        if let Some(requests) = self.conns.client_requests(conn_id) {
            requests.insert(id, key);
        }
        self.stats.request_started();
        debug!(shard = self.env.idx, service = %service.name, algorithm = %service.algorithm, n_workers, "request routed");
        if !request.wait {
            self.send_to_conn(conn_id, &Frame::Queued { id, n_workers });
        }
        self.with_request(key, |run, ids, out| run.start(&mut || ids.next(), out));
    }
}

/// A request's run over its workers, with a staged run's timeout per worker and the
/// request's whole time (`None`: a staged run without a deadline).
fn plan(
    fleet: &proto::Fleet,
    service: &ServiceConfig,
    targets: Vec<WorkerRef>,
    offline: Vec<Arc<str>>,
    timeout: Duration,
) -> (RequestRun, Option<Duration>, Option<Duration>) {
    let mut policy = Policy::from(service).with_fleet(fleet, targets.len() + offline.len());
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
    (run, staged_timeout, whole)
}
