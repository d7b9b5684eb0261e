//! The multiplexed client: one connection, many requests, one event stream per request.
//!
//! [`Client::connect`] does the handshake and then starts two tasks:
//! - the **reader** reads every frame from the broker and hands it, by request id, to that
//!   request's bounded channel; it also notices a broker that went silent;
//! - the **writer** owns the socket's write half: it sends queued frames (requests, cancels)
//!   in batches and a `Heartbeat` every `heartbeat_ms`.
//!
//! When either task ends (socket closed, silence, all handles dropped), the connection is
//! closed and every request still pending sees [`ClientEvent::Disconnected`] as its final
//! event. This module does not print anything; rendering is [`crate::render`]'s job.

use crate::connection::{self, ConnectionError, FrameReader, FrameWriter};
use crate::outcome::Outcome;
use crate::ClientError;
use proto::{Algorithm, Arg, Credential, ErrorKind, Event, Frame, Hello, Role, Stream, Summary};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, Sleep};

/// Events buffered per request before the reader waits for the consumer. Bounded so that a
/// slow consumer pushes back on the socket (and so on the broker) instead of growing memory;
/// 256 output lines is enough to absorb bursts without stalling other requests for long.
const EVENTS_PER_REQUEST: usize = 256;

/// Frames queued for the writer task. Requests and cancels are small; a full queue means the
/// broker is not reading, and waiting is the right answer.
const OUTBOUND_FRAMES: usize = 1024;

/// How long to wait for TCP connect + `Hello`/`Welcome`. A broker that does not answer within
/// 10 s is as good as unreachable for an interactive command.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Missed heartbeats after which the broker counts as gone (DESIGN.md §4: three).
const MISSED_HEARTBEATS: u32 = 3;

/// A connection to the broker; cheap to clone, every clone shares the connection.
///
/// The connection closes when the last `Client` and the last [`RequestHandle`] are dropped.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    next_id: AtomicU64,
    outbound: mpsc::Sender<Frame>,
    pending: Arc<Mutex<Pending>>,
    session: u64,
    heartbeat: Duration,
}

/// Requests waiting for their final event, by id.
#[derive(Debug, Default)]
struct Pending {
    senders: HashMap<u64, flume::Sender<ClientEvent>>,
    /// Set once the connection is gone; no request may register after that.
    closed: bool,
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
/// `Queued`, `Summary`, `Error` and `Disconnected` are final: nothing follows them.
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
    /// The request failed as a whole (final).
    Error {
        /// What went wrong (NoSuchService, NoWorkersOnline, Forbidden, …).
        kind: ErrorKind,
        /// Detail.
        message: String,
    },
    /// The connection to the broker is gone; the request's fate is unknown (final).
    Disconnected,
}

impl ClientEvent {
    /// Whether this event ends the request.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ClientEvent::Queued { .. }
                | ClientEvent::Summary(_)
                | ClientEvent::Error { .. }
                | ClientEvent::Disconnected
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
    client: Client,
    finished: bool,
    service: String,
    plugin: String,
    started: Instant,
}

impl Client {
    /// Connects to `addr` (`host:port` or `tcp://host:port`) and does the handshake.
    ///
    /// A `Refused` answer becomes [`ClientError::Refused`].
    pub async fn connect(addr: &str, credential: Credential) -> Result<Client, ClientError> {
        let failed = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let handshake = async {
            let (mut reader, mut writer) = connection::connect(addr).await.map_err(failed)?;
            let hello = Frame::Hello(Hello {
                protocol_version: proto::PROTOCOL_VERSION,
                role: Role::Client,
                credential,
            });
            writer.write_frame(&hello).await.map_err(failed)?;
            match reader.read_frame().await {
                Ok(Frame::Welcome {
                    session,
                    heartbeat_ms,
                    ..
                }) => Ok((reader, writer, session, heartbeat_ms)),
                Ok(Frame::Refused { kind, reason }) => Err(ClientError::Refused { kind, reason }),
                Ok(Frame::Error { kind, message, .. }) => Err(ClientError::Handshake {
                    reason: format!("{kind}: {message}"),
                }),
                Ok(other) => Err(ClientError::Handshake {
                    reason: format!("expected Welcome, got {}", other.kind_name()),
                }),
                Err(ConnectionError::Closed) => Err(ClientError::Handshake {
                    reason: "the broker closed the connection before Welcome".to_string(),
                }),
                Err(source) => Err(failed(source)),
            }
        };
        let (reader, writer, session, heartbeat_ms) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| ClientError::ConnectTimeout {
                    addr: addr.to_string(),
                })??;
        tracing::debug!(session, heartbeat_ms, "connected to the broker");

