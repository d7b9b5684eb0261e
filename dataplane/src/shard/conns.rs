//! The connections of a shard: opening one (its `Welcome`), sending to it, closing it, the
//! credentials each was admitted with, and cutting one: a client that does not read its
//! replies, a credential revoked or expired, a worker connection a newer one of the same
//! identity superseded. What handling an event finds to cut is noted
//! (`Unsettled::cut_later`) and cut once the event is handled, before anything waits: a cut
//! client is never waited for.

use super::{State, DISPATCH_SHARD_SHIFT};
use crate::config::Principal;
use crate::conn::{FlowMarks, Outbox, Pushed};
use crate::limits::{Bucket, LogEvery};
use crate::registry::WorkerAt;
use crate::request::WorkerEvent;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use proto::control::{WorkerState, WorkerStateReport};
use proto::{ErrorKind, Frame, ProtoError, Role};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// What is known about one connection.
pub(super) enum Peer {
    Client {
        /// Client request id → shard request key.
        requests: HashMap<u64, u64>,
        /// Its request rate and its refusals' log.
        limits: ClientLimits,
        /// It speaks protocol 8 or later: a request's whole answer may go as one `Answer`.
        answers: bool,
    },
    Worker {
        /// Dispatches this worker is running, from any shard.
        inflight: HashSet<u64>,
        /// Orders this identity's connections broker-wide; the newest wins.
        generation: u64,
    },
}

/// A client connection's rate bucket (when a rate is set) and its refusals' log.
#[derive(Debug, Default)]
pub(super) struct ClientLimits {
    pub(super) bucket: Option<Bucket>,
    pub(super) log: LogEvery,
}

pub(super) struct Conn {
    pub(super) out: Rc<Outbox>,
    /// Who it is, for routing, isolation and the worker's online/offline news.
    pub(super) principal: Principal,
    pub(super) peer: Peer,
}

/// The connections of a shard, by id, and when their credentials expire.
#[derive(Default)]
pub(super) struct Conns {
    // foldhash: the maps of a shard are keyed by broker-chosen ids and looked up several
    // times per frame; SipHash's DoS resistance buys nothing there and cost ~2 % of the
    // throughput profile.
    by_id: HashMap<u64, Conn>,
    /// Connections whose credential expires: (expiry in seconds since the Unix epoch, conn).
    expiries: BTreeSet<(u64, u64)>,
    /// The id of the last connection opened.
    last_id: u64,
}

impl Conns {
    fn insert(&mut self, conn: Conn) -> u64 {
        self.last_id += 1;
        let conn_id = self.last_id;
        if let Some(exp) = conn.principal.expires_at() {
            self.expiries.insert((exp, conn_id));
        }
        self.by_id.insert(conn_id, conn);
        conn_id
    }

    fn remove(&mut self, conn_id: u64) -> Option<Conn> {
        let conn = self.by_id.remove(&conn_id)?;
        if let Some(exp) = conn.principal.expires_at() {
            self.expiries.remove(&(exp, conn_id));
        }
        Some(conn)
    }

