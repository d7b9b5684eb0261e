//! The client: many requests, one event stream per request, over one connection at a time
//! to one broker node of a list.
//!
//! [`Client::connect`] takes the broker addresses given ([`BrokerList`]), shuffles them and
//! connects to the first that answers (a [`Session`]: the handshake, a reader and a writer
//! task, heartbeats). It keeps the cell's nodes the broker announces (`Welcome::nodes`,
//! `Frame::Nodes`, bounded: [`KnownNodes`]).
//!
//! When the connection is lost, every request in flight on it ends with
//! `Error { kind: BrokerLost }` (none waits for an answer that cannot come), and the next
//! request connects again: to the other known nodes first, in a random order, then to the
//! lost one; a round that reaches none makes the next one wait (100 ms, doubling to 5 s).
//! How the broker closed the connection decides:
//! - lost (socket closed or broken, three heartbeats of silence, a bad frame): `BrokerLost`,
//!   and another node next;
//! - `ShuttingDown` (a draining node), `Stale` (a node cut off from its control plane),
//!   `SlowConsumer`: the requests end with that error (as they always did), and another
//!   node next;
//! - `Revoked` (the credential was revoked or expired): the requests end with `Revoked`, and
//!   no node is tried with that credential again: the next request fails with
//!   [`ClientError::Refused`] until [`Client::set_credential`] gives a new one (every node
//!   would refuse the old one, and trying them all would only look like an attack).
//!
//! This module does not print anything; rendering is the `client` command's job.

use crate::nodes::{BrokerList, KnownNodes};
use crate::outcome::Outcome;
use crate::session::Session;
use crate::ClientError;
use proto::{Algorithm, Arg, Credential, ErrorKind, Frame, Stream, Summary};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The wait before a round of connecting after a round that reached no node: from the first
/// to the last, doubling. A cell's node restarts in seconds; 5 s keeps a client that lost
/// them all from spinning, and from waiting long once one is back.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));

/// Requests a client sends: to one broker node at a time, failing over to another when it
/// is lost. Cheap to clone, every clone shares the connection.
///
/// The connection closes when the last `Client` and the last [`RequestHandle`] are dropped.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    next_id: AtomicU64,
    nodes: Arc<Mutex<KnownNodes>>,
    state: Mutex<State>,
    /// Held while connecting again: one round at a time; the requests behind it use its
    /// result.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct State {
    /// The current connection (open, or lost and not replaced yet).
    session: Arc<Session>,
    credential: Credential,
    /// Counts the credentials given ([`Client::set_credential`]).
    credential_generation: u64,
    /// The next round's wait.
    delay: Duration,
    /// No round before this (after a round that reached no node).
    not_before: Option<tokio::time::Instant>,
}

/// One request, as the caller describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    /// `service`, a worker identity, or `team/service`.
    pub service: String,
    /// Plugin name under the worker's plugins path.
    pub plugin: String,
    /// The command words handed to the plugin.
    pub command: Vec<String>,
    /// Plugin arguments, `key=value`.
    pub args: Vec<(String, String)>,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// How long the request may run; `None` (or zero) means the service's timeout.
    pub timeout: Option<Duration>,
    /// `false`: fire-and-forget, the broker only answers `Queued`.
    pub wait: bool,
    /// Idempotency key (the fs module's spool): a request sent again with the same key runs
    /// at most once; a replay of one whose run ended ends with a `Summary` whose `replayed`
    /// is set. `None` for ordinary requests.
    pub key: Option<proto::IdemKey>,
    /// Per-request fan-out options (mirror, serial): batch, max failures, quorum, deadline,
    /// and `only`, the subset of the service's workers to run on.
    pub fleet: proto::Fleet,
    /// A name for this run that its job record keeps (`None` for ordinary requests).
    pub tag: Option<String>,
    /// The trigger file whose write this is (the fs module's): with `key`, the job history
    /// counts the trigger's requests and records its failures (`proto::Request::trigger`).
    pub trigger: Option<String>,
}

impl Default for RequestSpec {
    /// An empty request that waits for its replies (the usual case).
    fn default() -> Self {
        RequestSpec {
            service: String::new(),
            plugin: String::new(),
            command: Vec::new(),
            args: Vec::new(),
            payload: Vec::new(),
            timeout: None,
            wait: true,
            key: None,
            fleet: proto::Fleet::default(),
            tag: None,
            trigger: None,
        }
    }
}

