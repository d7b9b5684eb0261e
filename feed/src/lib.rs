//! [`ControlSource`]: the broker's configuration and trust from the control plane, the
//! control-plane implementation of [`dataplane::ConfigSource`]. It lives outside `dataplane`
//! so that the glommio broker does not link tokio, reqwest or a JWT library.
//!
//! A thread of its own (tokio, current-thread) keeps a compiled copy of the control plane's
//! `BrokerSnapshot`: it fetches one at start, then follows the SSE stream of configuration
//! events and fetches a new snapshot after each, bumping the revision shards watch. On a
//! broken stream it backs off, refetches (events may have been missed) and resubscribes.
//! Worker state changes go back in batches; while the control plane is away only the latest
//! state per worker is kept, so memory stays bounded by the number of workers.
//!
//! Shards only read: an atomic revision per tick, and the compiled snapshot under a
//! `RwLock` at handshakes and reloads, never per request.
//!
//! A node of a cell (`--advertise`) also heartbeats ([`heartbeat_loop`]): under a UUID
//! chosen at start it `PUT`s a `NodeHeartbeat` at start and every fifth of the lease the
//! answer gives, learns the cell's live nodes from the answer (shards watch their revision
//! as they do the configuration's), and `DELETE`s itself when the broker drains
//! ([`ControlSource::leave`]). Its reports name the node.

pub mod jobs;

use dataplane::config::{
    ConfigSource, Principal, Proof, Refusal, RoutingConfig, ServiceConfig, WorkerGrant,
    DEFAULT_SERVICE_TIMEOUT,
};
use dataplane::triggers::unix_ms_now;
use eventsource_stream::Eventsource;
use futures_lite::StreamExt;
use proto::control::{
    BrokerReport, BrokerSnapshot, Claims, NodeHeartbeat, NodeList, WorkerState, WorkerStateReport,
};
use proto::{Credential, ErrorKind};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// How long `start` waits for the first snapshot (the control plane may still be starting).
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(15);
/// Longest pause between attempts to reach the control plane.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A node's heartbeat period until the control plane has said its lease.
const FIRST_HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// Bounds of a node's heartbeat period (a fifth of the lease the control plane gives).
const HEARTBEAT_EVERY_MIN: Duration = Duration::from_millis(100);
const HEARTBEAT_EVERY_MAX: Duration = Duration::from_secs(60);
/// How long a draining node waits for the control plane to forget it.
pub const LEAVE_WAIT: Duration = Duration::from_secs(2);

/// Why the feed could not start.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// No snapshot arrived in time.
    #[error("no configuration from the control plane at {url} within {waited:?}: {last_error}")]
    NoSnapshot {
        /// The control plane URL.
        url: String,
        /// How long we tried.
        waited: Duration,
        /// The last failure.
        last_error: String,
    },
    /// The feed thread could not start.
    #[error("cannot start the control feed: {0}")]
    Start(#[from] std::io::Error),
}

/// Where the control plane is and how the broker proves itself to it.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// Base URL, e.g. `http://127.0.0.1:8080`; several, comma-separated, for control-plane
    /// replicas: the feed fails over to the next when one cannot be reached or answers 5xx.
    pub url: String,
    /// The broker token from the control plane's data dir.
    pub broker_token: String,
    /// Whether finished requests are recorded as jobs (`ConfigSource::records_jobs`); off
    /// only to measure what recording costs (`triggerfs broker --no-job-records`).
    pub record_jobs: bool,
    /// Fail closed: with no answer from a control plane (a snapshot, an event or a
    /// keep-alive) for longer than this, refuse new connections and close the open ones
    /// ([`ErrorKind::Stale`]) until one answers again. `None`: serve on the last snapshot.
    pub max_staleness: Option<Duration>,
    /// A node of a cell: the address peers connect to it at (`host:port` or
    /// `tls://host:port`, `--advertise`). `None`: a broker outside a cell.
    pub advertise: Option<String>,
}

struct Compiled {
    revision: u64,
    routing: Arc<RoutingConfig>,
    jwt_key: jsonwebtoken::DecodingKey,
    teams: HashSet<String>,
    /// (team, user identity) → the user's id: whose JWTs are accepted for which team.
    members: HashMap<(String, String), (i64, i64)>,
    /// (team, identity) → token digest.
    worker_tokens: HashMap<(String, String), String>,
}

struct Inner {
    revision: AtomicU64,
    compiled: RwLock<Arc<Compiled>>,
    reports: mpsc::UnboundedSender<ReportMsg>,
    /// Job-history records on their way to the control plane ([`jobs`]).
    jobs: jobs::JobQueue,
    /// [`FeedSettings::record_jobs`].
    record_jobs: bool,
    /// [`FeedSettings::max_staleness`], and when a control plane last answered (ms since the
    /// Unix epoch).
    max_staleness: Option<Duration>,
    last_contact_ms: AtomicU64,
    /// This broker as a node of a cell, with `--advertise`.
    cell: Option<Cell>,
}

/// A node of a cell: who it is, and the live nodes the control plane last listed.
struct Cell {
    /// A UUID chosen at start.
    node: String,
    advertise: String,
    started_unix_ms: u64,
    /// Every live node's address, as peers connect to it.
    nodes: RwLock<Vec<String>>,
    /// Bumped whenever `nodes` changes.
    nodes_revision: AtomicU64,
    /// Tells the heartbeat task to leave the cell; it answers once it did (or gave up).
    leave: Mutex<Option<oneshot::Sender<Done>>>,
    /// The heartbeat task's end of `leave`, until it starts.
    told: Mutex<Option<oneshot::Receiver<Done>>>,
}

/// Where the heartbeat task says it has left the cell.
type Done = std::sync::mpsc::Sender<()>;

impl Cell {
    fn new(advertise: String) -> Cell {
        let (leave, told) = oneshot::channel();
        Cell {
            node: uuid::Uuid::new_v4().to_string(),
            advertise,
            started_unix_ms: unix_ms_now(),
            nodes: RwLock::new(Vec::new()),
            nodes_revision: AtomicU64::new(0),
            leave: Mutex::new(Some(leave)),
            told: Mutex::new(Some(told)),
        }
    }