    pub(super) fn get(&self, conn_id: u64) -> Option<&Conn> {
        self.by_id.get(&conn_id)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Conn)> {
        self.by_id.iter().map(|(&id, conn)| (id, conn))
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Client connection `conn_id`: who it is, its requests (its request id → shard
    /// request key) and its limits.
    pub(super) fn client(
        &mut self,
        conn_id: u64,
    ) -> Option<(&Principal, &mut HashMap<u64, u64>, &mut ClientLimits)> {
        match self.by_id.get_mut(&conn_id) {
            Some(Conn {
                principal,
                peer: Peer::Client {
                    requests, limits, ..
                },
                ..
            }) => Some((principal, requests, limits)),
            _ => None,
        }
    }

    /// Whether client connection `conn_id` takes [`Frame::Answer`] (protocol 8 or later).
    pub(super) fn takes_answers(&self, conn_id: u64) -> bool {
        matches!(
            self.by_id.get(&conn_id),
            Some(Conn {
                peer: Peer::Client { answers: true, .. },
                ..
            })
        )
    }

    /// Client connection `conn_id`'s requests: its request id → shard request key.
    pub(super) fn client_requests(&mut self, conn_id: u64) -> Option<&mut HashMap<u64, u64>> {
        self.client(conn_id).map(|(_, requests, _)| requests)
    }

    /// Worker connection `conn_id`'s outbox and open dispatches.
    pub(super) fn worker(&mut self, conn_id: u64) -> Option<(&Rc<Outbox>, &mut HashSet<u64>)> {
        match self.by_id.get_mut(&conn_id) {
            Some(Conn {
                out,
                peer: Peer::Worker { inflight, .. },
                ..
            }) => Some((out, inflight)),
            _ => None,
        }
    }

    /// Takes out the connections whose credential expired by `now` (since the Unix epoch):
    /// only the earliest expiry is looked at until one is due.
    fn expired(&mut self, now: Duration) -> Vec<u64> {
        let mut expired = Vec::new();
        // `exp` is a whole second: the token is no longer valid from that second on.
        while let Some(&(exp, conn_id)) = self.expiries.first() {
            if Duration::from_secs(exp) > now {
                break;
            }
            self.expiries.pop_first();
            expired.push(conn_id);
        }
        expired
    }

    /// Frames waiting in the outboxes.
    pub(super) fn queued(&self) -> usize {
        self.by_id.values().map(|c| c.out.len()).sum()
    }
}

impl State {
    /// Registers a connection whose `Hello` (of protocol `version`) was accepted and queues
    /// its `Welcome`; a worker is reported online and announced to every shard. Returns the
    /// connection's id.
    pub(super) fn open_conn(
        &mut self,
        out: Rc<Outbox>,
        principal: Principal,
        role: Role,
        version: u16,
    ) -> u64 {
        let settings = &self.env.settings;
        let peer = match role {
            Role::Client => {
                // Frames to a client never wait: past this bound it is cut instead; past its
                // pause mark its requests' output is paused at their workers.
                let bound = settings.max_client_backlog;
                out.bound_bytes(bound);
                let pause_at = settings.client_pause_backlog.min(bound / 2).max(1);
                let marks = FlowMarks {
                    pause_at,
                    resume_at: pause_at / 4,
                };
                out.flow_control(marks, self.env.budget.clone());
                let bucket = settings.client_rate.as_ref();
                Peer::Client {
                    requests: HashMap::new(),
                    limits: ClientLimits {
                        bucket: bucket.map(|rate| Bucket::new(rate, Instant::now())),
                        ..Default::default()
                    },
                    answers: version >= proto::ANSWER_SINCE,
                }
            }
            Role::Worker => Peer::Worker {
                inflight: HashSet::new(),
                generation: super::workers::next_generation(),
            },
        };
        let conn_id = self.conns.insert(Conn {
            out: out.clone(),
            principal: principal.clone(),
            peer,
        });
        let welcome = Frame::Welcome {
            session: ((self.env.idx as u64) << DISPATCH_SHARD_SHIFT) | conn_id,
            heartbeat_ms: self.env.settings.heartbeat.as_millis() as u32,
            nodes: self.nodes.clone(),
        };
        self.unsettled.push_to(&out, &welcome);
        self.stats.connected(role).inc();
        if role == Role::Worker {
            let Principal { team, identity, .. } = &principal;
            info!(shard = self.env.idx, %identity, %team, "worker online");
            self.report_worker(conn_id, WorkerState::Online, Vec::new());
            self.worker_online(conn_id, &principal, Vec::new());
        }
        conn_id
    }

    /// Answers a frame that could not be decoded; the caller then closes the connection.
    pub(super) fn reject(&mut self, conn_id: u64, e: &ProtoError) {
        let (kind, message) = super::serve::proto_error_kind(e);
        crate::metrics::REJECTED
            .with_label_values(&[&crate::metrics::kind_label(kind)])
            .inc();
        warn!(shard = self.env.idx, conn_id, %message, "closing connection on bad frame");
        let error = Frame::Error {
            id: None,
            kind,
            message,
        };
        self.send_to_conn(conn_id, &error);
    }

    /// Forgets a closed connection: a client's waited requests are cancelled (fire-and-forget
    /// ones run on); a worker is reported offline and its open dispatches lost.
    pub(super) fn close_conn(&mut self, conn_id: u64) {
        let Some(conn) = self.conns.remove(conn_id) else {
            return;
        };
        match conn.peer {
            Peer::Client { requests, .. } => {
                self.stats.connected(Role::Client).dec();
                for (_, key) in requests {
                    if self.requests.get(key).is_some_and(|r| r.client.wait) {
                        self.with_request(key, |run, _, out| run.on_cancel(out));
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
                    shard_idx: self.env.idx,
                    conn_id,
                };
                let (shard, n_inflight) = (self.env.idx, inflight.len());
                // A superseded connection's identity is online still, on the newer one.
                if self.routing.registry.online_at(team, identity) == Some(at) {
                    info!(shard, %identity, %team, n_inflight, "worker offline");
                    let offline = WorkerState::Disconnected;
                    self.report_state(&conn.principal, generation, offline, Vec::new());
                } else {
                    info!(shard, %identity, %team, n_inflight, "superseded worker connection closed");
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
    pub(super) fn send_to_conn(&mut self, conn_id: u64, frame: &Frame) {
        let Some(conn) = self.conns.get(conn_id) else {
            return;
        };
        match self.unsettled.push_to(&conn.out, frame) {
            Pushed::Overflow => {
                let why = String::new();
                self.unsettled
                    .cut_later(conn_id, ErrorKind::SlowConsumer, why);
            }
            Pushed::OverBudget => {
                let why = format!(
                    "the client did not read its replies: {} bytes waited for it while the broker's buffers for all clients were past their bound of {} (--max-client-backlog-total), more than its share; its requests are ended",
                    conn.out.backlog_bytes(),
                    self.env.budget.limit()
                );
                self.unsettled
                    .cut_later(conn_id, ErrorKind::SlowConsumer, why);
            }
            Pushed::Pause => self.unsettled.to_pause.push(conn_id),
            Pushed::Room | Pushed::Full => {}
        }
    }

    /// Reports the state of worker connection `conn_id` (with what it announced).
    pub(super) fn report_worker(&self, conn_id: u64, state: WorkerState, services: Vec<String>) {
        if let Some(Conn {
            principal,
            peer: Peer::Worker { generation, .. },
            ..
        }) = self.conns.get(conn_id)
        {
            self.report_state(principal, *generation, state, services);
        }
    }

    fn report_state(
        &self,
        who: &Principal,
        generation: u64,
        state: WorkerState,
        services: Vec<String>,
    ) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.env.source.report(WorkerStateReport {
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
    pub(super) fn recheck_credentials(&mut self) {
        let source = &self.env.source;
        let refused: Vec<(u64, String)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| source.admits(&c.principal).err().map(|r| (id, r.message)))
            .collect();
        for (conn_id, why) in refused {
            self.unsettled.cut_later(conn_id, ErrorKind::Revoked, why);
        }
    }

    /// Closes every connection while the configuration is stale
    /// ([`crate::config::ConfigSource::stale`]).
    pub(super) fn close_if_stale(&mut self) {
        if self.conns.len() == 0 {
            return;
        }
        let Some(why) = self.env.source.stale() else {
            return;
        };
        let all: Vec<u64> = self.conns.iter().map(|(id, _)| id).collect();
        for conn_id in all {
            self.unsettled
                .cut_later(conn_id, ErrorKind::Stale, why.clone());
        }
    }

    /// Closes the connections whose token expired (each tick: the earliest expiry only is
    /// looked at, so this costs nothing until one is due).
    pub(super) fn expire_credentials(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        for conn_id in self.conns.expired(now) {
            let why = "the token expired; log in again".to_string();
            self.unsettled.cut_later(conn_id, ErrorKind::Revoked, why);
        }
    }

    /// Cuts the connections noted to be cut: each is sent a final `Error { id: None }` if it
    /// fits (its backlog is dropped) and closed; a client's waited requests are cancelled.
    pub(super) fn cut_connections(&mut self) {
        loop {
            let to_cut = std::mem::take(&mut self.unsettled.to_cut);
            if to_cut.is_empty() {
                return;
            }
            for (conn_id, kind, why) in to_cut {
                self.cut(conn_id, kind, why);
            }
        }
    }

    fn cut(&mut self, conn_id: u64, kind: ErrorKind, why: String) {
        let Some(conn) = self.conns.get(conn_id) else {
            return;
        };
        let (shard, out) = (self.env.idx, &conn.out);
        let Principal { team, identity, .. } = &conn.principal;
        let (message, reason) = match kind {
            ErrorKind::SlowConsumer if !why.is_empty() => {
                warn!(shard, conn_id, %identity, %team, backlog = out.backlog_bytes(), total = self.env.budget.bytes(), kind = ?kind, "slow consumer over its share of the clients' budget: closing the client's connection and ending its requests");
                (why, "slow_consumer")
            }
            ErrorKind::SlowConsumer => {
                let backlog = out.backlog_bytes();
                warn!(shard, conn_id, %identity, %team, backlog, kind = ?kind, "slow consumer: closing the client's connection and ending its requests");
                (
                    format!(
                        "the client did not read its replies: {backlog} bytes waited for it, past the broker's bound of {}; its requests are ended",
                        self.env.settings.max_client_backlog
                    ),
                    "slow_consumer",
                )
            }
            ErrorKind::Revoked => {
                warn!(shard, conn_id, %identity, %team, %why, "credential revoked: closing the connection");
                (why, "revoked")
            }
            _ => {
                warn!(shard, conn_id, %identity, %team, kind = ?kind, "a newer connection of this worker took over; closing the old one");
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
}