impl RequestSpec {
    /// The timeout as the wire carries it: milliseconds, 0 for the service's own, and at
    /// least 1 for any non-zero duration so that a tiny timeout does not become "default".
    pub fn timeout_ms(&self) -> u64 {
        match self.timeout {
            None => 0,
            Some(d) if d.is_zero() => 0,
            Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }

    fn into_request(self, id: u64) -> proto::Request {
        let timeout_ms = self.timeout_ms();
        proto::Request {
            id,
            service: self.service,
            plugin: self.plugin,
            command: self.command,
            args: self
                .args
                .into_iter()
                .map(|(key, value)| Arg { key, value })
                .collect(),
            payload: self.payload,
            timeout_ms,
            wait: self.wait,
            key: self.key,
            fleet: self.fleet,
            tag: self.tag,
            trigger: self.trigger,
        }
    }
}

/// What happened to a request, in the order the broker said it.
///
/// `Queued`, `Summary` and `Error` are final: nothing follows them. A request whose
/// connection was lost ends with `Error { kind: BrokerLost }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The broker resolved the service.
    Routed {
        /// The service's algorithm.
        algorithm: Algorithm,
        /// How many workers the request will run on.
        n_workers: u32,
    },
    /// A fire-and-forget request was handed to its workers (final).
    Queued {
        /// How many workers it went to.
        n_workers: u32,
    },
    /// A worker started the plugin.
    Accepted {
        /// The worker's identity.
        worker: String,
    },
    /// One line of plugin output.
    Output {
        /// The worker's identity.
        worker: String,
        /// Sequence number per worker run, from 0.
        seq: u64,
        /// stdout or stderr.
        stream: Stream,
        /// The bytes, without the trailing newline.
        data: Vec<u8>,
    },
    /// A worker's plugin exited.
    Done {
        /// The worker's identity.
        worker: String,
        /// Exit status.
        exit_code: i32,
    },
    /// A worker's run failed without an exit code.
    Failed {
        /// The worker's identity.
        worker: String,
        /// What went wrong (WorkerLost, Timeout, PluginNotFound, Cancelled, PluginFailed).
        kind: ErrorKind,
        /// Detail.
        message: String,
    },
    /// The request is over (final).
    Summary(Summary),
    /// The request failed as a whole (final): NoSuchService, NoWorkersOnline, Forbidden, …;
    /// `BrokerLost` when the connection carrying it was lost (whether it ran is unknown);
    /// SlowConsumer, Revoked, ShuttingDown or Stale when the broker closed the connection
    /// for that reason.
    Error {
        /// What went wrong.
        kind: ErrorKind,
        /// Detail.
        message: String,
    },
}

impl ClientEvent {
    /// Whether this event ends the request.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ClientEvent::Queued { .. } | ClientEvent::Summary(_) | ClientEvent::Error { .. }
        )
    }
}

/// A request in flight: its events, in order, and a way to cancel it.
///
/// Dropping the handle before the final event cancels the request at the broker.
#[derive(Debug)]
pub struct RequestHandle {
    id: u64,
    events: flume::Receiver<ClientEvent>,
    session: Arc<Session>,
    finished: bool,
    service: String,
    plugin: String,
    started: Instant,
}

