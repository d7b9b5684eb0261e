//! The triggerFS control plane: a JSON API under `/api/v1` over an SQLite file (default) or
//! PostgreSQL, with login (JWT), teams, users, workers, services, directories, triggers and
//! quotas; the broker's feed (snapshot, report, event stream); an HTTP gateway into the
//! broker; an OpenAPI document and Prometheus metrics.
//!
//! It is not the broker: it never routes a request itself (the gateway is a `client` of the
//! broker like any other). It is the only crate that talks to the database.
//!
//! Layout: [`db`] (pools, migrations, the `on_db!` macro), `change` (the one way a handler
//! changes configuration: revision, SQL, commit, typed event), `checks` (the rules a request
//! passes), `stored` (reading stored text back into types), `settings`, `state` (what the
//! handlers share), [`credentials`] (JWT keys, argon2, the login guard), [`auth`] (who is
//! calling: extractors), [`error`] (the error enum and its JSON), `json` (the checks and the
//! parse of a body), [`extract`] (JSON-rejecting extractors), `routes/` (the router, and one
//! module of handlers per object, taking and answering the `api` crate's types), `streams`
//! (event streams open), [`metrics`], [`openapi`] (the document's frame), and `web` (the
//! browser's view at `/`, over the same handlers).

pub mod auth;
mod change;
mod checks;
mod conns;
pub mod credentials;
pub mod db;
pub mod error;
pub mod extract;
mod guesses;
mod job_store;
mod json;
pub mod metrics;
mod once;
pub mod openapi;
mod replicas;
mod routes;
mod scheduler;
mod settings;
mod state;
mod stored;
mod streams;
mod timetable;
mod web;

pub use error::{ApiError, ControlError};
pub use routes::ROUTES;
pub use settings::{
    default_max_connections, ControlSettings, LoginLimits, DEFAULT_JOB_RETENTION,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, DEFAULT_MAX_UNAUTHENTICATED, DEFAULT_NODE_LEASE,
    HTTP_BODY_MIN_RATE, JOB_PRUNE_EVERY,
};
pub use web::WEB_ROUTES;

use axum::response::IntoResponse;
use credentials::{JwtKeys, LoginGuard};
use db::{on_db, Db};
use extract::closing;
use futures::TryFutureExt;
use proto::control::{Action, Object};
use proto::TextEnum;
use rand::RngCore;
use state::{AppState, Shared};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast;

/// The first team's admin, created by [`ControlPlane::bootstrap`] on an empty store.
#[derive(Debug, Clone)]
pub struct FirstAdmin {
    /// Team name (`main`).
    pub team: String,
    /// Identity (`admin`).
    pub identity: String,
    /// The secret, shown only this once.
    pub secret: String,
    /// Where the credentials were also written (`<data_dir>/admin.credentials`, 0600).
    pub path: PathBuf,
}

/// The control plane: cheap to clone, one store and key set behind it.
#[derive(Clone)]
pub struct ControlPlane {
    shared: AppState,
}

/// Events buffered per subscriber; a subscriber further behind is told to re-sync.
const EVENT_BUFFER: usize = 1024;

impl ControlPlane {
    /// Connects, runs the migrations, and loads (or generates) the JWT key and broker token.
    pub async fn open(settings: ControlSettings) -> Result<ControlPlane, ControlError> {
        create_private_dir(&settings.data_dir)?;
        let db = Db::open(&settings.data_dir, settings.database_url.as_deref()).await?;
        let key_path = settings.data_dir.join("jwt.key");
        let key_hex = shared_file_secret(&db, "jwt.key", &key_path).await?;
        let key = hex::decode(key_hex.trim())
            .ok()
            .filter(|k| k.len() >= 32)
            .ok_or_else(|| ControlError::BadFile {
                path: key_path.display().to_string(),
                reason: "expected at least 32 bytes of hex".into(),
            })?;
        let token_path = settings.data_dir.join("broker.token");
        let broker_token = shared_file_secret(&db, "broker.token", &token_path).await?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let settings_limits = settings.login_limits;
        let jobs = job_store::JobStore::start().map_err(|source| ControlError::Io {
            what: "cannot start the job-store thread",
            path: settings.data_dir.display().to_string(),
            source,
        })?;
        Ok(ControlPlane {
            shared: Arc::new(Shared {
                db,
                settings,
                jwt: JwtKeys::new(&key),
                broker_token,
                events,
                replica: random_hex(8),
                metrics: Arc::new(metrics::Metrics::new()),
                openapi_json: OnceLock::new(),
                guard: LoginGuard::new(settings_limits),
                streams: streams::Streams::default(),
                jobs,
                runs: Default::default(),
                live: Default::default(),
            }),
        })
    }

