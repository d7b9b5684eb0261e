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

use dataplane::config::{
    ConfigSource, Principal, Refusal, RoutingConfig, ServiceConfig, DEFAULT_SERVICE_TIMEOUT,
};
use eventsource_stream::Eventsource;
use futures_lite::StreamExt;
use proto::control::{BrokerReport, BrokerSnapshot, Claims, WorkerStateReport};
use proto::{Credential, ErrorKind};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;
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
        let mut events = std::pin::pin!(resp.bytes_stream().eventsource());
        // A transport or parse error ends the stream like a close does.
        while let Some(Ok(event)) = events.next().await {
            // `config`: something changed; `lagged`: we fell behind and missed some.
            if event.event == "config" || event.event == "lagged" {
                changed();
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
                let presented = proto::control::token_digest(token);
                // Both are SHA-256 hex digests of one length; `ct_eq` takes the same time
                // wherever they differ.
                let known = compiled
                    .worker_tokens
                    .get(&(team.clone(), identity.clone()))
                    .is_some_and(|digest| digest.as_bytes().ct_eq(presented.as_bytes()).into());
                if known {
                    Ok(Principal {
                        team: team.clone(),
                        identity: identity.clone(),
                    })
                } else {
                    Err(refuse(format!(
                        "unknown worker {team}/{identity} or wrong token"
                    )))
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

    /// A source over `compile(snapshot())`, without a feed thread.
    fn source() -> ControlSource {
        let compiled = Arc::new(compile(snapshot()).unwrap());
        let (reports, _) = mpsc::unbounded_channel();
        ControlSource {
            inner: Arc::new(Inner {
                revision: AtomicU64::new(compiled.revision),
                compiled: RwLock::new(compiled),
                reports,
            }),
        }
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

    fn jwt(secret: &[u8], team: &str, exp: u64) -> Credential {
        let claims = Claims {
            sub: "alice".into(),
            team: team.into(),
            role: "member".into(),
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
        let later = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
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
        Http {
            client: reqwest::Client::new(),
            settings: FeedSettings {
                url,
                broker_token: "bt".into(),
            },
        }
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
        http(url).follow(&mut || n += 1).await.unwrap();
        // Once when subscribed, then two `config` and one `lagged`.
        assert_eq!(n, 4);
    }

    #[tokio::test]
    async fn follow_fails_when_the_stream_is_refused() {
        let url = serve_once("401 Unauthorized", "").await;
        let mut n = 0;
        let err = http(url).follow(&mut || n += 1).await.unwrap_err();
        assert!(err.contains("401"), "{err}");
        assert_eq!(n, 0);
    }
}