        let heartbeat = Duration::from_millis(u64::from(heartbeat_ms));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_FRAMES);
        // `closed` flips to true once, when either task ends; the other one then stops too.
        let closed = Arc::new(watch::Sender::new(false));
        tokio::spawn(write_loop(
            writer,
            outbound_rx,
            heartbeat,
            Arc::clone(&closed),
        ));
        tokio::spawn(read_loop(reader, Arc::clone(&pending), heartbeat, closed));
        Ok(Client {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(1),
                outbound,
                pending,
                session,
                heartbeat,
            }),
        })
    }

    /// The session number the broker gave this connection.
    pub fn session(&self) -> u64 {
        self.inner.session
    }

    /// The heartbeat interval the broker asked for (zero: none).
    pub fn heartbeat(&self) -> Duration {
        self.inner.heartbeat
    }

    /// Whether the connection is known to be gone.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.pending).closed || self.inner.outbound.is_closed()
    }

    /// Sends a request; its events arrive on the returned handle.
    pub async fn request(&self, spec: RequestSpec) -> Result<RequestHandle, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = flume::bounded(EVENTS_PER_REQUEST);
        {
            let mut pending = lock(&self.inner.pending);
            if pending.closed {
                return Err(ClientError::Disconnected);
            }
            pending.senders.insert(id, tx);
        }
        let service = spec.service.clone();
        let plugin = spec.plugin.clone();
        let started = Instant::now();
        // Room in the writer's queue is the usual case: no future, no semaphore wait.
        let sent = match self
            .inner
            .outbound
            .try_send(Frame::Request(Box::new(spec.into_request(id))))
        {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(frame)) => {
                self.inner.outbound.send(frame).await.is_ok()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        if !sent {
            lock(&self.inner.pending).senders.remove(&id);
            return Err(ClientError::Disconnected);
        }
        Ok(RequestHandle {
            id,
            events: rx,
            client: self.clone(),
            finished: false,
            service,
            plugin,
            started,
        })
    }

    async fn send(&self, frame: Frame) -> Result<(), ClientError> {
        self.inner
            .outbound
            .send(frame)
            .await
            .map_err(|_| ClientError::Disconnected)
    }
}

