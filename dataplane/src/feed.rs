//! [`ControlSource`]: the broker's configuration and trust from the control plane.
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

use crate::config::{
    ConfigSource, Principal, Refusal, RoutingConfig, ServiceConfig, DEFAULT_SERVICE_TIMEOUT,
};
use proto::control::{BrokerReport, BrokerSnapshot, Claims, WorkerStateReport};
use proto::{Credential, ErrorKind};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// How long `start` waits for the first snapshot (the control plane may still be starting).
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(15);
/// Longest pause between attempts to reach the control plane.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The broker token from the control plane's data dir.
    pub broker_token: String,
}

struct Compiled {
    revision: u64,
    routing: Arc<RoutingConfig>,
    jwt_key: jsonwebtoken::DecodingKey,
    teams: HashSet<String>,
    /// (team, identity) → token digest.
    worker_tokens: HashMap<(String, String), String>,
}

struct Inner {
    revision: AtomicU64,
    compiled: RwLock<Arc<Compiled>>,
    reports: mpsc::UnboundedSender<WorkerStateReport>,
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
            },
        );
    }
    Ok(Compiled {
        revision: snapshot.revision,
        routing: Arc::new(RoutingConfig { services }),
        jwt_key: jsonwebtoken::DecodingKey::from_secret(&secret),
        teams: snapshot.teams.into_iter().collect(),
        worker_tokens: snapshot
            .workers
            .into_iter()
            .map(|w| ((w.team, w.identity), w.token_sha256))
            .collect(),
    })
}

/// Compares two strings in time independent of where they differ.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

struct Http {
    client: reqwest::Client,
    settings: FeedSettings,
}

impl Http {
    async fn snapshot(&self) -> Result<BrokerSnapshot, String> {
        let url = format!("{}/api/v1/broker/snapshot", self.settings.url);
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
    async fn follow(&self, changed: &mut impl FnMut()) -> Result<(), String> {
        let url = format!("{}/api/v1/events", self.settings.url);
        let mut resp = self
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
        let mut buf = String::new();
        let mut event = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(nl) = buf.find('\n') {
                let line = buf[..nl].trim_end_matches('\r').to_string();
                buf.drain(..=nl);
                if line.is_empty() {
                    // `config`: something changed; `lagged`: we fell behind and missed some.
                    if event == "config" || event == "lagged" {
                        changed();
                    }
                    event.clear();
                } else if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_string();
                }
            }
        }
        Ok(())
    }

    async fn report(&self, report: &BrokerReport) -> Result<(), String> {
        let url = format!("{}/api/v1/broker/report", self.settings.url);
        let resp = self
            .client
            .post(&url)
            .bearer_auth(&self.settings.broker_token)
            .json(report)
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

impl ControlSource {
    /// Starts the feed thread and waits for the first snapshot.
    pub fn start(settings: FeedSettings) -> Result<ControlSource, FeedError> {
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let (first_tx, first_rx) = std::sync::mpsc::channel::<Result<Arc<Compiled>, String>>();
        let http = Arc::new(Http {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| std::io::Error::other(e.to_string()))?,
            settings: settings.clone(),
        });
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
                    tokio::spawn(report_loop(http.clone(), report_rx));
                    follow_loop(http, inner).await;
                })
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
    debug!(revision, "new configuration installed");
}

async fn follow_loop(http: Arc<Http>, inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // (Re)fetch first: events may have been missed while the stream was down.
        match http.snapshot().await.and_then(compile) {
            Ok(c) => install(&inner, c),
            Err(e) => {
                warn!(error = %e, "cannot fetch configuration; keeping the last one");
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
        match http.follow(&mut on_change).await {
            Ok(()) => {
                warn!("configuration event stream ended; reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(e) => warn!(error = %e, "cannot follow configuration events; retrying"),
        }
        drop(changed_tx);
        let _ = fetcher.await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn report_loop(http: Arc<Http>, mut rx: mpsc::UnboundedReceiver<WorkerStateReport>) {
    // Latest state per worker that the control plane has not acknowledged yet.
    let mut pending: BTreeMap<(String, String), WorkerStateReport> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => {
                    pending.insert((r.team.clone(), r.identity.clone()), r);
                }
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.insert((r.team.clone(), r.identity.clone()), r);
        }
        let mut workers: Vec<WorkerStateReport> = pending.values().cloned().collect();
        workers.sort_by_key(|r| r.at_unix_ms);
        match http.report(&BrokerReport { workers }).await {
            Ok(()) => pending.clear(),
            Err(e) => {
                warn!(error = %e, n = pending.len(), "cannot report worker states; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl ConfigSource for ControlSource {
    fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    fn routing(&self) -> Arc<RoutingConfig> {
        self.compiled().routing.clone()
    }

    fn authenticate(&self, credential: &Credential) -> Result<Principal, Refusal> {
        let compiled = self.compiled();
        let refuse = |message: String| Refusal {
            kind: ErrorKind::Unauthorized,
            message,
        };
        match credential {
            Credential::Jwt { token } => {
                let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
                validation.leeway = 5;
                let claims = jsonwebtoken::decode::<Claims>(token, &compiled.jwt_key, &validation)
                    .map_err(|e| match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                            refuse("the token has expired; log in again".into())
                        }
                        _ => refuse(format!("the token is not valid for this broker ({e})")),
                    })?
                    .claims;
                if !compiled.teams.contains(&claims.team) {
                    return Err(refuse(format!("team {} does not exist", claims.team)));
                }
                Ok(Principal {
                    team: claims.team,
                    identity: claims.sub,
                })
            }
            Credential::Worker {
                team,
                identity,
                token,
            } => {
                let expected = compiled
                    .worker_tokens
                    .get(&(team.clone(), identity.clone()));
                let presented = proto::control::token_digest(token);
                match expected {
                    Some(digest) if constant_time_eq(digest, &presented) => Ok(Principal {
                        team: team.clone(),
                        identity: identity.clone(),
                    }),
                    _ => Err(refuse(format!(
                        "unknown worker {team}/{identity} or wrong token"
                    ))),
                }
            }
        }
    }

    fn report(&self, report: WorkerStateReport) {
        // Unbounded, but drained into a map bounded by the number of workers.
        let _ = self.inner.reports.send(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::control::{ServiceEntry, Visibility, WorkerEntry};

    fn snapshot() -> BrokerSnapshot {
        BrokerSnapshot {
            revision: 7,
            jwt_secret_hex: "00ff10".into(),
            teams: vec!["a".into()],
            workers: vec![WorkerEntry {
                team: "a".into(),
                identity: "w1".into(),
                token_sha256: proto::control::token_digest("tok"),
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

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
