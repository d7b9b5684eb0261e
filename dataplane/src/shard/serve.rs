//! A connection's task: TLS (when the broker has it), its `Hello` within the deadline
//! (checked by the configuration source, refused with a typed answer otherwise), then its
//! frames handled one at a time (each one event on the shard's state), its heartbeats, and
//! its close.

use super::Shard;
use crate::config::Principal;
use crate::conn::{write_loop, FrameReader, Outbox, ReadError, SharedStream, Stream};
use crate::limits::{OpenGuard, PendingGuard};
use glommio::net::TcpStream;
use proto::{Credential, ErrorKind, Frame, ProtoError, Role};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// The content type of a TLS handshake record: the first byte a TLS client sends.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The largest frame accepted before `Welcome`: a `Hello` is a few hundred bytes (a JWT, or
/// a worker's team, identity and token). Anything larger is refused as `TooLarge`.
const HANDSHAKE_MAX_FRAME: usize = 8 * 1024;

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
        let Some((principal, role, version)) = handshake else {
            // The writer flushes the refusal, then closes the socket.
            out.close();
            return;
        };
        let Some(_open) = self.establish(pending, &principal, &out).await else {
            out.close();
            return;
        };
        reader.set_max_frame(settings.max_frame);
        let conn_id = self.open_conn(out.clone(), principal, role, version);
        self.settle().await;
        if role == Role::Client {
            glommio::spawn_local(client_flow(self.clone(), conn_id, out.clone())).detach();
        }
        let last_seen = Rc::new(Cell::new(Instant::now()));
        let (to, every) = (stream.clone(), settings.heartbeat);
        let heartbeats =
            glommio::spawn_local(heartbeat_loop(to, out.clone(), last_seen.clone(), every));

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
        drop(heartbeats); // cancels them
        self.close_conn(conn_id);
        self.settle().await;
        out.close();
    }

    /// The TLS handshake, within the `Hello` deadline; with it, whether the peer presented a
    /// client certificate (the configuration checked it against `--tls-client-ca`). A peer
    /// whose first bytes are no TLS record speaks plaintext: it is answered
    /// `Refused { BadRequest }` in plaintext, so a plaintext client gets a typed error
    /// instead of a hang or a reset.
    async fn accept_tls(
        &self,
        stream: TcpStream,
        config: Arc<futures_rustls::rustls::ServerConfig>,
    ) -> Option<(Stream, bool)> {
        let deadline = self.env.settings.heartbeat * 3;
        let accept = async {
            let mut first = [0u8; 1];
            match stream.peek(&mut first).await {
                Ok(1) if first[0] != TLS_HANDSHAKE_RECORD => {
                    return Err(Some(stream));
                }
                Ok(1) => {}
                _ => return Err(None),
            }
            let acceptor = futures_rustls::TlsAcceptor::from(config);
            match acceptor.accept(stream).await {
                Ok(tls) => Ok(tls),
                Err(e) => {
                    debug!(shard = self.env.idx, error = %e, "TLS handshake failed");
                    crate::metrics::CLOSED.with_label_values(&["tls"]).inc();
                    Err(None)
                }
            }
        };
        match within(deadline, accept).await {
            Some(Ok(tls)) => {
                let certified = tls.get_ref().1.peer_certificates().is_some();
                Some((Stream::Tls(Box::new(tls)), certified))
            }
            Some(Err(Some(plain))) => {
                crate::metrics::CLOSED
                    .with_label_values(&["plaintext"])
                    .inc();
                warn!(
                    shard = self.env.idx,
                    "plaintext connection to a TLS broker refused"
                );
                let stream = SharedStream::new(Stream::Plain(plain));
                let out = Rc::new(Outbox::new(1, HANDSHAKE_MAX_FRAME));
                let _ = out.try_send(&Frame::Refused {
                    kind: ErrorKind::BadRequest,
                    reason: "this broker requires TLS: connect with tls://host:port".into(),
                });
                out.close();
                write_loop(stream, out).await;
                None
            }
            Some(Err(None)) | None => None,
        }
    }

    /// Reads and checks the `Hello`. On refusal, queues the answer and returns `None`.
    /// `certified`: the peer presented a client certificate its TLS handshake verified.
    async fn handshake(
        &self,
        reader: &mut FrameReader,
        out: &Outbox,
        certified: bool,
    ) -> Option<(Principal, Role, u16)> {
        let deadline = self.env.settings.heartbeat * 3;
        let answer = match within(deadline, reader.read_frame()).await {
            None => Frame::Refused {
                kind: ErrorKind::Malformed,
                reason: "no Hello within the handshake deadline".into(),
            },
            Some(Err(ReadError::Closed | ReadError::Io(_))) => return None,
            Some(Err(ReadError::Proto(e))) => {
                let (kind, message) = proto_error_kind(&e);
                Frame::Error {
                    id: None,
                    kind,
                    message,
                }
            }
            Some(Ok(frame)) => match self.admit_hello(frame, certified) {
                Ok(admitted) => return Some(admitted),
                Err(refused) => refused,
            },
        };
        let reason = match &answer {
            Frame::Refused { kind, .. } | Frame::Error { kind, .. } => {
                crate::metrics::kind_label(*kind)
            }
            _ => "handshake".to_string(),
        };
        crate::metrics::REJECTED.with_label_values(&[&reason]).inc();
        let _ = out.send(&answer).await;
        None
    }

    /// Who a `Hello` comes from, in which role and protocol version, or the `Refused` that
    /// answers it.
    fn admit_hello(&self, frame: Frame, certified: bool) -> Result<(Principal, Role, u16), Frame> {
        let refuse = |kind: ErrorKind, reason: String| Frame::Refused { kind, reason };
        let hello = proto::codec::check_hello(frame)
            .map_err(|e| refuse(ErrorKind::BadRequest, e.to_string()))?;
        let principal = self.env.source.authenticate(&hello.credential).map_err(|refusal| {
            warn!(shard = self.env.idx, kind = ?refusal.kind, reason = %refusal.message, "handshake refused");
            refuse(refusal.kind, refusal.message)
        })?;
        let role = match hello.credential {
            Credential::Jwt { .. } => Role::Client,
            Credential::Worker { .. } => Role::Worker,
        };
        if role == Role::Worker && self.env.settings.worker_cert_required && !certified {
            warn!(
                shard = self.env.idx,
                "worker without a client certificate refused"
            );
            return Err(refuse(
                ErrorKind::Unauthorized,
                "this broker requires a client certificate from workers \
                 (--tls-cert and --tls-key, signed by its --tls-client-ca)"
                    .into(),
            ));
        }
        Ok((principal, role, hello.protocol_version))
    }

    /// Counts a connection whose handshake succeeded as open for its address, or refuses it
    /// `TooManyConnections` when its address has its limit open already.
    async fn establish(
        &self,
        pending: PendingGuard,
        principal: &Principal,
        out: &Outbox,
    ) -> Option<OpenGuard> {
        let ip = pending.ip();
        let open = match pending.establish() {
            Ok(guard) => return Some(guard),
            Err(open) => open,
        };
        let limit = self.env.settings.max_connections_per_address;
        warn!(shard = self.env.idx, %ip, open, limit, identity = %principal.identity, "too many connections from this address; refused");
        crate::metrics::CLOSED
            .with_label_values(&["connections_per_address"])
            .inc();
        let _ = out
            .send(&Frame::Refused {
                kind: ErrorKind::TooManyConnections,
                reason: format!(
                    "{ip} has {open} connections open to this broker, its limit (--max-connections-per-address {limit})"
                ),
            })
            .await;
        None
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
    every: Duration,
) {
    loop {
        glommio::timer::sleep(every).await;
        if last_seen.get().elapsed() > every * 3 {
            debug!("peer missed three heartbeats; closing");
            stream.shutdown();
            return;
        }
        // A full queue means traffic is flowing; no heartbeat needed then.
        let _ = out.try_send(&Frame::Heartbeat);
    }
}

/// `work`'s output, or `None` when `deadline` passed first.
async fn within<T>(deadline: Duration, work: impl std::future::Future<Output = T>) -> Option<T> {
    let late = async {
        glommio::timer::sleep(deadline).await;
        None
    };
    futures_lite::future::or(async { Some(work.await) }, late).await
}

pub(super) fn proto_error_kind(e: &ProtoError) -> (ErrorKind, String) {
    let kind = match e {
        ProtoError::Oversized { .. } => ErrorKind::TooLarge,
        ProtoError::UnsupportedVersion { .. } | ProtoError::BadHandshake { .. } => {
            ErrorKind::BadRequest
        }
        ProtoError::Empty | ProtoError::Malformed { .. } => ErrorKind::Malformed,
    };
    (kind, e.to_string())
}