    /// On a store without teams: creates team `main` (the install's team, which is never
    /// deleted nor left by an operator) and user `admin` (admin, operator; an
    /// existing `admin` user gets a new secret) with a random secret, writes
    /// `<data_dir>/admin.credentials` (0600) and returns the credentials. `None` when a team
    /// already exists.
    pub async fn bootstrap(&self) -> Result<Option<FirstAdmin>, ControlError> {
        let s = &self.shared;
        let n_teams: i64 = on_db!(&s.db, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM teams").fetch_one(pool).await?
        });
        if n_teams > 0 {
            return Ok(None);
        }
        let (team, identity, secret) = ("main".to_string(), "admin".to_string(), random_hex(16));
        let hash = credentials::hash_secret(&s.guard, secret.clone())
            .await
            .map_err(|e| ControlError::Hash(e.to_string()))?;
        let now = db::now_ms();
        change::change!(s, Object::Team, Action::Created, team, team, tx => {
            let team_id: i64 = sqlx::query_scalar(
                "INSERT INTO teams (name, install, created, updated) VALUES ($1, TRUE, $2, $2) \
                 RETURNING id")
                .bind(&team).bind(now).fetch_one(&mut *tx).await?;
            // A user `admin` left from a store whose teams were all deleted gets a new
            // secret rather than failing the start on the unique identity.
            let user_id: i64 = sqlx::query_scalar(
                "INSERT INTO users (identity, secret_hash, operator, max_teams, created) \
                 VALUES ($1, $2, TRUE, NULL, $3) ON CONFLICT (identity) DO UPDATE \
                 SET secret_hash = excluded.secret_hash, operator = TRUE, max_teams = NULL \
                 RETURNING id")
                .bind(&identity).bind(&hash).bind(now).fetch_one(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO members (team_id, user_id, role, created) VALUES ($1, $2, $3, $4)")
                .bind(team_id).bind(user_id).bind(api::Role::Admin.as_str()).bind(now)
                .execute(&mut *tx).await?;
        });
        let path = s.data_dir().join("admin.credentials");
        let text =
            format!("[main]\nteam = {team:?}\nidentity = {identity:?}\nsecret = {secret:?}\n");
        write_private(&path, &text)?;
        Ok(Some(FirstAdmin {
            team,
            identity,
            secret,
            path,
        }))
    }

    /// The secret the broker presents to `/api/v1/broker/*` and `/api/v1/events`.
    pub fn broker_token(&self) -> &str {
        &self.shared.broker_token
    }

    /// Deletes the jobs older than the retention now; returns how many. [`ControlPlane::serve`]
    /// does this every [`JOB_PRUNE_EVERY`].
    pub async fn prune_jobs(&self) -> Result<u64, ControlError> {
        let s = &self.shared;
        Ok(routes::prune_jobs(&s.db, s.settings.job_retention).await?)
    }

    /// The whole HTTP surface: `/api/v1/...`, `/metrics`, JSON fallbacks.
    pub fn router(&self) -> axum::Router {
        routes::router(self.shared.clone())
    }