    /// The live nodes now; the revision moves only when they changed.
    fn set_nodes(&self, list: NodeList) {
        let nodes: Vec<String> = list.nodes.into_iter().map(|n| n.advertise).collect();
        let mut known = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if *known != nodes {
            info!(?nodes, "the cell's nodes");
            *known = nodes;
            self.nodes_revision.fetch_add(1, Ordering::Release);
        }
    }
}

impl Inner {
    /// The node id reports carry, for a node of a cell.
    fn node(&self) -> Option<String> {
        self.cell.as_ref().map(|c| c.node.clone())
    }

    /// A control plane answered now.
    fn touch(&self) {
        self.last_contact_ms.store(unix_ms_now(), Ordering::Relaxed);
    }
}

/// Configuration and trust from the control plane; see the module docs.
#[derive(Clone)]
pub struct ControlSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ControlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSource")
            .field("revision", &self.inner.revision.load(Ordering::Relaxed))
            .finish()
    }
}

fn compile(snapshot: BrokerSnapshot) -> Result<Compiled, String> {
    let secret =
        hex::decode(&snapshot.jwt_secret_hex).map_err(|e| format!("jwt_secret_hex: {e}"))?;
    let mut services = BTreeMap::new();
    for s in snapshot.services {
        let timeout = if s.timeout_ms == 0 {
            DEFAULT_SERVICE_TIMEOUT
        } else {
            Duration::from_millis(s.timeout_ms)
        };
        services.insert(
            (s.team.clone(), s.name.clone()),
            ServiceConfig {
                team: s.team,
                name: s.name,
                owner: Some(s.owner),
                visibility: s.visibility,
                algorithm: s.algorithm,
                workers: s.workers,
                timeout,
                batch: s.batch.map(|b| b.max(1) as usize),
                stop_on_failure: s.stop_on_failure,
                retry: s.retry,
                history: s.history,
                open_to_announcers: false,
            },
        );
    }
    let mut workers = BTreeMap::new();
    let mut worker_tokens = HashMap::new();
    for w in snapshot.workers {
        let key = (w.team, w.identity);
        workers.insert(
            key.clone(),
            WorkerGrant {
                owner: w.owner,
                visibility: w.visibility,
            },
        );
        worker_tokens.insert(key, w.token_sha256);
    }
    Ok(Compiled {
        revision: snapshot.revision,
        routing: Arc::new(RoutingConfig { services, workers }),
        jwt_key: jsonwebtoken::DecodingKey::from_secret(&secret),
        teams: snapshot.teams.into_iter().collect(),
        members: snapshot
            .members
            .into_iter()
            .map(|m| ((m.team, m.identity), (m.uid, m.sgen)))
            .collect(),
        worker_tokens,
    })
}

struct Http {
    client: reqwest::Client,
    settings: FeedSettings,
    /// The base URLs of [`FeedSettings::url`], and the one in use (an index that only grows).
    urls: Vec<String>,
    at: AtomicUsize,
}

impl Http {
    /// A client of its own for `settings`' control plane.
    fn new(settings: &FeedSettings) -> std::io::Result<Http> {
        Ok(Http {
            client: tls::http_client()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| std::io::Error::other(e.to_string()))?,
            settings: settings.clone(),
            urls: settings
                .url
                .split(',')
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            at: AtomicUsize::new(0),
        })
    }

    /// The base URL in use.
    fn base(&self) -> &str {
        let at = self.at.load(Ordering::Relaxed);
        self.urls
            .get(at % self.urls.len().max(1))
            .map_or(self.settings.url.as_str(), String::as_str)
    }

    /// After a failure: the next base URL, when there are several.
    fn fail_over(&self, why: &str) {
        if self.urls.len() > 1 {
            let from = self.base().to_string();
            self.at.fetch_add(1, Ordering::Relaxed);
            warn!(%from, to = %self.base(), error = %why, "control plane unreachable; failing over");
        }
    }

    async fn snapshot(&self) -> Result<BrokerSnapshot, String> {
        let url = format!("{}/api/v1/broker/snapshot", self.base());
        let resp = self
            .client
            .get(&url)
            .bearer_auth(&self.settings.broker_token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// Follows the event stream; calls `changed` once subscribed and per config event.
    /// `Ok` when an established stream ended, `Err` when it could not be established.
    /// `alive` is called for every chunk read (events and keep-alives alike).
    async fn follow(&self, changed: &mut impl FnMut(), alive: &impl Fn()) -> Result<(), String> {
        let url = format!("{}/api/v1/events", self.base());
        let resp = self
            .client
            .get(&url)
            .bearer_auth(&self.settings.broker_token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        // Subscribed: anything that changed between our last snapshot and now is fetched.
        changed();
        alive();
        let chunks = resp.bytes_stream().inspect(|_| alive());
        let mut events = std::pin::pin!(chunks.eventsource());
        // A transport or parse error ends the stream like a close does.
        while let Some(Ok(event)) = events.next().await {
            // `config`: something changed; `lagged`: we fell behind and missed some.
            if event.event == "config" || event.event == "lagged" {
                changed();
            }
        }
        Ok(())
    }

    async fn post_jobs(&self, batch: &proto::job::JobBatch) -> jobs::Delivery {
        let url = format!("{}/api/v1/broker/jobs", self.base());
        // zstd-compressed here, on the idle-priority `job-history` thread: the control
        // plane's HTTP threads, at normal priority, then read a few KB a job instead of the
        // ~140 KB of JSON a 1,000-worker job is (it is decompressed on its `job-store`
        // thread, also idle).
        let body = match jobs::compressed_json(batch) {
            Ok(body) => body,
            Err(e) => return jobs::Delivery::Refused(e),
        };
        let sent = self
            .client
            .post(&url)
            .bearer_auth(&self.settings.broker_token)
            .timeout(Duration::from_secs(30))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, "zstd")
            .body(body)
            .send()
            .await;
        match sent {
            Err(e) => jobs::Delivery::Retry(e.to_string()),
            Ok(resp) if resp.status().is_success() => jobs::Delivery::Done,
            Ok(resp) => {
                let status = resp.status();
                let why = format!("{url} answered {status}");
                if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                    jobs::Delivery::Retry(why)
                } else {
                    jobs::Delivery::Refused(why)
                }
            }
        }
    }

    /// `PUT /api/v1/broker/nodes/{node}`: this node is alive; the cell's live nodes, and
    /// whether the node is new to the cell (`201`: its first heartbeat, or the first since its
    /// lease ran out, its links to workers gone with it).
    async fn heartbeat(
        &self,
        node: &str,
        beat: &NodeHeartbeat,
    ) -> Result<(bool, NodeList), Unanswered> {
        let url = format!("{}/api/v1/broker/nodes/{node}", self.base());
        let resp = self
            .client
            .put(&url)
            .bearer_auth(&self.settings.broker_token)
            .timeout(Duration::from_secs(5))
            .json(beat)
            .send()
            .await
            .map_err(|e| Unanswered::Unreachable(e.to_string()))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(Unanswered::Unreachable(format!("{url} answered {status}")));
        }
        if !status.is_success() {
            return Err(Unanswered::Refused(format!("{url} answered {status}")));
        }
        let created = status == reqwest::StatusCode::CREATED;
        let list = resp.json().await;
        list.map(|list| (created, list))
            .map_err(|e| Unanswered::Refused(format!("{url}: {e}")))
    }

    /// `DELETE /api/v1/broker/nodes/{node}`: this node leaves the cell.
    async fn leave(&self, node: &str) -> Result<(), String> {
        let url = format!("{}/api/v1/broker/nodes/{node}", self.base());
        let request = self.client.delete(&url).timeout(LEAVE_WAIT);
        self.succeeds(request, &url).await
    }

    async fn report(&self, report: &BrokerReport) -> Result<(), String> {
        let url = format!("{}/api/v1/broker/report", self.base());
        self.succeeds(self.client.post(&url).json(report), &url)
            .await
    }

    /// Sends `request` (to `url`) with the broker token: whether it was answered with success.
    async fn succeeds(&self, request: reqwest::RequestBuilder, url: &str) -> Result<(), String> {
        let resp = request
            .bearer_auth(&self.settings.broker_token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered {}", resp.status()))
        }
    }
}

