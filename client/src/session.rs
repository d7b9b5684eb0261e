//! One connection to one broker node: the handshake, then two tasks.
//!
//! - the **reader** reads every frame from the broker and hands it, by request id, to that
//!   request's bounded channel; it keeps the node list the broker announces (`Nodes`) and
//!   notices a broker that went silent;
//! - the **writer** owns the socket's write half: it sends queued frames (requests, cancels)
//!   in batches and a `Heartbeat` every `heartbeat_ms`.
//!
//! When either task ends (socket closed, silence, all handles dropped), the connection is
//! closed: the reader drops every pending request's channel, and each of those requests
//! ends with `Error { BrokerLost }` ([`Session::lost`]), unless the broker ended them itself
//! first with the reason it closed the connection ([`broker_closed`]).

use crate::client::ClientEvent;
use crate::connection::{self, ConnectionError, FrameReader, FrameWriter};
use crate::nodes::KnownNodes;
use crate::ClientError;
use proto::{Credential, ErrorKind, Event, Frame, Hello, Role};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, Sleep};

/// Events buffered per request before the reader waits for the consumer. Bounded so that a
/// slow consumer pushes back on the socket (and so on the broker) instead of growing memory;
/// 256 output lines is enough to absorb bursts without stalling other requests for long.
pub(crate) const EVENTS_PER_REQUEST: usize = 256;

/// Frames queued for the writer task. Requests and cancels are small; a full queue means the
/// broker is not reading, and waiting is the right answer.
const OUTBOUND_FRAMES: usize = 1024;

/// How long to wait for TCP connect + `Hello`/`Welcome`. A broker that does not answer within
/// 10 s is as good as unreachable for an interactive command.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Missed heartbeats after which the broker counts as gone (DESIGN.md §4: three).
const MISSED_HEARTBEATS: u32 = 3;

/// One connection to one broker node.
///
/// It lives as long as a [`crate::Client`] or a [`crate::RequestHandle`] holds it: dropping
/// the last holder drops the writer's queue, which closes the connection.
#[derive(Debug)]
pub(crate) struct Session {
    /// The address it was opened to, as given or announced.
    pub(crate) addr: String,
    pub(crate) outbound: mpsc::Sender<Frame>,
    pub(crate) pending: Arc<Mutex<Pending>>,
    /// The broker's session number.
    pub(crate) session: u64,
    pub(crate) heartbeat: Duration,
    /// Which credential (the client's count of them) opened it.
    pub(crate) credential_generation: u64,
}

/// Requests waiting for their final event, by id.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) senders: HashMap<u64, flume::Sender<ClientEvent>>,
    /// Set once the connection is gone; no request may register after that.
    pub(crate) closed: bool,
    /// How the connection ended, once it did.
    pub(crate) end: Option<End>,
}

/// How a connection ended.
#[derive(Debug, Clone)]
pub(crate) struct End {
    /// The kind of the broker's closing `Error { id: None }`, when it sent one.
    pub(crate) kind: Option<ErrorKind>,
    /// What happened, for the requests' `BrokerLost` message.
    pub(crate) reason: String,
}

/// What a request registered on a session gets, or the frame back when the session is gone.
pub(crate) type Submitted = Result<flume::Receiver<ClientEvent>, Frame>;

