//! One connection to the broker, from `Hello` until it breaks.
//!
//! The session task reads frames and routes them; a writer task owns the write half and
//! sends whatever the channel yields, flushing after each batch. Dropping the session drops
//! every dispatch's stop sender, which stops their plugins, and aborts the writer, which
//! closes the socket.

use crate::runner::{self, RunnerConfig, Stop};
use crate::{WorkerConfig, WorkerError};
use client::connection::{connect, ConnectionError, FrameReader, FrameWriter};
use proto::{Credential, ErrorKind, Frame, Hello, Role, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

/// How long connecting plus the handshake may take before we try again.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A heartbeat interval below this from a broker is taken as this: 0 would spin.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// Frames queued for the writer: deep enough for bursts of output from many plugins, bounded
/// so that a stalled socket slows the plugins' readers instead of growing memory.
const OUT_QUEUE: usize = 1024;

/// One node's session: where it connects, and where it tells the worker what it learns.
pub(crate) struct Link {
    /// The node's address.
    pub(crate) addr: String,
    pub(crate) news: mpsc::UnboundedSender<crate::cell::News>,
}

/// State that outlives a session, shared by the sessions of every node.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) runner: Arc<RunnerConfig>,
    pub(crate) slots: Arc<Semaphore>,
    /// Each dispatch task holds a clone; [`crate::run`] waits for all to drop at shutdown.
    pub(crate) alive: mpsc::Sender<()>,
    /// The idempotency window of keyed dispatches: across sessions, so a replay after the
    /// broker restarted finds what ran before.
    pub(crate) idem: crate::idem::SharedKeys,
}

/// Connects, handshakes and serves until the connection breaks; returns why it ended.
/// `welcomed` is set once the broker accepted us.
pub(crate) async fn serve(
    config: &WorkerConfig,
    link: &Link,
    shared: &Shared,
    welcomed: &mut bool,
) -> WorkerError {
    let Err(ended) = serve_inner(config, link, shared, welcomed).await;
    ended
}

/// A broker's `Welcome`: its heartbeat period and the cell's nodes.
type Welcomed = (FrameReader, FrameWriter, u32, Vec<String>);

async fn handshake(config: &WorkerConfig, broker: &str) -> Result<Welcomed, WorkerError> {
    if config.debug {
        info!("connecting to broker at {broker}...");
    }
    let (mut reader, mut writer) =
        connect(broker)
            .await
            .map_err(|source| WorkerError::Connect {
                broker: broker.to_string(),
                source,
            })?;
    let hello = Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        role: Role::Worker,
        credential: Credential::Worker {
            team: config.team.clone(),
            identity: config.identity.clone(),
            token: config.token.clone(),
        },
    });
    writer.write_frame(&hello).await?;
    match reader.read_frame().await? {
        Frame::Welcome {
            heartbeat_ms,
            nodes,
            ..
        } => Ok((reader, writer, heartbeat_ms, nodes)),
        Frame::Refused { kind, reason } => Err(WorkerError::Refused { kind, reason }),
        Frame::Error { kind, message, .. } => Err(WorkerError::Broker { kind, message }),
        other => Err(WorkerError::Handshake {
            got: other.kind_name(),
        }),
    }
}