impl Client {
    /// Connects to one of `brokers` (tried in a random order, so that clients spread over a
    /// cell's nodes) and does the handshake.
    ///
    /// A node that is down, draining (`ShuttingDown`), stale or full (`TooManyConnections`)
    /// is passed over for the next; one that has not welcomed the client within half a
    /// second gets the next tried beside it, and the first to welcome wins. A refusal of the
    /// credential ([`ClientError::Refused`]: `Unauthorized`, `Forbidden`, …) is returned at
    /// once. When no node answers: one address's error as it is, or
    /// [`ClientError::Unreachable`].
    pub async fn connect(
        brokers: &BrokerList,
        credential: Credential,
    ) -> Result<Client, ClientError> {
        let nodes = Arc::new(Mutex::new(KnownNodes::new(brokers)));
        let order = lock(&nodes).order_after(None);
        let session = connect_round(&order, &credential, 0, &nodes).await?;
        tracing::debug!(addr = %session.addr, session = session.session, "connected to the broker");
        Ok(Client {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(1),
                nodes,
                state: Mutex::new(State {
                    session,
                    credential,
                    credential_generation: 0,
                    delay: RECONNECT_BACKOFF.0,
                    not_before: None,
                }),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn current(&self) -> Arc<Session> {
        lock(&self.inner.state).session.clone()
    }

    /// The session number the broker gave the current connection.
    pub fn session(&self) -> u64 {
        self.current().session
    }

    /// The heartbeat interval the current connection's broker asked for (zero: none).
    pub fn heartbeat(&self) -> Duration {
        self.current().heartbeat
    }

    /// The address of the node the current connection is to.
    pub fn addr(&self) -> String {
        self.current().addr.clone()
    }

    /// Every broker address this client knows: the cell's nodes its broker announced last,
    /// then the addresses it was given.
    pub fn nodes(&self) -> Vec<String> {
        lock(&self.inner.nodes).all()
    }

    /// Whether the current connection is known to be gone (the next request connects again).
    pub fn is_closed(&self) -> bool {
        self.current().is_closed()
    }

    /// The credential to present from the next connection on (a fresh JWT: the broker closes
    /// a connection whose token expired, with `Revoked`).
    pub fn set_credential(&self, credential: Credential) {
        let mut state = lock(&self.inner.state);
        state.credential = credential;
        state.credential_generation += 1;
    }

    /// Connects again if the current connection is gone: to the other known nodes first,
    /// then to the lost one (see the module's documentation). Nothing when it is open.
    pub async fn reconnect(&self) -> Result<(), ClientError> {
        self.live_session().await.map(|_| ())
    }

    /// The current connection if it is open, else a new one.
    async fn live_session(&self) -> Result<Arc<Session>, ClientError> {
        let session = self.current();
        if !session.is_closed() {
            return Ok(session);
        }
        let _round = self.inner.connecting.lock().await;
        let (lost, credential, generation, not_before) = {
            let state = lock(&self.inner.state);
            let session = &state.session;
            if !session.is_closed() {
                // Another request connected while this one waited.
                return Ok(session.clone());
            }
            let end = session.end();
            if let Some(end) = end.filter(|e| e.kind == Some(ErrorKind::Revoked)) {
                if session.credential_generation == state.credential_generation {
                    return Err(ClientError::Refused {
                        kind: ErrorKind::Revoked,
                        reason: end.reason,
                    });
                }
            }
            (
                session.addr.clone(),
                state.credential.clone(),
                state.credential_generation,
                state.not_before,
            )
        };
        if let Some(at) = not_before {
            tokio::time::sleep_until(at).await;
        }
        let order = lock(&self.inner.nodes).order_after(Some(&lost));
        let result = connect_round(&order, &credential, generation, &self.inner.nodes).await;
        let mut state = lock(&self.inner.state);
        match result {
            Ok(session) => {
                tracing::info!(lost = %lost, addr = %session.addr, "connected to another broker node");
                state.session = session.clone();
                state.delay = RECONNECT_BACKOFF.0;
                state.not_before = None;
                Ok(session)
            }
            Err(e) => {
                state.not_before = Some(tokio::time::Instant::now() + state.delay);
                state.delay = (state.delay * 2).min(RECONNECT_BACKOFF.1);
                Err(e)
            }
        }
    }

    /// Sends a request; its events arrive on the returned handle. After a lost connection it
    /// connects again first ([`Client::reconnect`]).
    pub async fn request(&self, spec: RequestSpec) -> Result<RequestHandle, ClientError> {
        self.send_request(spec, true).await
    }

    /// Sends a request on the current connection only: [`ClientError::Disconnected`] when it
    /// is gone. For a caller that keeps its requests in order across a lost node (the fs's
    /// sender): it connects again itself, once every request of the lost connection ended,
    /// so that none sent later overtakes one that must be sent again.
    pub async fn request_on_current(
        &self,
        spec: RequestSpec,
    ) -> Result<RequestHandle, ClientError> {
        self.send_request(spec, false).await
    }

    async fn send_request(
        &self,
        spec: RequestSpec,
        reconnect: bool,
    ) -> Result<RequestHandle, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let service = spec.service.clone();
        let plugin = spec.plugin.clone();
        let started = Instant::now();
        let mut frame = Frame::Request(Box::new(spec.into_request(id)));
        // Twice at most: a connection found lost while the request was handed to it is
        // replaced once.
        for _ in 0..2 {
            let session = match reconnect {
                true => self.live_session().await?,
                false => self.current(),
            };
            match session.submit(id, frame).await {
                Ok(events) => {
                    return Ok(RequestHandle {
                        id,
                        events,
                        session,
                        finished: false,
                        service,
                        plugin,
                        started,
                    })
                }
                Err(_) if !reconnect => return Err(ClientError::Disconnected),
                Err(back) => frame = back,
            }
        }
        Err(ClientError::Disconnected)
    }
}

/// Whether connecting to the next node may help after `error` from one: yes when the node
/// is unreachable, slow, draining, stale or full; no when it refused the credential (every
/// node of a cell would).
fn try_another_node(error: &ClientError) -> bool {
    match error {
        ClientError::Refused { kind, .. } => matches!(
            kind,
            ErrorKind::ShuttingDown | ErrorKind::Stale | ErrorKind::TooManyConnections
        ),
        ClientError::Connect { .. }
        | ClientError::ConnectTimeout { .. }
        | ClientError::Handshake { .. } => true,
        _ => false,
    }
}

/// How long an attempt on one node runs alone before the next node is tried beside it (as the
/// connection attempt delay of RFC 8305, "Happy Eyeballs", but longer: a broker busy with a
/// crowd of reconnecting workers may take a while to welcome): a node that drops packets, or
/// accepts and never answers, costs a round this long, not the whole handshake timeout.
const NEXT_ATTEMPT_DELAY: Duration = Duration::from_millis(500);

/// One round: the addresses of `order` in turn, each started when the one before failed or
/// after [`NEXT_ATTEMPT_DELAY`], whichever comes first; the first to connect is kept and the
/// others are dropped (their connections close). A refusal of the credential ends the round.
async fn connect_round(
    order: &[String],
    credential: &Credential,
    generation: u64,
    nodes: &Arc<Mutex<KnownNodes>>,
) -> Result<Arc<Session>, ClientError> {
    let mut attempts = tokio::task::JoinSet::new();
    let mut next = order.iter();
    let start = |attempts: &mut tokio::task::JoinSet<_>, addr: &String| {
        let (addr, credential, nodes) = (addr.clone(), credential.clone(), nodes.clone());
        attempts.spawn(async move {
            let opened = Session::open(&addr, credential, generation, &nodes).await;
            (addr, opened)
        });
    };
    let mut last = None;
    loop {
        if attempts.is_empty() {
            match next.next() {
                Some(addr) => start(&mut attempts, addr),
                None => break,
            }
        }
        let more = next.len() > 0;
        tokio::select! {
            Some(joined) = attempts.join_next() => match joined {
                Ok((_, Ok(session))) => return Ok(session),
                Ok((addr, Err(error))) if try_another_node(&error) => {
                    tracing::debug!(%addr, %error, "this broker node did not answer; trying the next");
                    last = Some(error);
                    if let Some(addr) = next.next() {
                        start(&mut attempts, addr);
                    }
                }
                Ok((_, Err(error))) => return Err(error),
                // An attempt panicked or was cancelled: as a node that did not answer.
                Err(_) => {}
            },
            () = tokio::time::sleep(NEXT_ATTEMPT_DELAY), if more => {
                if let Some(addr) = next.next() {
                    tracing::debug!(%addr, "no broker node answered yet; trying the next beside it");
                    start(&mut attempts, addr);
                }
            }
            else => break,
        }
    }
    match last {
        Some(error) if order.len() == 1 => Err(error),
        Some(error) => Err(ClientError::Unreachable {
            addrs: order.join(","),
            last: Box::new(error),
        }),
        None => Err(ClientError::Disconnected),
    }
}

impl RequestHandle {
    /// The request id on this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address of the broker node the request went to.
    pub fn broker(&self) -> &str {
        &self.session.addr
    }

    /// The next event; `None` once the final event has been returned.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        if self.finished {
            return None;
        }
        let event = match self.events.recv_async().await {
            Ok(event) => event,
            // The reader dropped our sender without a final event: the connection is gone.
            Err(flume::RecvError::Disconnected) => self.session.lost(),
        };
        if event.is_final() {
            self.finished = true;
        }
        Some(event)
    }

    /// Asks the broker to cancel the request; its events still run to the final one.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        if self.finished {
            return Ok(());
        }
        self.session.send(Frame::Cancel { id: self.id }).await
    }

    /// Reads every remaining event and sums them up.
    pub async fn collect(mut self) -> Outcome {
        let mut outcome = Outcome::new(&self.service, &self.plugin);
        while let Some(event) = self.next().await {
            outcome.record(&event);
        }
        outcome.finish(self.started.elapsed());
        outcome
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.session.abandon(self.id);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held for plain field and map operations that cannot panic half-way; a poisoned lock
    // still holds consistent data.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