impl Session {
    /// Connects to `addr`, does the handshake and starts the reader and writer. The nodes a
    /// `Welcome` names are learned into `nodes`, and so are those of later `Nodes` frames.
    pub(crate) async fn open(
        addr: &str,
        credential: Credential,
        credential_generation: u64,
        nodes: &Arc<Mutex<KnownNodes>>,
    ) -> Result<Arc<Session>, ClientError> {
        let handshake = async {
            let newest = handshake(addr, credential.clone(), proto::PROTOCOL_VERSION).await;
            match newest {
                // A broker of protocol 7 refuses every other version so (ours refuse
                // `BadRequest` at `Hello` only for a version or a malformed `Hello`): say
                // `Hello` again in the oldest version it may speak; `Answer` never comes.
                Err(ClientError::Refused {
                    kind: ErrorKind::BadRequest,
                    ..
                }) => handshake(addr, credential, proto::MIN_PROTOCOL_VERSION).await,
                other => other,
            }
        };
        let (reader, writer, session, heartbeat_ms, announced) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| ClientError::ConnectTimeout {
                    addr: addr.to_string(),
                })??;
        lock_nodes(nodes).learn(&announced);
        let heartbeat = Duration::from_millis(u64::from(heartbeat_ms));
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_FRAMES);
        let pending = Arc::new(Mutex::new(Pending::default()));
        // Either task marks the connection closed when it ends; the other sees it and stops.
        let closed = Arc::new(watch::Sender::new(false));
        tokio::spawn(write_loop(writer, outbound_rx, heartbeat, closed.clone()));
        tokio::spawn(read_loop(
            reader,
            pending.clone(),
            nodes.clone(),
            heartbeat,
            closed,
        ));
        Ok(Arc::new(Session {
            addr: addr.to_string(),
            outbound,
            pending,
            session,
            heartbeat,
            credential_generation,
        }))
    }

    /// Whether the connection is known to be gone.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.pending).closed || self.outbound.is_closed()
    }

    /// How the connection ended; `None` while it is open.
    pub(crate) fn end(&self) -> Option<End> {
        let pending = lock(&self.pending);
        match (&pending.end, pending.closed || self.outbound.is_closed()) {
            (Some(end), _) => Some(end.clone()),
            (None, true) => Some(End {
                kind: None,
                reason: "the connection closed".into(),
            }),
            (None, false) => None,
        }
    }

    /// The final event of a request whose channel the connection's end closed.
    pub(crate) fn lost(&self) -> ClientEvent {
        let reason = self
            .end()
            .map_or_else(|| "the connection closed".into(), |end| end.reason);
        ClientEvent::Error {
            kind: ErrorKind::BrokerLost,
            message: format!(
                "the connection to the broker at {} was lost: {reason}",
                self.addr
            ),
        }
    }

    /// Registers request `id` and queues its frame; the frame comes back when the
    /// connection is gone (so that it can go through another).
    pub(crate) async fn submit(&self, id: u64, frame: Frame) -> Submitted {
        let (tx, rx) = flume::bounded(EVENTS_PER_REQUEST);
        {
            let mut pending = lock(&self.pending);
            if pending.closed {
                return Err(frame);
            }
            pending.senders.insert(id, tx);
        }
        // Room in the writer's queue is the usual case: no future, no semaphore wait.
        let sent = match self.outbound.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(frame)) => {
                self.outbound.send(frame).await.map_err(|e| e.0)
            }
            Err(mpsc::error::TrySendError::Closed(frame)) => Err(frame),
        };
        match sent {
            Ok(()) => Ok(rx),
            Err(frame) => {
                lock(&self.pending).senders.remove(&id);
                Err(frame)
            }
        }
    }

    /// Queues a frame (a `Cancel`).
    pub(crate) async fn send(&self, frame: Frame) -> Result<(), ClientError> {
        self.outbound
            .send(frame)
            .await
            .map_err(|_| ClientError::Disconnected)
    }

    /// Forgets request `id` (its handle is gone) and asks the broker to cancel it, as far as
    /// the queue has room: if it is full or closed, the broker ends the request by its
    /// timeout or when the connection closes.
    pub(crate) fn abandon(&self, id: u64) {
        lock(&self.pending).senders.remove(&id);
        let _ = self.outbound.try_send(Frame::Cancel { id });
    }
}