impl RequestHandle {
    /// The request id on this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event; `None` once the final event has been returned.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        if self.finished {
            return None;
        }
        let event = match self.events.recv_async().await {
            Ok(event) => event,
            // The reader dropped our sender without a final event: the connection is gone.
            Err(flume::RecvError::Disconnected) => ClientEvent::Disconnected,
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
        self.client.send(Frame::Cancel { id: self.id }).await
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
        if self.finished {
            return;
        }
        lock(&self.client.inner.pending).senders.remove(&self.id);
        // Best effort: if the queue is full or closed, the broker ends the request by its
        // timeout or when the connection closes.
        let _ = self
            .client
            .inner
            .outbound
            .try_send(Frame::Cancel { id: self.id });
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // The lock is held only for map operations that cannot panic half-way; a poisoned lock
    // still holds a consistent map.
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

async fn write_loop(
    mut writer: FrameWriter,
    mut outbound: mpsc::Receiver<Frame>,
    heartbeat: Duration,
    closed: Arc<watch::Sender<bool>>,
) {
    let mut closed_rx = closed.subscribe();
    let send_heartbeats = !heartbeat.is_zero();
    let mut ticker = tokio::time::interval(heartbeat.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the Hello just proved we are alive.
    let result: Result<(), ConnectionError> = async {
        loop {
            tokio::select! {
                _ = until_closed(&mut closed_rx) => return Ok(()),
                frame = outbound.recv() => {
                    let Some(frame) = frame else { return Ok(()) };
                    writer.write_queued(&frame, &mut outbound).await?;
                }
                _ = ticker.tick(), if send_heartbeats => {
                    writer.write_frame(&Frame::Heartbeat).await?;
                }
            }
        }
    }
    .await;
    if let Err(error) = result {
        tracing::debug!(%error, "writing to the broker failed");
    }
    closed.send_replace(true);
}

async fn read_loop(
    mut reader: FrameReader,
    pending: Arc<Mutex<Pending>>,
    heartbeat: Duration,
    closed: Arc<watch::Sender<bool>>,
) {
    let mut closed_rx = closed.subscribe();
    let mut silence = Silence::new(heartbeat);
    'read: while let Some(frame) = next_frame(&mut reader, &mut closed_rx, &mut silence).await {
        let (id, events) = match frame {
            Frame::Heartbeat => continue,
            Frame::Error {
                id: None,
                kind,
                message,
            } => {
                broker_closed(&pending, kind, message, &mut closed_rx).await;
                break;
            }
            other => match request_events(other) {
                Ok(events) => events,
                Err(name) => {
                    tracing::warn!(frame = name, "unexpected frame from the broker; ignored");
                    continue;
                }
            },
        };
        // Each event of the frame in turn (a `Replies` frame has several).
        for event in events {
            // The usual case is settled under one lock, without cloning the sender: room in
            // the request's channel (`try_send` never waits), or nobody left to read it.
            let full = {
                let mut pending = lock(&pending);
                let last = event.is_final();
                let Some(sender) = pending.senders.get(&id) else {
                    tracing::debug!(id, "event for a request nobody waits for; ignored");
                    break;
                };
                match sender.try_send(event) {
                    Ok(()) if !last => None,
                    Ok(()) | Err(flume::TrySendError::Disconnected(_)) => {
                        pending.senders.remove(&id);
                        None
                    }
                    Err(flume::TrySendError::Full(event)) => {
                        let sender = if last {
                            pending.senders.remove(&id)
                        } else {
                            pending.senders.get(&id).cloned()
                        };
                        sender.map(|sender| (sender, event))
                    }
                }
            };
            let Some((sender, event)) = full else {
                continue;
            };
            // A full channel: waiting here is the backpressure. While a consumer is slow, the
            // socket is not read.
            let delivered = tokio::select! {
                _ = until_closed(&mut closed_rx) => break 'read,
                sent = sender.send_async(event) => sent.is_ok(),
            };
            if !delivered {
                lock(&pending).senders.remove(&id);
                break;
            }
            // The socket was not read meanwhile, by our choice: that time is not the
            // broker's silence (the broker pauses our requests' output instead).
            silence.restart();
        }
    }
    // Dropping the senders ends every pending request with `Disconnected`.
    {
        let mut pending = lock(&pending);
        pending.closed = true;
        pending.senders.clear();
    }
    closed.send_replace(true);
}

/// How long the broker has been silent, as the reader watches it: one timer for the whole
/// connection, moved forward as frames arrive, at most every eighth of the limit (a timer
/// per frame costs more than the frame): the broker counts as silent after 7/8 to 8/8 of
/// the limit without a frame. No limit (no heartbeat) means no watch.
struct Silence {
    limit: Option<Duration>,
    /// Its deadline is the limit after the last move.
    timer: Pin<Box<Sleep>>,
}

impl Silence {
    fn new(heartbeat: Duration) -> Silence {
        let limit = (!heartbeat.is_zero()).then(|| heartbeat * MISSED_HEARTBEATS);
        let timer = Box::pin(sleep(limit.unwrap_or(Duration::from_secs(86_400))));
        Silence { limit, timer }
    }

    /// A read from the socket: the timer moves forward if it was not moved for an eighth of
    /// the limit.
    fn heard(&mut self) {
        if let Some(limit) = self.limit {
            let now = tokio::time::Instant::now();
            if self.timer.deadline() + limit / 8 <= now + limit {
                self.timer.as_mut().reset(now + limit);
            }
        }
    }

    /// The timer runs its whole limit again from now.
    fn restart(&mut self) {
        if let Some(limit) = self.limit {
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + limit);
        }
    }
}

