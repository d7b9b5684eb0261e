//! A connection's life: handshake, registration, the read loop, heartbeats, close.

use super::{Conn, Peer, Shard};
use crate::config::Principal;
use crate::conn::{
    write_loop, FlowMarks, FrameReader, Outbox, Pushed, ReadError, SharedStream, Stream,
};
use crate::registry::WorkerAt;
use crate::request::WorkerEvent;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use glommio::net::TcpStream;
use proto::control::{WorkerState, WorkerStateReport};
use proto::{Credential, ErrorKind, Frame, ProtoError, Role};
use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The content type of a TLS handshake record: the first byte a TLS client sends.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The largest frame accepted before `Welcome`: a `Hello` is a few hundred bytes (a JWT, or
/// a worker's team, identity and token). Anything larger is refused as `TooLarge`.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 8 * 1024;

/// Connections by peer address, broker-wide: those that have not finished their handshake
/// yet (`pending`), and those open (`open`, handshake done). The lock is taken when a
/// connection is accepted, when its handshake ends and when it closes: never per frame.
#[derive(Debug)]
pub(crate) struct PendingHandshakes {
    per_address: usize,
    open_per_address: usize,
    counts: Mutex<HashMap<IpAddr, Counts>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    pending: usize,
    open: usize,
}

/// One connection counted as pending in [`PendingHandshakes`] until it is dropped.
pub(crate) struct PendingGuard {
    pending: Arc<PendingHandshakes>,
    ip: IpAddr,
}

/// One connection counted as open in [`PendingHandshakes`] until it is dropped.
pub(crate) struct OpenGuard {
    pending: Arc<PendingHandshakes>,
    ip: IpAddr,
}

impl PendingHandshakes {
    pub(crate) fn new(per_address: usize, open_per_address: usize) -> PendingHandshakes {
        PendingHandshakes {
            per_address,
            open_per_address,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Counts>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection from `ip`, or `None` when `ip` has its limit of pending ones
    /// already. Once per accepted connection: the lock is never taken per frame.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PendingGuard> {
        let mut counts = self.counts();
        let n = counts.entry(ip).or_default();
        if n.pending >= self.per_address {
            return None;
        }
        n.pending += 1;
        Some(PendingGuard {
            pending: self.clone(),
            ip,
        })
    }

    /// Forgets one count of `ip` (`open` or pending), and the address when none is left.
    fn release(&self, ip: IpAddr, open: bool) {
        let mut counts = self.counts();
        if let Some(n) = counts.get_mut(&ip) {
            if open {
                n.open = n.open.saturating_sub(1);
            } else {
                n.pending = n.pending.saturating_sub(1);
            }
            if n.pending == 0 && n.open == 0 {
                counts.remove(&ip);
            }
        }
    }
}

impl PendingGuard {
    /// The handshake succeeded: the connection counts as open instead of pending, or, when
    /// its address has `max_connections_per_address` open already, `Err(open)`.
    pub(crate) fn establish(self) -> Result<OpenGuard, usize> {
        let pending = self.pending.clone();
        let ip = self.ip;
        let mut counts = pending.counts();
        let n = counts.entry(ip).or_default();
        if n.open >= pending.open_per_address {
            let open = n.open;
            drop(counts);
            return Err(open);
        }
        n.open += 1;
        drop(counts);
        drop(self);
        Ok(OpenGuard { pending, ip })
    }

    /// The peer's address.
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending.release(self.ip, false);
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.pending.release(self.ip, true);
    }
}

impl Shard {
    /// Serves one accepted connection until it closes. `pending` counts it among its
    /// address's unfinished handshakes until the handshake ends.
    pub(crate) async fn serve(self: Rc<Self>, stream: TcpStream, pending: PendingGuard) {
        let _ = stream.set_nodelay(true);
        let (stream, certified) = match &self.settings.tls {
            None => (Stream::Plain(stream), false),
            Some(config) => match self.accept_tls(stream, config.clone()).await {
                Some(accepted) => accepted,
                None => return,
            },
        };
        let stream = SharedStream::new(stream);
        let mut reader = FrameReader::new(
            stream.clone(),
            HANDSHAKE_MAX_FRAME.min(self.settings.max_frame),
        );
        let out = Rc::new(Outbox::new(
            self.settings.queue_depth,
            self.settings.max_frame,
        ));
        glommio::spawn_local(write_loop(stream.clone(), out.clone())).detach();

        let handshake = self.handshake(&mut reader, &out, certified).await;
        let Some((principal, role)) = handshake else {
            // The writer flushes the refusal, then closes the socket.
            out.close();
            return;
        };
        let ip = pending.ip();
        let _open = match pending.establish() {
            Ok(open) => open,
            Err(open) => {
                let limit = self.settings.max_connections_per_address;
                warn!(shard = self.idx, %ip, open, limit, identity = %principal.identity, "too many connections from this address; refused");
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
                out.close();
                return;
            }
        };
        reader.set_max_frame(self.settings.max_frame);
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

    /// Registers a connection whose `Hello` was accepted and queues its `Welcome`; a worker
    /// is reported online and announced to every shard. Returns the connection's id.
    pub(super) fn open_conn(&self, out: Rc<Outbox>, principal: Principal, role: Role) -> u64 {
        let conn_id = self.next_conn.get();
        self.next_conn.set(conn_id + 1);
        let peer = match role {
            Role::Client => {
                // Frames to a client never wait: past this bound it is cut instead; past its
                // pause mark its requests' output is paused at their workers.
                let bound = self.settings.max_client_backlog;
                out.bound_bytes(bound);
                let pause_at = self.settings.client_pause_backlog.min(bound / 2).max(1);
                let marks = FlowMarks {
                    pause_at,
                    resume_at: pause_at / 4,
                };
                out.flow_control(marks, self.budget.clone());
                Peer::Client {
                    requests: HashMap::new(),
                    limits: super::ClientLimits {
                        bucket: self
                            .settings
                            .client_rate
                            .as_ref()
                            .map(|rate| crate::limits::Bucket::new(rate, Instant::now())),
                        ..Default::default()
                    },
                }
            }
            Role::Worker => Peer::Worker {
                inflight: HashSet::new(),
                generation: super::workers::next_generation(),
            },
        };
        let expires_at = principal.expires_at();
        let conn = Conn {
            out: out.clone(),
            principal: principal.clone(),
            peer,
        };
        let mut state = self.state.borrow_mut();
        state.conns.insert(conn_id, conn);
        if let Some(exp) = expires_at {
            state.expiries.insert((exp, conn_id));
        }
        drop(state);
        self.push_to(
            &out,
            &Frame::Welcome {
                session: self.session_base | conn_id,
                heartbeat_ms: self.settings.heartbeat.as_millis() as u32,
            },
        );
        self.stats.connected(role).inc();
        if role == Role::Worker {
            let Principal { team, identity, .. } = &principal;
            info!(shard = self.idx, %identity, %team, "worker online");
            self.report_worker(conn_id, WorkerState::Online, Vec::new());
            self.worker_online(conn_id, &principal, Vec::new());
        }
        conn_id
    }

    /// Handles one frame of an open connection; `false` means close it.
    pub(super) fn on_frame(&self, conn_id: u64, role: Role, frame: Frame) -> bool {
        match role {
            Role::Client => self.on_client_frame(conn_id, frame),
            Role::Worker => self.on_worker_frame(conn_id, frame),
        }
    }

    /// The TLS handshake, within the `Hello` deadline; with it, whether the peer presented a
    /// client certificate (the configuration checked it against `--tls-client-ca`). A peer
    /// whose first bytes are no TLS record speaks plaintext: it is answered
    /// `Refused { BadRequest }` in plaintext, so a plaintext client gets a typed error
    /// instead of a hang or a reset.
    async fn accept_tls(
        &self,
        stream: TcpStream,
        config: std::sync::Arc<futures_rustls::rustls::ServerConfig>,
    ) -> Option<(Stream, bool)> {
        let deadline = self.settings.heartbeat * 3;
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
                    debug!(shard = self.idx, error = %e, "TLS handshake failed");
                    crate::metrics::CLOSED.with_label_values(&["tls"]).inc();
                    Err(None)
                }
            }
        };
        let accepted = futures_lite::FutureExt::or(async { Some(accept.await) }, async {
            glommio::timer::sleep(deadline).await;
            None
        })
        .await;
        match accepted {
            Some(Ok(tls)) => {
                let certified = tls.get_ref().1.peer_certificates().is_some();
                Some((Stream::Tls(Box::new(tls)), certified))
            }
            Some(Err(Some(plain))) => {
                crate::metrics::CLOSED
                    .with_label_values(&["plaintext"])
                    .inc();
                warn!(
                    shard = self.idx,
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
    ) -> Option<(Principal, Role)> {
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
                        if role == Role::Worker && self.settings.worker_cert_required && !certified
                        {
                            warn!(
                                shard = self.idx,
                                "worker without a client certificate refused"
                            );
                            refuse(
                                ErrorKind::Unauthorized,
                                "this broker requires a client certificate from workers \
                                 (--tls-cert and --tls-key, signed by its --tls-client-ca)"
                                    .into(),
                            )
                        } else {
                            return Some((principal, role));
                        }
                    }
                    Err(refusal) => {
                        warn!(shard = self.idx, kind = ?refusal.kind, reason = %refusal.message, "handshake refused");
                        refuse(refusal.kind, refusal.message)
                    }
                },
            },
        };
        let reason = match &answer {
            Frame::Refused { kind, .. } | Frame::Error { kind, .. } => {
                crate::metrics::kind_label(*kind)
            }
            _ => "handshake",
        };
        crate::metrics::REJECTED.with_label_values(&[reason]).inc();
        let _ = out.send(&answer).await;
        None
    }

    /// Answers a frame that could not be decoded; the caller then closes the connection.
    pub(super) fn reject(&self, conn_id: u64, e: &ProtoError) {
        let (kind, message) = proto_error_kind(e);
        crate::metrics::REJECTED
            .with_label_values(&[crate::metrics::kind_label(kind)])
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

    /// Forgets a closed connection: a client's waited requests are cancelled (fire-and-forget
    /// ones run on); a worker is reported offline and its open dispatches lost.
    pub(super) fn close_conn(&self, conn_id: u64) {
        let conn = {
            let mut state = self.state.borrow_mut();
            let conn = state.conns.remove(&conn_id);
            if let Some(exp) = conn.as_ref().and_then(|c| c.principal.expires_at()) {
                state.expiries.remove(&(exp, conn_id));
            }
            conn
        };
        let Some(conn) = conn else { return };
        match conn.peer {
            Peer::Client { requests, .. } => {
                self.stats.connected(Role::Client).dec();
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
            Peer::Worker {
                inflight,
                generation,
            } => {
                self.stats.connected(Role::Worker).dec();
                let Principal { team, identity, .. } = &conn.principal;
                let at = WorkerAt {
                    shard_idx: self.idx,
                    conn_id,
                };
                // A superseded connection's identity is online still, on the newer one.
                let current = self.state.borrow().registry.online_at(team, identity) == Some(at);
                if current {
                    info!(shard = self.idx, %identity, %team, n_inflight = inflight.len(), "worker offline");
                    self.report_state(
                        &conn.principal,
                        generation,
                        WorkerState::Disconnected,
                        Vec::new(),
                    );
                } else {
                    info!(shard = self.idx, %identity, %team, n_inflight = inflight.len(), "superseded worker connection closed");
                }
                self.worker_offline(team, identity, at);
                for dispatch_id in inflight {
                    self.route_event(dispatch_id, WorkerEvent::Lost);
                }
            }
        }
    }

    /// Queues `frame` to connection `conn_id`, if it is still open. A client whose backlog
    /// passes its bound (or its share of the budget) is noted to be cut (never waited for);
    /// one that passes its pause mark, to be paused.
    pub(super) fn send_to_conn(&self, conn_id: u64, frame: &Frame) {
        let state = self.state.borrow();
        if let Some(conn) = state.conns.get(&conn_id) {
            match self.push_to(&conn.out, frame) {
                Pushed::Overflow => self.close_later(conn_id, ErrorKind::SlowConsumer),
                Pushed::OverBudget => {
                    let backlog = conn.out.backlog_bytes();
                    let why = format!(
                        "the client did not read its replies: {backlog} bytes waited for it while the broker's buffers for all clients were past their bound of {} (--max-client-backlog-total), more than its share; its requests are ended",
                        self.budget.limit()
                    );
                    self.close_later_why(conn_id, ErrorKind::SlowConsumer, why);
                }
                Pushed::Pause => self.unsettled.borrow_mut().to_pause.push(conn_id),
                Pushed::Room | Pushed::Full => {}
            }
        }
    }

    /// Pauses the output of the clients noted by `send_to_conn` at their workers.
    pub(super) fn pause_clients(&self) {
        let to_pause = std::mem::take(&mut self.unsettled.borrow_mut().to_pause);
        for conn_id in to_pause {
            self.flow_client(conn_id, true);
        }
    }

    /// Pauses (or resumes) the output of every waited request of client `conn_id` at the
    /// workers running it.
    pub(super) fn flow_client(&self, conn_id: u64, paused: bool) {
        let dispatches: Vec<(u64, WorkerAt)> = {
            let state = self.state.borrow();
            let Some(Conn {
                peer: Peer::Client { requests, .. },
                ..
            }) = state.conns.get(&conn_id)
            else {
                return;
            };
            requests
                .values()
                .filter_map(|key| state.requests.get(key))
                .filter(|entry| entry.wait)
                .flat_map(|entry| entry.run.open_dispatches_at())
                .collect()
        };
        if paused {
            crate::metrics::CLIENT_PAUSES.inc();
            debug!(
                shard = self.idx,
                conn_id,
                dispatches = dispatches.len(),
                backlog = self.budget.bytes(),
                "client behind: pausing its requests' output"
            );
        }
        for (dispatch_id, at) in dispatches {
            self.flow_dispatch(dispatch_id, at, paused);
        }
    }

    /// Notes connection `conn_id` to be cut with `kind` once the handling in progress is
    /// over (see [`Shard::cut_connections`]).
    pub(super) fn close_later(&self, conn_id: u64, kind: ErrorKind) {
        self.close_later_why(conn_id, kind, String::new());
    }

    /// [`Shard::close_later`] with a message for the peer.
    pub(super) fn close_later_why(&self, conn_id: u64, kind: ErrorKind, why: String) {
        let mut unsettled = self.unsettled.borrow_mut();
        if !unsettled.to_cut.iter().any(|(id, _, _)| *id == conn_id) {
            unsettled.to_cut.push((conn_id, kind, why));
        }
    }

    /// Cuts the connections noted by [`Shard::close_later`]: each is sent a final
    /// `Error { id: None }` if it fits (its backlog is dropped) and closed; a client's waited
    /// requests are cancelled. Called before anything waits, so a cut client is never waited
    /// for.
    pub(super) fn cut_connections(&self) {
        loop {
            let to_cut = std::mem::take(&mut self.unsettled.borrow_mut().to_cut);
            if to_cut.is_empty() {
                return;
            }
            for (conn_id, kind, why) in to_cut {
                self.cut(conn_id, kind, why);
            }
        }
    }

    fn cut(&self, conn_id: u64, kind: ErrorKind, why: String) {
        let Some((out, principal)) = self
            .state
            .borrow()
            .conns
            .get(&conn_id)
            .map(|c| (c.out.clone(), c.principal.clone()))
        else {
            return;
        };
        let Principal { team, identity, .. } = &principal;
        let (message, reason) = match kind {
            ErrorKind::SlowConsumer if !why.is_empty() => {
                warn!(shard = self.idx, conn_id, %identity, %team, backlog = out.backlog_bytes(), total = self.budget.bytes(), kind = ?kind, "slow consumer over its share of the clients' budget: closing the client's connection and ending its requests");
                (why, "slow_consumer")
            }
            ErrorKind::SlowConsumer => {
                let backlog = out.backlog_bytes();
                warn!(shard = self.idx, conn_id, %identity, %team, backlog, kind = ?kind, "slow consumer: closing the client's connection and ending its requests");
                (
                    format!(
                        "the client did not read its replies: {backlog} bytes waited for it, past the broker's bound of {}; its requests are ended",
                        self.settings.max_client_backlog
                    ),
                    "slow_consumer",
                )
            }
            ErrorKind::Revoked => {
                warn!(shard = self.idx, conn_id, %identity, %team, %why, "credential revoked: closing the connection");
                (why, "revoked")
            }
            _ => {
                warn!(shard = self.idx, conn_id, %identity, %team, kind = ?kind, "a newer connection of this worker took over; closing the old one");
                (
                    format!(
                        "a newer connection of worker `{identity}` took over; this one is closed"
                    ),
                    "superseded",
                )
            }
        };
        crate::metrics::CLOSED.with_label_values(&[reason]).inc();
        out.cut(&Frame::Error {
            id: None,
            kind,
            message,
        });
        self.close_conn(conn_id);
    }

    /// Reports the state of worker connection `conn_id` (with what it announced).
    pub(super) fn report_worker(&self, conn_id: u64, state: WorkerState, services: Vec<String>) {
        let found = match self.state.borrow().conns.get(&conn_id) {
            Some(Conn {
                principal,
                peer: Peer::Worker { generation, .. },
                ..
            }) => Some((principal.clone(), *generation)),
            _ => None,
        };
        if let Some((principal, generation)) = found {
            self.report_state(&principal, generation, state, services);
        }
    }

    fn report_state(
        &self,
        who: &Principal,
        generation: u64,
        state: WorkerState,
        services: Vec<String>,
    ) {
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.source.report(WorkerStateReport {
            team: who.team.clone(),
            identity: who.identity.clone(),
            state,
            at_unix_ms,
            generation,
            services,
        });
    }

    /// Closes every connection whose credential the configuration no longer admits (a
    /// removed member, a deleted user, team or worker, a regenerated token): called when the
    /// revision moves.
    pub(super) fn recheck_credentials(&self) {
        let refused: Vec<(u64, String)> = self
            .state
            .borrow()
            .conns
            .iter()
            .filter_map(|(&id, c)| {
                self.source
                    .admits(&c.principal)
                    .err()
                    .map(|r| (id, r.message))
            })
            .collect();
        for (conn_id, why) in refused {
            self.close_later_why(conn_id, ErrorKind::Revoked, why);
        }
    }

    /// Closes the connections whose token expired (each tick: the earliest expiry only is
    /// looked at, so this costs nothing until one is due).
    pub(super) fn expire_credentials(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut expired = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            // `exp` is a whole second: the token is no longer valid from that second on.
            while let Some(&(exp, conn_id)) = state.expiries.first() {
                if std::time::Duration::from_secs(exp) > now {
                    break;
                }
                state.expiries.pop_first();
                expired.push(conn_id);
            }
        }
        for conn_id in expired {
            self.close_later_why(
                conn_id,
                ErrorKind::Revoked,
                "the token expired; log in again".into(),
            );
        }
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