    /// Serves [`ControlPlane::router`] on `listener` until `shutdown` completes: HTTP/1.1 (over
    /// TLS with `settings.tls`), each connection closed when it takes longer than
    /// `http_timeout` to send a request's headers (idle connections included); connections
    /// and requests without credentials admitted as the `conns` module says.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlError> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "control plane listening");
        }
        let settings = &self.shared.settings;
        let conns = conns::Conns::new(
            settings.max_connections,
            settings.max_connections_per_address,
            settings.max_unauthenticated,
        );
        use futures::future::Either;
        use tower::ServiceExt;
        let router = self.router();
        let shared = self.shared.clone();
        let pruner = self.spawn_pruner();
        let sweeper = self.spawn_sweeper();
        let others =
            replicas::spawn_listener(&shared.db, shared.replica.clone(), shared.events.clone());
        let scheduler = scheduler::spawn(self.shared.clone());
        let tls = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // Always accept: at the limit `Conns::admit` closes the connection idle longest
            // (so a caller with a request gets in however many idle sockets others hold).
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most likely: let connections finish.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let ticket = match conns.admit(peer.ip()) {
                Ok(ticket) => ticket,
                Err(refusal) => {
                    tracing::debug!(%peer, ?refusal, "HTTP connection refused");
                    if tls.is_none() {
                        // Best effort: a fresh socket's send buffer takes it at once.
                        let _ = stream.try_write(&refusal.response());
                    }
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let service = {
                let (router, conns, shared) = (router.clone(), conns.clone(), shared.clone());
                let ticket = ticket.clone();
                hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let busy = ticket.busy();
                    match shared.anonymous_slot(&conns, req.headers()) {
                        Err(busy) => {
                            let refused = closing(busy.into_response());
                            Either::Left(std::future::ready(Ok(refused)))
                        }
                        Ok(anonymous) => {
                            Either::Right(router.clone().oneshot(req).map_ok(move |response| {
                                hold_until_sent(response, (busy, anonymous))
                            }))
                        }
                    }
                })
            };
            let timeout = settings.http_timeout;
            spawn_connection(
                stream,
                tls.clone(),
                service,
                ticket,
                peer,
                timeout,
                &graceful,
            );
        }
        drop(listener);
        pruner.abort();
        sweeper.abort();
        others.inspect(tokio::task::JoinHandle::abort);
        scheduler.abort();
        // Event streams never end on their own: give the others a bounded time.
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::info!("closing the HTTP connections still open");
        }
        Ok(())
    }

    /// Deletes the jobs past their retention every [`JOB_PRUNE_EVERY`] (one replica a
    /// round), until aborted.
    fn spawn_pruner(&self) -> tokio::task::JoinHandle<()> {
        let cp = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(JOB_PRUNE_EVERY);
            loop {
                every.tick().await;
                let round = once::once(&cp.shared.db, once::Work::PruneJobs, cp.prune_jobs());
                match round
                    .await
                    .map_err(ControlError::from)
                    .and_then(|r| r.transpose())
                {
                    Ok(None | Some(0)) => {}
                    Ok(Some(n)) => tracing::info!(deleted = n, "jobs past their retention deleted"),
                    Err(e) => tracing::warn!(error = %e, "cannot delete old jobs"),
                }
            }
        })
    }
}

impl ControlPlane {
    /// Removes the broker nodes whose lease ran out now (their workers linked by no other
    /// live node become `DISCONNECTED`); returns how many. [`ControlPlane::serve`] does this
    /// every fifth of the lease.
    pub async fn sweep_nodes(&self) -> Result<u64, ControlError> {
        let s = &self.shared;
        Ok(routes::nodes::sweep(&s.db, s.settings.node_lease).await?)
    }