/// The next frame from the broker; `None` once the connection is closed, broken or the
/// broker went silent. Frames already buffered are handled without the socket, the timer
/// or the select.
async fn next_frame(
    reader: &mut FrameReader,
    closed: &mut watch::Receiver<bool>,
    silence: &mut Silence,
) -> Option<Frame> {
    let frame = match reader.try_frame() {
        Ok(Some(frame)) => return Some(frame),
        Ok(None) => tokio::select! {
            _ = until_closed(closed) => return None,
            frame = reader.read_frame() => frame,
            () = &mut silence.timer, if silence.limit.is_some() => {
                tracing::debug!("the broker went silent");
                Err(ConnectionError::Closed)
            }
        },
        Err(error) => Err(error),
    };
    let ended = |error: &ConnectionError| tracing::debug!(%error, "reading from the broker ended");
    let frame = frame.inspect_err(ended).ok()?;
    // The clock is read once per read from the socket, not once per buffered frame.
    silence.heard();
    Some(frame)
}

/// The broker closed the connection with `kind`. When it ended every request of this
/// connection (a slow consumer, revoked, shutting down, stale), each ends with that error; the
/// others, after a bad frame, end as `Disconnected`.
async fn broker_closed(
    pending: &Mutex<Pending>,
    kind: ErrorKind,
    message: String,
    closed: &mut watch::Receiver<bool>,
) {
    tracing::warn!(%kind, %message, "the broker closed the connection");
    if !matches!(
        kind,
        ErrorKind::SlowConsumer | ErrorKind::Revoked | ErrorKind::ShuttingDown | ErrorKind::Stale
    ) {
        return;
    }
    let senders: Vec<_> = lock(pending).senders.drain().collect();
    for (_, sender) in senders {
        let event = ClientEvent::Error {
            kind,
            message: message.clone(),
        };
        tokio::select! {
            _ = until_closed(closed) => return,
            _ = sender.send_async(event) => {}
        }
    }
}

/// Resolves once the connection is marked closed (or the marker is gone).
async fn until_closed(closed: &mut watch::Receiver<bool>) {
    // The returned guard is dropped here: holding it across an await would make the task
    // non-`Send`.
    let _ = closed.wait_for(|closed| *closed).await;
}

/// The events of one broker → client frame, in order: one, or a `Replies` frame's several.
enum FrameEvents {
    One(Option<ClientEvent>),
    Replies {
        worker: String,
        events: std::vec::IntoIter<Event>,
    },
}

impl Iterator for FrameEvents {
    type Item = ClientEvent;
    fn next(&mut self) -> Option<ClientEvent> {
        match self {
            FrameEvents::One(event) => event.take(),
            FrameEvents::Replies { worker, events } => {
                let event = events.next()?;
                // The last event takes the name; the others copy it.
                let worker = if events.len() == 0 {
                    std::mem::take(worker)
                } else {
                    worker.clone()
                };
                Some(reply_event(worker, event))
            }
        }
    }
}

/// A worker's event relayed to the client.
fn reply_event(worker: String, event: Event) -> ClientEvent {
    match event {
        Event::Accepted => ClientEvent::Accepted { worker },
        Event::Output { seq, stream, data } => ClientEvent::Output {
            worker,
            seq,
            stream,
            data,
        },
        Event::Done { exit_code } => ClientEvent::Done { worker, exit_code },
        Event::Failed { kind, message } => ClientEvent::Failed {
            worker,
            kind,
            message,
        },
    }
}

/// The request id and events a broker → client frame carries, or the frame's name if it is
/// not one a client should get.
fn request_events(frame: Frame) -> Result<(u64, FrameEvents), &'static str> {
    if let Frame::Replies { id, worker, events } = frame {
        let events = events.into_iter();
        return Ok((id, FrameEvents::Replies { worker, events }));
    }
    request_event(frame).map(|(id, event)| (id, FrameEvents::One(Some(event))))
}

/// The request id and event a broker → client frame of one event carries, or the frame's
/// name if it is not one a client should get.
fn request_event(frame: Frame) -> Result<(u64, ClientEvent), &'static str> {
    Ok(match frame {
        Frame::Routed {
            id,
            algorithm,
            n_workers,
        } => (
            id,
            ClientEvent::Routed {
                algorithm,
                n_workers,
            },
        ),
        Frame::Queued { id, n_workers } => (id, ClientEvent::Queued { n_workers }),
        Frame::Reply { id, worker, event } => (id, reply_event(worker, event)),
        Frame::Summary { id, summary } => (id, ClientEvent::Summary(summary)),
        Frame::Error {
            id: Some(id),
            kind,
            message,
        } => (id, ClientEvent::Error { kind, message }),
        other => return Err(other.kind_name()),
    })
}