fn lock_nodes(nodes: &Mutex<KnownNodes>) -> std::sync::MutexGuard<'_, KnownNodes> {
    // Held for a list's replacement or copy only; a poisoned lock still holds a whole list.
    nodes.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
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
    nodes: Arc<Mutex<KnownNodes>>,
    heartbeat: Duration,
    closed: Arc<watch::Sender<bool>>,
) {
    let mut closed_rx = closed.subscribe();
    let mut silence = Silence::new(heartbeat);
    let end = 'read: loop {
        let frame = match next_frame(&mut reader, &mut closed_rx, &mut silence).await {
            Ok(frame) => frame,
            Err(reason) => break End { kind: None, reason },
        };
        let (id, events) = match frame {
            Frame::Heartbeat => continue,
            Frame::Nodes { nodes: announced } => {
                lock_nodes(&nodes).learn(&announced);
                continue;
            }
            Frame::Error {
                id: None,
                kind,
                message,
            } => {
                let reason = format!("the broker closed it: {kind}: {message}");
                broker_closed(&pending, kind, message, &mut closed_rx).await;
                break End {
                    kind: Some(kind),
                    reason,
                };
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
                _ = until_closed(&mut closed_rx) => break 'read End {
                    kind: None,
                    reason: "the connection closed".into(),
                },
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
    };
    // Dropping the senders ends every pending request with `BrokerLost` (see `Session::lost`):
    // the end is recorded first, under the same lock.
    {
        let mut pending = lock(&pending);
        pending.end.get_or_insert(end);
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

/// The next frame from the broker; `Err(why)` once the connection is closed, broken or the
/// broker went silent. Frames already buffered are handled without the socket, the timer or
/// the select.
async fn next_frame(
    reader: &mut FrameReader,
    closed: &mut watch::Receiver<bool>,
    silence: &mut Silence,
) -> Result<Frame, String> {
    let frame = match reader.try_frame() {
        Ok(Some(frame)) => return Ok(frame),
        Ok(None) => tokio::select! {
            _ = until_closed(closed) => return Err("the connection closed".into()),
            frame = reader.read_frame() => frame,
            () = &mut silence.timer, if silence.limit.is_some() => {
                tracing::debug!("the broker went silent");
                return Err(format!(
                    "the broker sent nothing for {MISSED_HEARTBEATS} heartbeats"
                ));
            }
        },
        Err(error) => Err(error),
    };
    let frame = frame.map_err(|error| {
        tracing::debug!(%error, "reading from the broker ended");
        error.to_string()
    })?;
    // The clock is read once per read from the socket, not once per buffered frame.
    silence.heard();
    Ok(frame)
}

/// The broker closed the connection with `kind`. When it ended every request of this
/// connection (a slow consumer, revoked, shutting down, stale), each ends with that error; the
/// others, after a bad frame, end as `BrokerLost`.
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

/// What a handshake gives: the connection's halves, and `Welcome`'s session, heartbeat and
/// nodes.
type Welcomed = (FrameReader, FrameWriter, u64, u32, Vec<String>);

/// Connects to `addr` and says `Hello` in protocol `version`: the connection once welcomed,
/// or why not.
async fn handshake(
    addr: &str,
    credential: Credential,
    version: u16,
) -> Result<Welcomed, ClientError> {
    let failed = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let (mut reader, mut writer) = connection::connect(addr).await.map_err(failed)?;
    let hello = Frame::Hello(Hello {
        protocol_version: version,
        role: Role::Client,
        credential,
    });
    writer.write_frame(&hello).await.map_err(failed)?;
    match reader.read_frame().await {
        Ok(Frame::Welcome {
            session,
            heartbeat_ms,
            nodes,
        }) => Ok((reader, writer, session, heartbeat_ms, nodes)),
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
}

/// The events of one broker → client frame, in order: one, a `Replies` frame's several, or
/// an `Answer`'s `Routed`, replies and `Summary`.
enum FrameEvents {
    One(Option<ClientEvent>),
    Replies {
        worker: String,
        events: std::vec::IntoIter<Event>,
    },
    Answer(std::vec::IntoIter<ClientEvent>),
}

impl Iterator for FrameEvents {
    type Item = ClientEvent;
    fn next(&mut self) -> Option<ClientEvent> {
        match self {
            FrameEvents::One(event) => event.take(),
            FrameEvents::Answer(events) => events.next(),
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

/// What an `Answer` stands for: `Routed`, each event of its worker, `Summary`.
fn answer_events(answer: proto::Answer) -> FrameEvents {
    let proto::Answer {
        algorithm,
        n_workers,
        worker,
        events,
        summary,
        ..
    } = answer;
    let mut all = Vec::with_capacity(events.len() + 2);
    all.push(ClientEvent::Routed {
        algorithm,
        n_workers,
    });
    let replies = FrameEvents::Replies {
        worker,
        events: events.into_iter(),
    };
    all.extend(replies);
    all.push(ClientEvent::Summary(summary));
    FrameEvents::Answer(all.into_iter())
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
    let frame = match frame {
        Frame::Replies { id, worker, events } => {
            let events = events.into_iter();
            return Ok((id, FrameEvents::Replies { worker, events }));
        }
        Frame::Answer(answer) => return Ok((answer.id, answer_events(*answer))),
        other => other,
    };
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