/// Why a heartbeat got no node list.
#[derive(Debug)]
enum Unanswered {
    /// No answer, or a 5xx: another control plane may answer.
    Unreachable(String),
    /// The control plane answered, and not with a node list (e.g. one that predates cells).
    Refused(String),
}

impl ControlSource {
    /// A source over one fixed snapshot, with no control plane behind it and no feed thread:
    /// for tests and fuzzing the trust checks. Reports (worker states) go nowhere.
    pub fn offline(snapshot: BrokerSnapshot) -> Result<ControlSource, String> {
        let compiled = Arc::new(compile(snapshot)?);
        let (reports, _) = mpsc::unbounded_channel();
        Ok(ControlSource {
            inner: Arc::new(Inner {
                revision: AtomicU64::new(compiled.revision),
                compiled: RwLock::new(compiled),
                reports,
                jobs: jobs::queue().0,
                record_jobs: true,
                max_staleness: None,
                last_contact_ms: AtomicU64::new(unix_ms_now()),
                cell: None,
            }),
        })
    }

    /// Starts the feed thread and waits for the first snapshot.
    pub fn start(settings: FeedSettings) -> Result<ControlSource, FeedError> {
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let (job_queue, job_drain) = jobs::queue();
        let (first_tx, first_rx) = std::sync::mpsc::channel::<Result<Arc<Compiled>, String>>();
        let http = Arc::new(Http::new(&settings)?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (inner_tx, inner_rx) = std::sync::mpsc::channel::<Arc<Inner>>();
        std::thread::Builder::new()
            .name("control-feed".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // First snapshot, retried until the caller gives up.
                    let mut backoff = Duration::from_millis(100);
                    let compiled = loop {
                        match http.snapshot().await.and_then(compile) {
                            Ok(c) => break Arc::new(c),
                            Err(e) => {
                                if first_tx.send(Err(e)).is_err() {
                                    return;
                                }
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            }
                        }
                    };
                    if first_tx.send(Ok(compiled)).is_err() {
                        return;
                    }
                    let Ok(inner) = inner_rx.recv() else { return };
                    tokio::spawn(report_loop(http.clone(), report_rx, inner.node()));
                    if let Some(limit) = inner.max_staleness {
                        tokio::spawn(probe_loop(http.clone(), inner.clone(), limit));
                    }
                    if inner.cell.is_some() {
                        tokio::spawn(heartbeat_loop(http.clone(), inner.clone()));
                    }
                    follow_loop(http, inner).await;
                })
            })?;
        // Job records go on a thread of their own, below the shards' priority, with a client
        // of their own (a pooled connection belongs to the runtime that made it).
        let poster = Arc::new(Http::new(&settings)?);
        jobs::spawn_delivery(job_drain, move |batch| {
            let http = poster.clone();
            async move { http.post_jobs(&batch).await }
        })?;
        let deadline = std::time::Instant::now() + FIRST_SNAPSHOT_WAIT;
        let mut last_error = String::from("no answer");
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match first_rx.recv_timeout(left) {
                Ok(Ok(compiled)) => {
                    let inner = Arc::new(Inner {
                        revision: AtomicU64::new(compiled.revision),
                        compiled: RwLock::new(compiled),
                        reports: report_tx,
                        jobs: job_queue,
                        record_jobs: settings.record_jobs,
                        max_staleness: settings.max_staleness,
                        last_contact_ms: AtomicU64::new(unix_ms_now()),
                        cell: settings.advertise.clone().map(Cell::new),
                    });
                    let _ = inner_tx.send(inner.clone());
                    info!(url = %settings.url, revision = inner.revision.load(Ordering::Relaxed), "configuration from the control plane");
                    return Ok(ControlSource { inner });
                }
                Ok(Err(e)) => last_error = e,
                Err(_) => {
                    return Err(FeedError::NoSnapshot {
                        url: settings.url,
                        waited: FIRST_SNAPSHOT_WAIT,
                        last_error,
                    })
                }
            }
        }
    }

    /// This node's id in its cell (with `--advertise`).
    pub fn node(&self) -> Option<String> {
        self.inner.node()
    }

    /// A draining node leaves its cell: heartbeats stop and the control plane is asked to
    /// forget it, so that peers stop being sent to it. Best effort, within [`LEAVE_WAIT`]
    /// (and a little more); nothing for a broker outside a cell. Blocks.
    pub fn leave(&self) {
        let Some(cell) = &self.inner.cell else { return };
        let Some(tell) = cell.leave.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if tell.send(done_tx).is_ok() {
            let _ = done_rx.recv_timeout(LEAVE_WAIT + Duration::from_millis(500));
        }
    }

    fn compiled(&self) -> Arc<Compiled> {
        self.inner
            .compiled
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn install(inner: &Inner, compiled: Compiled) {
    let revision = compiled.revision;
    *inner.compiled.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(compiled);
    inner.revision.store(revision, Ordering::Release);
    inner.touch();
    debug!(revision, "new configuration installed");
}

async fn follow_loop(http: Arc<Http>, inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // (Re)fetch first: events may have been missed while the stream was down.
        match http.snapshot().await.and_then(compile) {
            Ok(c) => {
                install(&inner, c);
                // Reached the control plane (again): it may hold states from before.
                let _ = inner.reports.send(ReportMsg::Resync);
            }
            Err(e) => {
                warn!(error = %e, "cannot fetch configuration; keeping the last one");
                http.fail_over(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        let (changed_tx, mut changed_rx) = mpsc::unbounded_channel::<()>();
        let fetcher = {
            let http = http.clone();
            let inner = inner.clone();
            tokio::spawn(async move {
                while changed_rx.recv().await.is_some() {
                    // Coalesce a burst of events into one fetch.
                    while changed_rx.try_recv().is_ok() {}
                    match http.snapshot().await.and_then(compile) {
                        Ok(c) => install(&inner, c),
                        Err(e) => warn!(error = %e, "cannot fetch configuration after a change"),
                    }
                }
            })
        };
        let mut on_change = || {
            let _ = changed_tx.send(());
        };
        match http.follow(&mut on_change, &|| inner.touch()).await {
            Ok(()) => {
                warn!("configuration event stream ended; reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                warn!(error = %e, "cannot follow configuration events; retrying");
                http.fail_over(&e);
            }
        }
        drop(changed_tx);
        let _ = fetcher.await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What shards and the follower tell the report task.
enum ReportMsg {
    /// A worker's state changed.
    State(WorkerStateReport),
    /// The broker (re)connected to the control plane: tell it every worker online, so that
    /// states it holds from before (a crash, a lost connection) are corrected.
    Resync,
}

/// With `--max-staleness`: asks the control plane every quarter of `limit` (at most every
/// 5 s), with an empty report, whether it is there, so that a quiet configuration (no event
/// between the stream's 15 s keep-alives) never reads as a silent control plane.
async fn probe_loop(http: Arc<Http>, inner: Arc<Inner>, limit: Duration) {
    let every = (limit / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let empty = BrokerReport {
        workers: Vec::new(),
        full: false,
        node: inner.node(),
    };
    loop {
        tokio::time::sleep(every).await;
        if http.report(&empty).await.is_ok() {
            inner.touch();
        }
    }
}

/// A node of a cell: heartbeats at start and every fifth of the lease (see the module
/// docs), each answer a contact for `--max-staleness`; leaves the cell when told.
async fn heartbeat_loop(http: Arc<Http>, inner: Arc<Inner>) {
    let Some(cell) = &inner.cell else { return };
    let Some(mut leave_rx) = cell.told.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let mut every = FIRST_HEARTBEAT_EVERY;
    // Said once at warn, then at debug, until a heartbeat is answered again.
    let mut failing = false;
    loop {
        let (clients, workers) = dataplane::metrics::connections();
        let beat = NodeHeartbeat {
            advertise: cell.advertise.clone(),
            started_unix_ms: cell.started_unix_ms,
            clients,
            workers,
        };
        let beating = http.heartbeat(&cell.node, &beat);
        let answer = tokio::select! {
            answer = beating => answer,
            done = &mut leave_rx => return leave(&http, &cell.node, done.ok()).await,
        };
        match answer {
            Ok((created, list)) => {
                inner.touch();
                if created {
                    // New to the cell: the control plane knows none of the workers here.
                    let _ = inner.reports.send(ReportMsg::Resync);
                }
                if failing {
                    info!(node = %cell.node, "heartbeats answered again");
                    failing = false;
                }
                every = Duration::from_millis(list.lease_ms / 5)
                    .clamp(HEARTBEAT_EVERY_MIN, HEARTBEAT_EVERY_MAX);
                cell.set_nodes(list);
            }
            Err(why) => {
                let why = match why {
                    Unanswered::Unreachable(why) => {
                        http.fail_over(&why);
                        why
                    }
                    Unanswered::Refused(why) => why,
                };
                if failing {
                    debug!(node = %cell.node, error = %why, "heartbeat not answered");
                } else {
                    warn!(node = %cell.node, error = %why, "heartbeat not answered; the cell's nodes stay as they were");
                    failing = true;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            done = &mut leave_rx => return leave(&http, &cell.node, done.ok()).await,
        }
    }
}

/// Asks the control plane to forget `node` (within [`LEAVE_WAIT`]), then says so to `done`.
async fn leave(http: &Http, node: &str, done: Option<Done>) {
    match tokio::time::timeout(LEAVE_WAIT, http.leave(node)).await {
        Ok(Ok(())) => info!(%node, "left the cell"),
        Ok(Err(e)) => warn!(%node, error = %e, "could not leave the cell; its lease will run out"),
        Err(_) => warn!(%node, "no answer when leaving the cell; its lease will run out"),
    }
    if let Some(done) = done {
        let _ = done.send(());
    }
}

async fn report_loop(
    http: Arc<Http>,
    mut rx: mpsc::UnboundedReceiver<ReportMsg>,
    node: Option<String>,
) {
    // The last state of every identity this broker has seen (bounded by the workers the
    // configuration admits): a report about an older connection never overrides a newer one,
    // whatever order the shards' reports arrive in.
    let mut known: HashMap<(String, String), WorkerStateReport> = HashMap::new();
    // Latest state per worker that the control plane has not acknowledged yet.
    let mut pending: Reports = BTreeMap::new();
    let mut full = false;
    loop {
        if pending.is_empty() && !full {
            match rx.recv().await {
                Some(msg) => take(msg, &mut known, &mut pending, &mut full),
                None => return,
            }
        }
        while let Ok(msg) = rx.try_recv() {
            take(msg, &mut known, &mut pending, &mut full);
        }
        let report = if full {
            let mut workers: Vec<WorkerStateReport> = pending_online(&known);
            workers.sort_by_key(|r| r.at_unix_ms);
            BrokerReport {
                workers,
                full: true,
                node: node.clone(),
            }
        } else {
            let mut workers: Vec<WorkerStateReport> = pending.values().cloned().collect();
            workers.sort_by_key(|r| r.at_unix_ms);
            BrokerReport {
                workers,
                full: false,
                node: node.clone(),
            }
        };
        match http.report(&report).await {
            Ok(()) => {
                pending.clear();
                full = false;
            }
            Err(e) => {
                warn!(error = %e, n = report.workers.len(), full, "cannot report worker states; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

type Reports = BTreeMap<(String, String), WorkerStateReport>;

/// Notes one message for the report task (see [`report_loop`]).
fn take(
    msg: ReportMsg,
    known: &mut HashMap<(String, String), WorkerStateReport>,
    pending: &mut Reports,
    full: &mut bool,
) {
    match msg {
        ReportMsg::Resync => *full = true,
        ReportMsg::State(r) => {
            let key = (r.team.clone(), r.identity.clone());
            if known.get(&key).is_none_or(|k| r.supersedes(k)) {
                known.insert(key.clone(), r.clone());
                pending.insert(key, r);
            } else {
                debug!(team = %r.team, identity = %r.identity, generation = r.generation, "stale worker state report dropped");
            }
        }
    }
}

/// Every worker whose last known state is `ONLINE`.
fn pending_online(known: &HashMap<(String, String), WorkerStateReport>) -> Vec<WorkerStateReport> {
    known
        .values()
        .filter(|r| r.state == WorkerState::Online)
        .cloned()
        .collect()
}

impl ConfigSource for ControlSource {
    fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    fn routing(&self) -> Arc<RoutingConfig> {
        self.compiled().routing.clone()
    }

    fn stale(&self) -> Option<String> {
        let limit = self.inner.max_staleness?;
        let last = self.inner.last_contact_ms.load(Ordering::Relaxed);
        let silent = Duration::from_millis(unix_ms_now().saturating_sub(last));
        (silent > limit).then(|| {
            format!(
                "this broker has not reached its control plane for {}s (more than --max-staleness {}s): it serves no one until it does",
                silent.as_secs(),
                limit.as_secs()
            )
        })
    }

    fn authenticate(&self, credential: &Credential) -> Result<Principal, Refusal> {
        if let Some(message) = self.stale() {
            return Err(Refusal {
                kind: ErrorKind::Stale,
                message,
            });
        }
        let compiled = self.compiled();
        let refuse = |message: String| Refusal {
            kind: ErrorKind::Unauthorized,
            message,
        };
        match credential {
            Credential::Jwt { token } => {
                let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
                // No grace past `exp`: the API allows none either.
                validation.leeway = 0;
                let claims = jsonwebtoken::decode::<Claims>(token, &compiled.jwt_key, &validation)
                    .map_err(|e| match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                            refuse("the token has expired; log in again".into())
                        }
                        _ => refuse(format!("the token is not valid for this broker ({e})")),
                    })?
                    .claims;
                // jsonwebtoken still accepts a token during its `exp` second.
                if claims.expired_at(std::time::SystemTime::now()) {
                    return Err(refuse("the token has expired; log in again".into()));
                }
                if !compiled.teams.contains(&claims.team) {
                    return Err(refuse(format!("team {} does not exist", claims.team)));
                }
                let principal = Principal {
                    team: claims.team,
                    identity: claims.sub,
                    proof: Proof::User {
                        uid: claims.uid,
                        sgen: claims.sgen,
                        expires_at: claims.exp,
                    },
                };
                compiled.admits(&principal).map_err(|r| refuse(r.message))?;
                Ok(principal)
            }
            Credential::Worker {
                team,
                identity,
                token,
            } => {
                let presented = proto::control::token_digest(token);
                // Both are SHA-256 hex digests of one length; `ct_eq` takes the same time
                // wherever they differ.
                let known = compiled
                    .worker_tokens
                    .get(&(team.clone(), identity.clone()))
                    .is_some_and(|digest| digest.as_bytes().ct_eq(presented.as_bytes()).into());
                if known {
                    let key = (team.clone(), identity.clone());
                    compiled.owner_is_member(&key).map_err(refuse)?;
                    Ok(Principal {
                        team: team.clone(),
                        identity: identity.clone(),
                        proof: Proof::Worker {
                            token_sha256: presented,
                        },
                    })
                } else {
                    Err(refuse(format!(
                        "unknown worker {team}/{identity} or wrong token"
                    )))
                }
            }
        }
    }

    fn admits(&self, principal: &Principal) -> Result<(), Refusal> {
        self.compiled().admits(principal)
    }

    fn report(&self, report: WorkerStateReport) {
        // Unbounded, but drained into a map bounded by the number of workers.
        let _ = self.inner.reports.send(ReportMsg::State(report));
    }

    fn records_jobs(&self) -> bool {
        self.inner.record_jobs
    }

    fn nodes_revision(&self) -> u64 {
        self.inner
            .cell
            .as_ref()
            .map_or(0, |c| c.nodes_revision.load(Ordering::Acquire))
    }

    fn nodes(&self) -> Vec<String> {
        self.inner.cell.as_ref().map_or_else(Vec::new, |c| {
            c.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
        })
    }

    fn job(&self, trace: Box<dataplane::jobs::JobTrace>) {
        self.inner.jobs.push(trace);
    }

    fn trigger_minutes(&self, shard: usize, minutes: Vec<proto::job::TriggerMinute>) {
        self.inner.jobs.push_minutes(shard, minutes);
    }
}

impl Compiled {
    /// A worker serves only while its owner is a member of its team: a removed member's
    /// workers stop until an admin gives them a new owner (or deletes them).
    fn owner_is_member(&self, worker: &(String, String)) -> Result<(), String> {
        let Some(grant) = self.routing.workers.get(worker) else {
            return Ok(());
        };
        let (team, identity) = worker;
        if self
            .members
            .contains_key(&(team.clone(), grant.owner.clone()))
        {
            return Ok(());
        }
        Err(format!(
            "the owner {} of worker {team}/{identity} is no longer a member of team {team}; \
             an admin of the team may give the worker a new owner (PATCH /api/v1/workers/{identity} \
             with `owner`) or delete it",
            grant.owner
        ))
    }

    /// Whether `principal` still holds under this snapshot (see [`ConfigSource::admits`]).
    fn admits(&self, principal: &Principal) -> Result<(), Refusal> {
        let key = (principal.team.clone(), principal.identity.clone());
        let refuse = |message: String| {
            Err(Refusal {
                kind: ErrorKind::Revoked,
                message,
            })
        };
        match &principal.proof {
            Proof::Trusted => Ok(()),
            Proof::User { uid, sgen, .. } => match self.members.get(&key) {
                Some((known, known_sgen)) if known == uid && known_sgen == sgen => Ok(()),
                Some((known, _)) if known == uid => refuse(format!(
                    "the secret of {} has changed since the token was issued; log in again",
                    principal.identity
                )),
                Some(_) => refuse(format!(
                    "the token was issued to an earlier user named {}; log in again",
                    principal.identity
                )),
                None => refuse(format!(
                    "{} is not a member of team {}",
                    principal.identity, principal.team
                )),
            },
            Proof::Worker { token_sha256 } => match self.worker_tokens.get(&key) {
                Some(digest) if bool::from(digest.as_bytes().ct_eq(token_sha256.as_bytes())) => {
                    self.owner_is_member(&key).or_else(refuse)
                }
                Some(_) => refuse(format!(
                    "the token of worker {}/{} was regenerated; restart the worker with the new one",
                    principal.team, principal.identity
                )),
                None => refuse(format!(
                    "worker {}/{} was deleted",
                    principal.team, principal.identity
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::control::{MemberEntry, ServiceEntry, Visibility, WorkerEntry};

    fn snapshot() -> BrokerSnapshot {
        BrokerSnapshot {
            revision: 7,
            jwt_secret_hex: "00ff10".into(),
            teams: vec!["a".into()],
            members: vec![MemberEntry {
                team: "a".into(),
                identity: "alice".into(),
                uid: 7,
                sgen: 0,
            }],
            workers: vec![WorkerEntry {
                team: "a".into(),
                identity: "w1".into(),
                token_sha256: proto::control::token_digest("tok"),
                owner: "alice".into(),
                visibility: Visibility::Local,
            }],
            services: vec![ServiceEntry {
                team: "a".into(),
                name: "s".into(),
                owner: "alice".into(),
                algorithm: proto::Algorithm::Mirror,
                workers: vec!["w1".into()],
                timeout_ms: 0,
                visibility: Visibility::Public,
                batch: Some(0),
                stop_on_failure: false,
                retry: false,
                history: Default::default(),
            }],
        }
    }

    #[test]
    fn compiles_a_snapshot() {
        let c = compile(snapshot()).unwrap();
        let s = &c.routing.services[&("a".to_string(), "s".to_string())];
        assert_eq!(s.timeout, DEFAULT_SERVICE_TIMEOUT);
        assert_eq!(s.batch, Some(1));
        assert_eq!(s.owner.as_deref(), Some("alice"));
        let mut bad = snapshot();
        bad.jwt_secret_hex = "xyz".into();
        assert!(compile(bad).is_err());
    }

    /// A source over `compile(snapshot())`, without a feed thread.
    fn source() -> ControlSource {
        ControlSource::offline(snapshot()).unwrap()
    }

    fn worker(team: &str, identity: &str, token: &str) -> Credential {
        Credential::Worker {
            team: team.into(),
            identity: identity.into(),
            token: token.into(),
        }
    }

    #[test]
    fn worker_tokens_are_checked_against_their_digest() {
        let source = source();
        let principal = source.authenticate(&worker("a", "w1", "tok")).unwrap();
        assert_eq!(
            (principal.team.as_str(), principal.identity.as_str()),
            ("a", "w1")
        );
        for refused in [
            worker("a", "w1", "tol"),
            worker("a", "w1", ""),
            worker("a", "w2", "tok"),
            worker("b", "w1", "tok"),
        ] {
            let refusal = source.authenticate(&refused).unwrap_err();
            assert_eq!(refusal.kind, ErrorKind::Unauthorized);
        }
    }

    /// An hour from now, in seconds since the Unix epoch: a JWT `exp` still ahead.
    fn in_an_hour() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    }

    fn jwt(secret: &[u8], team: &str, exp: u64) -> Credential {
        jwt_for(secret, "alice", 7, team, exp)
    }

    fn jwt_for(secret: &[u8], sub: &str, uid: i64, team: &str, exp: u64) -> Credential {
        let claims = Claims {
            sub: sub.into(),
            uid,
            sgen: 0,
            team: team.into(),
            role: proto::control::TeamRole::Member,
            iat: 0,
            exp,
        };
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap();
        Credential::Jwt { token }
    }

    #[test]
    fn jwts_are_checked_with_the_snapshot_key_and_teams() {
        let source = source();
        let later = in_an_hour();
        let key = [0x00, 0xff, 0x10];
        let principal = source.authenticate(&jwt(&key, "a", later)).unwrap();
        assert_eq!(
            (principal.team.as_str(), principal.identity.as_str()),
            ("a", "alice")
        );
        let expired = source.authenticate(&jwt(&key, "a", 1)).unwrap_err();
        assert!(expired.message.contains("expired"), "{}", expired.message);
        let no_team = source.authenticate(&jwt(&key, "b", later)).unwrap_err();
        assert!(no_team.message.contains("team b"), "{}", no_team.message);
        let other_key = source.authenticate(&jwt(b"other", "a", later)).unwrap_err();
        assert_eq!(other_key.kind, ErrorKind::Unauthorized);
        // Validly signed, but for a user who is not a member, or an earlier user of the name.
        let stranger = source
            .authenticate(&jwt_for(&key, "mallory", 7, "a", later))
            .unwrap_err();
        assert!(
            stranger.message.contains("not a member"),
            "{}",
            stranger.message
        );
        let earlier = source
            .authenticate(&jwt_for(&key, "alice", 3, "a", later))
            .unwrap_err();
        assert!(
            earlier.message.contains("earlier user"),
            "{}",
            earlier.message
        );
        // No grace past `exp`.
        let now = later - 3600;
        let just_expired = source.authenticate(&jwt(&key, "a", now - 1)).unwrap_err();
        assert!(
            just_expired.message.contains("expired"),
            "{}",
            just_expired.message
        );
    }

    /// Connections admitted under one snapshot are refused under a later one that removed
    /// the member, deleted the worker or regenerated its token.
    #[test]
    fn admitted_principals_are_revoked_by_a_new_snapshot() {
        let source = source();
        let later = in_an_hour();
        let user = source
            .authenticate(&jwt(&[0x00, 0xff, 0x10], "a", later))
            .unwrap();
        let worker = source.authenticate(&worker("a", "w1", "tok")).unwrap();
        assert!(source.admits(&user).is_ok() && source.admits(&worker).is_ok());
        assert_eq!(user.expires_at(), Some(later));

        let mut next = snapshot();
        next.revision = 8;
        // The user changed their secret: tokens of the earlier generation are refused.
        next.members[0].sgen = 1;
        install(&source.inner, compile(next.clone()).unwrap());
        let refused = source.admits(&user).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Revoked);
        assert!(refused.message.contains("secret"), "{}", refused.message);
        let stale = source
            .authenticate(&jwt(&[0x00, 0xff, 0x10], "a", later))
            .unwrap_err();
        assert!(stale.message.contains("secret"), "{}", stale.message);
        next.members.clear();
        next.workers[0].token_sha256 = proto::control::token_digest("new");
        install(&source.inner, compile(next.clone()).unwrap());
        let refused = source.admits(&user).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Revoked);
        let refused = source.admits(&worker).unwrap_err();
        assert!(
            refused.message.contains("regenerated"),
            "{}",
            refused.message
        );
        next.workers.clear();
        install(&source.inner, compile(next).unwrap());
        let refused = source.admits(&worker).unwrap_err();
        assert!(refused.message.contains("deleted"), "{}", refused.message);
        // A trusted principal (no control plane) is never revoked.
        assert!(source.admits(&Principal::trusted("a", "x")).is_ok());
    }

    /// Issue 25, finding 4: a worker serves only while its owner is a member of its team.
    #[test]
    fn a_removed_members_workers_are_refused() {
        let source = source();
        let w1 = worker("a", "w1", "tok");
        let worker = source.authenticate(&w1).unwrap();
        let mut next = snapshot();
        next.revision = 8;
        next.members.clear();
        install(&source.inner, compile(next.clone()).unwrap());
        let refused = source.admits(&worker).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Revoked);
        assert!(
            refused
                .message
                .contains("owner alice of worker a/w1 is no longer a member"),
            "{}",
            refused.message
        );
        let again = source.authenticate(&w1).unwrap_err();
        assert_eq!(again.kind, ErrorKind::Unauthorized);
        assert!(
            again.message.contains("no longer a member"),
            "{}",
            again.message
        );
        // A new owner who is a member brings it back.
        next.members = snapshot().members;
        install(&source.inner, compile(next).unwrap());
        assert!(source.admits(&worker).is_ok());
    }

    #[test]
    fn worker_grants_reach_routing() {
        let c = compile(snapshot()).unwrap();
        let grant = &c.routing.workers[&("a".to_string(), "w1".to_string())];
        assert_eq!(
            (grant.owner.as_str(), grant.visibility),
            ("alice", Visibility::Local)
        );
        let s = &c.routing.services[&("a".to_string(), "s".to_string())];
        assert!(!s.open_to_announcers);
    }

    fn state(identity: &str, generation: u64, state: WorkerState) -> ReportMsg {
        ReportMsg::State(WorkerStateReport {
            team: "a".into(),
            identity: identity.into(),
            state,
            at_unix_ms: 0,
            generation,
            services: vec![],
        })
    }

    /// A DISCONNECTED about an older connection that arrives after a newer connection's
    /// ONLINE (two shards report in either order) does not override it.
    #[test]
    fn reports_about_older_connections_are_dropped() {
        let (mut known, mut pending, mut full) = (HashMap::new(), BTreeMap::new(), false);
        let key = ("a".to_string(), "w1".to_string());
        take(
            state("w1", 4, WorkerState::Online),
            &mut known,
            &mut pending,
            &mut full,
        );
        take(
            state("w1", 5, WorkerState::Online),
            &mut known,
            &mut pending,
            &mut full,
        );
        take(
            state("w1", 4, WorkerState::Disconnected),
            &mut known,
            &mut pending,
            &mut full,
        );
        assert_eq!(pending[&key].state, WorkerState::Online);
        assert_eq!(pending[&key].generation, 5);
        take(
            state("w1", 5, WorkerState::Disconnected),
            &mut known,
            &mut pending,
            &mut full,
        );
        assert_eq!(pending[&key].state, WorkerState::Disconnected);
        // A resync lists the workers online.
        take(
            state("w2", 6, WorkerState::Online),
            &mut known,
            &mut pending,
            &mut full,
        );
        take(ReportMsg::Resync, &mut known, &mut pending, &mut full);
        assert!(full);
        let online: Vec<String> = pending_online(&known)
            .into_iter()
            .map(|r| r.identity)
            .collect();
        assert_eq!(online, ["w2"]);
    }

    /// Serves one HTTP response with `body` as an event stream (or `status`), then closes.
    async fn serve_once(status: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            // Split mid-event, as a network may.
            let (first, second) = body.split_at(body.len() / 2);
            socket.write_all(first.as_bytes()).await.unwrap();
            socket.flush().await.unwrap();
            socket.write_all(second.as_bytes()).await.unwrap();
        });
        url
    }

    fn http(url: String) -> Http {
        Http::new(&FeedSettings {
            url,
            broker_token: "bt".into(),
            record_jobs: true,
            max_staleness: None,
            advertise: None,
        })
        .unwrap()
    }

    #[test]
    fn the_feed_fails_over_between_comma_separated_urls() {
        let http = http("http://a:1, http://b:2/".into());
        assert_eq!(http.base(), "http://a:1");
        http.fail_over("down");
        assert_eq!(http.base(), "http://b:2");
        http.fail_over("down");
        assert_eq!(http.base(), "http://a:1");
        let one = super::tests::http("http://c:3".into());
        one.fail_over("down");
        assert_eq!(one.base(), "http://c:3");
    }

    #[tokio::test]
    async fn follow_reports_subscription_config_and_lagged_events() {
        let body = ": keep-alive\n\n\
                    event: config\ndata: {\"team\":\"a\"}\n\n\
                    event: other\ndata: x\n\n\
                    event: lagged\r\ndata: 3\r\n\r\n\
                    event: config\ndata: {}\n\n";
        let url = serve_once("200 OK", body).await;
        let mut n = 0;
        http(url).follow(&mut || n += 1, &|| ()).await.unwrap();
        // Once when subscribed, then two `config` and one `lagged`.
        assert_eq!(n, 4);
    }

    #[tokio::test]
    async fn follow_fails_when_the_stream_is_refused() {
        let url = serve_once("401 Unauthorized", "").await;
        let mut n = 0;
        let err = http(url).follow(&mut || n += 1, &|| ()).await.unwrap_err();
        assert!(err.contains("401"), "{err}");
        assert_eq!(n, 0);
    }

    /// What the fake control plane of [`fake_plane`] was sent.
    #[derive(Default)]
    struct Seen {
        beats: Vec<(String, NodeHeartbeat)>,
        left: Vec<String>,
        reports: Vec<BrokerReport>,
    }

    /// A control plane answering the feed: a snapshot, an event stream that never says
    /// anything, heartbeats (a `NodeList` of two nodes and `lease_ms`; `201` for a node's
    /// first), `DELETE`s, and reports with `report_status`.
    async fn fake_plane(
        lease_ms: u64,
        report_status: u16,
    ) -> (String, Arc<std::sync::Mutex<Seen>>) {
        use axum::extract::{Path, State};
        use axum::http::StatusCode;
        use axum::routing::{get, post, put};
        use axum::Json;
        type Shared = Arc<std::sync::Mutex<Seen>>;
        let seen: Shared = Arc::default();
        let app = axum::Router::new()
            .route(
                "/api/v1/broker/snapshot",
                get(|| async { Json(snapshot()) }),
            )
            .route(
                "/api/v1/events",
                get(|| async {
                    let silent = futures_lite::stream::pending::<
                        Result<axum::body::Bytes, std::io::Error>,
                    >();
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
                        axum::body::Body::from_stream(silent),
                    )
                }),
            )
            .route(
                "/api/v1/broker/nodes/{node}",
                put(
                    move |State(seen): State<Shared>,
                          Path(node): Path<String>,
                          Json(beat): Json<NodeHeartbeat>| async move {
                        let me = beat.advertise.clone();
                        let mut seen = seen.lock().unwrap();
                        // New to the cell: 201.
                        let status = match seen.beats.iter().any(|(n, _)| *n == node) {
                            true => StatusCode::OK,
                            false => StatusCode::CREATED,
                        };
                        seen.beats.push((node.clone(), beat));
                        (
                            status,
                            Json(NodeList {
                                nodes: vec![
                                    proto::control::NodeEntry {
                                        node: "other".into(),
                                        advertise: "10.0.0.9:5555".into(),
                                    },
                                    proto::control::NodeEntry {
                                        node,
                                        advertise: me,
                                    },
                                ],
                                lease_ms,
                            }),
                        )
                    },
                )
                .delete(
                    |State(seen): State<Shared>, Path(node): Path<String>| async move {
                        seen.lock().unwrap().left.push(node);
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .route(
                "/api/v1/broker/report",
                post(
                    move |State(seen): State<Shared>, Json(report): Json<BrokerReport>| async move {
                        seen.lock().unwrap().reports.push(report);
                        StatusCode::from_u16(report_status).unwrap()
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }

    /// Starts a node advertised as `127.0.0.1:7001` on `url` (off the runtime's threads:
    /// `start` blocks).
    async fn start_node(url: String, max_staleness: Option<Duration>) -> ControlSource {
        tokio::task::spawn_blocking(move || {
            ControlSource::start(FeedSettings {
                url,
                broker_token: "bt".into(),
                record_jobs: false,
                max_staleness,
                advertise: Some("127.0.0.1:7001".into()),
            })
        })
        .await
        .unwrap()
        .unwrap()
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A node heartbeats under its id every fifth of the lease, learns the cell's nodes,
    /// names itself in its reports, and leaves the cell when told to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_heartbeats_learns_the_nodes_and_leaves() {
        let (url, seen) = fake_plane(500, 200).await;
        let source = start_node(url, Some(Duration::from_secs(1))).await;
        let node = source.node().expect("a node id");
        assert_eq!(uuid::Uuid::parse_str(&node).unwrap().get_version_num(), 4);
        eventually("the nodes", || source.nodes_revision() > 0).await;
        assert_eq!(source.nodes(), ["10.0.0.9:5555", "127.0.0.1:7001"]);
        let revision = source.nodes_revision();
        // Every 100 ms (a fifth of 500): many heartbeats within a second, all of this node.
        tokio::time::sleep(Duration::from_secs(1)).await;
        {
            let seen = seen.lock().unwrap();
            assert!(seen.beats.len() >= 5, "{} heartbeats", seen.beats.len());
            for (id, beat) in &seen.beats {
                assert_eq!(
                    (id.as_str(), beat.advertise.as_str()),
                    (node.as_str(), "127.0.0.1:7001")
                );
                assert!(beat.started_unix_ms > 0);
            }
            // The probe's reports (--max-staleness) carry the node; the first heartbeat (201,
            // new to the cell) was followed by a full report.
            assert!(seen.reports.iter().any(|r| r.full), "no full report");
            assert!(seen
                .reports
                .iter()
                .all(|r| r.node.as_deref() == Some(node.as_str())));
        }
        // The same list does not move the revision.
        assert_eq!(source.nodes_revision(), revision);
        let leaving = source.clone();
        tokio::task::spawn_blocking(move || leaving.leave())
            .await
            .unwrap();
        let beats = {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.left, [node.as_str()]);
            seen.beats.len()
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            seen.lock().unwrap().beats.len(),
            beats,
            "heartbeats after leaving"
        );
        // Leaving twice does nothing more.
        tokio::task::spawn_blocking(move || source.leave())
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().left.len(), 1);
    }

    /// An answered heartbeat is contact with the control plane: with a silent event stream
    /// and reports refused, the broker does not turn stale while heartbeats are answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answered_heartbeats_keep_a_node_fresh() {
        let (url, _seen) = fake_plane(500, 503).await;
        let source = start_node(url, Some(Duration::from_millis(600))).await;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(source.stale(), None);
        }
    }
}