async fn serve_inner(
    config: &WorkerConfig,
    link: &Link,
    shared: &Shared,
    welcomed: &mut bool,
) -> Result<Infallible, WorkerError> {
    let broker = link.addr.as_str();
    let (mut reader, mut writer, heartbeat_ms, nodes) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(config, broker))
            .await
            .map_err(|_| WorkerError::HandshakeTimeout {
                broker: broker.to_string(),
                waited: HANDSHAKE_TIMEOUT,
            })??;
    *welcomed = true;
    let _ = link.news.send(crate::cell::News::Nodes(nodes));
    if config.debug {
        info!(
            "received BROKER_ACCEPTED from broker for worker {} - Connected",
            config.identity
        );
        let mut announced: Vec<&String> = vec![&config.identity];
        for service in &config.services {
            if !announced.contains(&service) {
                announced.push(service);
            }
        }
        for service in announced {
            info!("Found service {service}. Announcing it to broker.");
        }
    }
    writer
        .write_frame(&Frame::Announce {
            services: config.services.clone(),
        })
        .await?;
    info!(%broker, identity = %config.identity, "connected to broker");

    let heartbeat = Duration::from_millis(u64::from(heartbeat_ms)).max(MIN_HEARTBEAT);
    let silence_limit = heartbeat * 3;
    let (out_tx, out_rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let mut writer_task = AbortOnDropHandle::new(tokio::spawn(write_frames(writer, out_rx)));
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silence = tokio::time::sleep(silence_limit);
    tokio::pin!(silence);
    // Stop senders of running dispatches; dropping one stops its plugin.
    let mut active = Active::default();

    loop {
        tokio::select! {
            frame = reader.read_frame() => {
                let mut frame = checked(broker, frame)?;
                // Moved forward at most every eighth of the limit: a timer per frame costs
                // more than the frame.
                let now = Instant::now();
                if silence.deadline() < now + silence_limit - silence_limit / 8 {
                    silence.as_mut().reset(now + silence_limit);
                }
                // Then every frame already buffered, without a pass through the select.
                loop {
                    if config.debug && frame == Frame::Heartbeat {
                        info!("received HEARTBEAT for worker {} from broker.", config.identity);
                    }
                    if let (true, Frame::Bound { services }) = (config.debug, &frame) {
                        for service in services {
                            info!("Found service {service}. Announcing it to broker.");
                        }
                    }
                    handle_frame(shared, link, frame, &out_tx, &mut active).await?;
                    match checked(broker, reader.try_frame())? {
                        Some(next) => frame = next,
                        None => break,
                    }
                }
            }
            _ = ticker.tick() => {
                // A full queue means frames are flowing anyway.
                if out_tx.try_send(Frame::Heartbeat).is_ok() && config.debug {
                    info!("sent HEARTBEAT for worker {} to broker.", config.identity);
                }
            }
            () = &mut silence => return Err(WorkerError::BrokerSilent { silent: silence_limit }),
            ended = &mut writer_task => {
                let failed = match ended {
                    Ok(Err(e)) => e.into(),
                    _ => WorkerError::WriterStopped,
                };
                return Err(last_word(&mut reader).await.unwrap_or(failed));
            }
        }
    }
}