    /// Every fifth of the node lease (at least every 100 ms): sweeps the broker nodes whose
    /// lease ran out (one replica a round), and sets this replica's gauges of workers by
    /// nodes reached; until aborted.
    fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let cp = self.clone();
        tokio::spawn(async move {
            let lease = cp.shared.settings.node_lease;
            let every = (lease / 5).max(Duration::from_millis(100));
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let round = once::once(&cp.shared.db, once::Work::SweepNodes, cp.sweep_nodes());
                match round
                    .await
                    .map_err(ControlError::from)
                    .and_then(|r| r.transpose())
                {
                    Ok(None | Some(0)) => {}
                    Ok(Some(n)) => {
                        tracing::info!(swept = n, "broker nodes whose lease ran out removed")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot sweep the broker nodes"),
                }
                match routes::nodes::reach(&cp.shared.db, lease).await {
                    Ok((reached, live)) => cp.shared.metrics.set_reach(&reached, live),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot count the workers by nodes reached")
                    }
                }
            }
        })
    }
}

/// Serves one admitted connection in a task of its own: plain HTTP, or with `tls` HTTPS, whose
/// handshake runs in that task within the header timeout (a peer that never finishes it
/// holds a slot no longer).
fn spawn_connection<S>(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    ticket: conns::Ticket,
    peer: std::net::SocketAddr,
    timeout: Duration,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .clone();
    let Some(acceptor) = tls else {
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(run_connection(conn, ticket, peer, "HTTP"));
        return;
    };
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
        let stream = match tokio::select! {
            done = handshake => done,
            () = ticket.evicted() => return,
        } {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
        };
        let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
        run_connection(conn, ticket, peer, "HTTPS").await;
    });
}

/// How long a shutdown waits for open requests to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `conn` until it ends, or until it is closed to make room for a newcomer (it was
/// idle); then its place is freed.
async fn run_connection<E: std::fmt::Display>(
    conn: impl Future<Output = Result<(), E>>,
    ticket: conns::Ticket,
    peer: std::net::SocketAddr,
    what: &'static str,
) {
    tokio::select! {
        ended = conn => if let Err(e) = ended {
            tracing::debug!(error = %e, %peer, "{what} connection ended");
        },
        () = ticket.evicted() => {
            tracing::debug!(%peer, "idle {what} connection closed to make room");
        }
    }
}

/// `response` holding `hold` until its body has been sent (or dropped).
fn hold_until_sent<T: Send + 'static>(
    response: axum::response::Response,
    hold: T,
) -> axum::response::Response {
    use http_body_util::BodyExt;
    response.map(|body| {
        axum::body::Body::new(body.map_frame(move |frame| {
            let _ = &hold;
            frame
        }))
    })
}

/// Creates `dir` (and its parents) if missing and makes it private to its owner (0700).
pub fn create_private_dir(dir: &Path) -> Result<(), ControlError> {
    let io = |what, source| ControlError::Io {
        what,
        path: dir.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("cannot create data dir", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("cannot make private", e))
}

/// `n` random bytes as hex.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Secret `name` (hex) of the data dir's file `path` (made when missing), or on PostgreSQL the
/// one every replica shares, written to `path` when it differs (a broker on this host reads
/// the broker token there).
async fn shared_file_secret(db: &Db, name: &str, path: &Path) -> Result<String, ControlError> {
    let local = load_or_create_secret(path, || random_hex(32))?;
    let shared = replicas::shared_secret(db, name, local.clone()).await?;
    if shared != local {
        tracing::info!(file = %path.display(), "the replicas' shared {name} replaces this data dir's");
        write_private(path, &format!("{shared}\n"))?;
    }
    Ok(shared)
}

/// Reads a secret file, or creates it (0600) with `make()` when missing.
fn load_or_create_secret(
    path: &Path,
    make: impl FnOnce() -> String,
) -> Result<String, ControlError> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(ControlError::BadFile {
            path: path.display().to_string(),
            reason: "empty".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = make();
            write_private(path, &format!("{secret}\n"))?;
            Ok(secret)
        }
        Err(source) => Err(ControlError::Io {
            what: "cannot read",
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Writes a file only its owner may read (0600).
pub fn write_private(path: &Path, text: &str) -> Result<(), ControlError> {
    let io = |source| ControlError::Io {
        what: "cannot write",
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    Ok(())
}
