//! A connection's task: its handshake, then its frames handled one at a time (each one
//! event on the shard's state), its heartbeats, and its close.

use super::handshake::HANDSHAKE_MAX_FRAME;
use super::Shard;
use crate::conn::{write_loop, FrameReader, Outbox, ReadError, SharedStream, Stream};
use crate::limits::PendingGuard;
use glommio::net::TcpStream;
use proto::{Frame, Role};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::debug;

impl Shard {
    /// Serves one accepted connection until it closes. `pending` counts it among its
    /// address's unfinished handshakes until the handshake ends.
    pub(crate) async fn serve(self: Rc<Self>, stream: TcpStream, pending: PendingGuard) {
        let _ = stream.set_nodelay(true);
        let settings = &self.env.settings;
        let (stream, certified) = match &settings.tls {
            None => (Stream::Plain(stream), false),
            Some(config) => match self.accept_tls(stream, config.clone()).await {
                Some(accepted) => accepted,
                None => return,
            },
        };
        let stream = SharedStream::new(stream);
        let handshake_max = HANDSHAKE_MAX_FRAME.min(settings.max_frame);
        let mut reader = FrameReader::new(stream.clone(), handshake_max);
        let out = Rc::new(Outbox::new(settings.queue_depth, settings.max_frame));
        glommio::spawn_local(write_loop(stream.clone(), out.clone())).detach();

        let handshake = self.handshake(&mut reader, &out, certified).await;
        let Some((principal, role)) = handshake else {
            // The writer flushes the refusal, then closes the socket.
            out.close();
            return;
        };
        let Some(_open) = self.establish(pending, &principal, &out).await else {
            out.close();
            return;
        };
        reader.set_max_frame(settings.max_frame);
        let conn_id = self.open_conn(out.clone(), principal, role);
        self.settle().await;
        if role == Role::Client {
            glommio::spawn_local(client_flow(self.clone(), conn_id, out.clone())).detach();
        }
        let last_seen = Rc::new(Cell::new(Instant::now()));
        let alive = Rc::new(Cell::new(true));
        glommio::spawn_local(heartbeat_loop(
            stream.clone(),
            out.clone(),
            last_seen.clone(),
            alive.clone(),
            settings.heartbeat,
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
            let ok = self.on_frame(conn_id, role, frame);
            self.settle().await;
            // Closed: cut (a slow client, a superseded worker) or its socket failed.
            if !ok || out.is_closed() {
                break;
            }
            // A peer that always has a frame buffered would keep this task from returning to
            // the scheduler (its frames to a client never wait): let timers (heartbeats) and
            // writers run.
            if glommio::executor().need_preempt() {
                glommio::yield_if_needed().await;
            }
        }
        alive.set(false);
        self.close_conn(conn_id);
        self.settle().await;
        out.close();
    }
}

/// Resumes a paused client's output at its workers whenever its backlog came down to its
/// resume mark; ends when the connection closes.
async fn client_flow(shard: Rc<Shard>, conn_id: u64, out: Rc<Outbox>) {
    while out.resumed().await {
        shard.flow_client(conn_id, false);
        shard.settle().await;
    }
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