/// Why the broker closed the connection, when it said so: the connection-level `Error` it
/// sent last, if it arrives within [`LAST_WORD_WAIT`]. A write can fail (`EPIPE`) before
/// that frame is read: a worker superseded by a newer connection of its identity would
/// then take it for a network failure, reconnect, and take the identity back (seen in an
/// e2e run: the two took turns).
pub(crate) async fn last_word(reader: &mut FrameReader) -> Option<WorkerError> {
    let read = async {
        loop {
            match reader.read_frame().await {
                Ok(Frame::Error {
                    id: None,
                    kind,
                    message,
                }) => return Some(WorkerError::Broker { kind, message }),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(LAST_WORD_WAIT, read)
        .await
        .ok()
        .flatten()
}

/// How long a worker whose write failed reads on for the broker's reason.
const LAST_WORD_WAIT: Duration = Duration::from_millis(200);

/// A frame as read, with a malformed one logged; `Option`s pass through.
fn checked<T>(broker: &str, read: Result<T, ConnectionError>) -> Result<T, WorkerError> {
    read.map_err(|e| {
        if let ConnectionError::Proto(e) = &e {
            warn!(%broker, error = %e, "malformed frame from broker");
        }
        e.into()
    })
}

/// Stop senders of the dispatches running on this session (dropping one stops its plugin),
/// with the flow control of each (`Pause`/`Resume` from the broker). One per session:
/// dispatch ids are each broker's own, so running work is known by (session, dispatch id).
/// (Keyed runs meet across sessions in the shared idempotency window instead.)
///
/// A finished dispatch drops its receiver, and its sender is swept out once the map has
/// doubled since the last sweep: amortized O(1) per dispatch, where a sweep per dispatch was
/// O(running).
///
/// When the session ends (the broker died or the connection dropped), unkeyed runs are
/// stopped; a keyed run (`Dispatch.key`, the fs module's spool) runs on to its own end, which
/// the idempotency window records: the spool sends its line again to whatever broker comes
/// next, and that replay waits for this run instead of running the plugin a second time
/// (a run killed after its effect and before its end was forgotten, and ran twice).
#[derive(Default)]
struct Active {
    stops: HashMap<u64, Control>,
    sweep_at: usize,
}

/// What the session holds of a running dispatch: its stop sender, whether its output is
/// paused (the runner stops reading the plugin's pipes while it is), and whether it is keyed.
struct Control {
    stop: oneshot::Sender<Stop>,
    paused: watch::Sender<bool>,
    keyed: bool,
}

impl Active {
    fn is_running(&self, id: u64) -> bool {
        self.stops.get(&id).is_some_and(|c| !c.stop.is_closed())
    }

    fn insert(
        &mut self,
        id: u64,
        stop: oneshot::Sender<Stop>,
        paused: watch::Sender<bool>,
        keyed: bool,
    ) {
        if self.stops.len() >= self.sweep_at {
            self.stops.retain(|_, c| !c.stop.is_closed());
            self.sweep_at = (self.stops.len() * 2).max(64);
        }
        self.stops.insert(
            id,
            Control {
                stop,
                paused,
                keyed,
            },
        );
    }

    /// The stop sender of a dispatch still running.
    fn remove(&mut self, id: u64) -> Option<oneshot::Sender<Stop>> {
        self.stops
            .remove(&id)
            .map(|c| c.stop)
            .filter(|stop| !stop.is_closed())
    }

    /// Pauses or resumes the output of a dispatch still running; `false` if it is not.
    fn set_paused(&self, id: u64, paused: bool) -> bool {
        match self.stops.get(&id) {
            Some(c) if !c.stop.is_closed() => {
                c.paused.send_replace(paused);
                true
            }
            _ => false,
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        for (_, mut c) in self.stops.drain() {
            if c.keyed && !c.stop.is_closed() {
                // Nobody reads this session's output any more: the run goes on unpaused, and
                // its stop sender is held until the run ends (its receiver dropped); the
                // runtime's shutdown drops it, and the plugin with it.
                c.paused.send_replace(false);
                tokio::spawn(async move {
                    c.stop.closed().await;
                    drop(c.paused);
                });
            }
        }
    }
}

async fn handle_frame(
    shared: &Shared,
    link: &Link,
    frame: Frame,
    out: &mpsc::Sender<Frame>,
    active: &mut Active,
) -> Result<(), WorkerError> {
    match frame {
        Frame::Heartbeat | Frame::Bound { .. } => {}
        Frame::Nodes { nodes } => {
            let _ = link.news.send(crate::cell::News::Nodes(nodes));
        }
        Frame::Dispatch(dispatch) => match dispatch.key {
            None => serve_dispatch(shared, *dispatch, out, active, false).await?,
            Some(key) => {
                let id = dispatch.id;
                let served = crate::idem::serve_keyed(&shared.idem, key, id, out).await;
                match served.map_err(|()| WorkerError::WriterStopped)? {
                    Some(forwarder) => {
                        serve_dispatch(shared, *dispatch, &forwarder, active, true).await?
                    }
                    // A replay comes only after a failure (a broker restart, a lost
                    // connection): worth a line.
                    None => info!(
                        id,
                        seq = key.seq,
                        "replayed dispatch answered from the idempotency window"
                    ),
                }
            }
        },
        Frame::Pause { id } | Frame::Resume { id } => {
            let paused = matches!(frame, Frame::Pause { .. });
            if !active.set_paused(id, paused) {
                debug!(
                    id,
                    paused, "flow control for a dispatch that is not running"
                );
            }
        }
        Frame::Cancel { id } => match active.remove(id) {
            Some(stop) => {
                let _ = stop.send(Stop::Cancel);
            }
            None => debug!(id, "cancel for a dispatch that is not running"),
        },
        Frame::Error {
            id: None,
            kind,
            message,
        } => return Err(WorkerError::Broker { kind, message }),
        Frame::Error {
            id: Some(id),
            kind,
            message,
        } => {
            warn!(id, %kind, %message, "broker reported an error");
        }
        other => warn!(
            kind = other.kind_name(),
            "unexpected frame from broker; ignored"
        ),
    }
    Ok(())
}

/// Serves one dispatch, its frames going to `out`: the core `echo` and `append` on this
/// task (no task, no stop channel), anything else on a task of its own.
async fn serve_dispatch(
    shared: &Shared,
    dispatch: proto::Dispatch,
    out: &mpsc::Sender<Frame>,
    active: &mut Active,
    keyed: bool,
) -> Result<(), WorkerError> {
    let id = dispatch.id;
    let lookup = shared
        .runner
        .core
        .lookup(&shared.runner.pluginspath, &dispatch.plugin);
    let dispatch =
        match crate::core::serve_inline(&shared.runner.core, &lookup, dispatch, out).await {
            Ok(Some(dispatch)) => dispatch,
            Ok(None) => return Ok(()),
            Err(()) => return Err(WorkerError::WriterStopped),
        };
    if active.is_running(id) {
        warn!(id, "duplicate dispatch id from broker");
        let frame = Frame::Failed {
            id,
            kind: ErrorKind::BadRequest,
            message: format!("dispatch {id} is already running on this worker"),
        };
        out.send(frame)
            .await
            .map_err(|_| WorkerError::WriterStopped)?;
        return Ok(());
    }
    debug!(id, service = %dispatch.service, plugin = %dispatch.plugin, "dispatch");
    let (stop_tx, stop_rx) = oneshot::channel();
    let (pause_tx, pause_rx) = watch::channel(false);
    active.insert(id, stop_tx, pause_tx, keyed);
    let alive = shared.alive.clone();
    let serving = runner::serve_dispatch(
        shared.runner.clone(),
        dispatch,
        lookup,
        shared.slots.clone(),
        runner::Signals {
            stop: stop_rx,
            paused: pause_rx,
        },
        out.clone(),
    );
    tokio::spawn(async move {
        serving.await;
        // Held until the plugin is gone, so that shutdown can wait for it.
        drop(alive);
    });
    Ok(())
}

/// Writes every frame the channel yields, flushing after each batch; a dispatch's frames
/// queued together go as one `Events` frame.
async fn write_frames(
    mut writer: FrameWriter,
    mut frames: mpsc::Receiver<Frame>,
) -> Result<(), ConnectionError> {
    while let Some(frame) = frames.recv().await {
        writer.write_queued_merged(frame, &mut frames).await?;
    }
    Ok(())
}

#[cfg(test)]
mod active_tests {
    use super::*;

    /// Finished dispatches stop counting as running at once and are swept out as the map
    /// grows; a running one stays cancellable.
    #[test]
    fn finished_dispatches_are_swept_running_ones_stay() {
        let mut active = Active::default();
        let (live_tx, _live_rx) = oneshot::channel();
        active.insert(0, live_tx, watch::channel(false).0, false);
        for id in 1..=200 {
            let (tx, rx) = oneshot::channel();
            active.insert(id, tx, watch::channel(false).0, false);
            drop(rx); // the dispatch finished
            assert!(!active.is_running(id));
        }
        assert!(active.stops.len() < 200, "swept: {}", active.stops.len());
        assert!(active.is_running(0));
        assert!(active.remove(150).is_none(), "finished: nothing to cancel");
        assert!(active.remove(0).is_some());
        assert!(!active.is_running(0));
    }
}
