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
//! passes), `stored` (reading stored text back into types), [`auth`] (JWT, argon2,
//! extractors), [`error`] (the error enum and its JSON), [`extract`] (JSON-rejecting
//! extractors), `routes/` (the router, and one module of handlers per object, taking and
//! answering the `api` crate's types), [`metrics`], and [`openapi`] (the document's frame).

pub mod auth;
mod change;
mod checks;
mod conns;
pub mod db;
pub mod error;
pub mod extract;
mod job_store;
pub mod metrics;
pub mod openapi;
mod routes;
mod stored;

pub use error::{ApiError, ControlError};
pub use routes::ROUTES;

use auth::JwtKeys;
use axum::response::IntoResponse;
use db::{on_db, Db};
use futures::TryFutureExt;
use proto::control::{Action, ConfigEvent, Object};
use proto::TextEnum;
use rand::RngCore;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast;

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Created if missing; holds `triggerfs.db` (SQLite), `jwt.key`, `broker.token` (0600).
    pub data_dir: PathBuf,
    /// `postgres://...` selects PostgreSQL; `None` the SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// How long a login's JWT is valid.
    pub jwt_ttl: Duration,
    /// Larger request bodies get 413 `PayloadTooLarge`.
    pub max_body_bytes: usize,
    /// The broker's client address, for the HTTP gateway.
    pub broker_addr: Option<String>,
    /// How long a connection may take to send a request's headers, also while idle between
    /// requests (closed after).
    pub http_timeout: Duration,
    /// How long a request's body may take to arrive, plus one second per
    /// [`HTTP_BODY_MIN_RATE`] bytes it has (by `Content-Length`, or as it comes): past it,
    /// 408 `RequestTimeout` and the connection closed.
    pub http_body_timeout: Duration,
    /// Connections served at once. At the limit the connection idle longest (no request in
    /// progress) is closed to make room; when none is idle a newcomer gets 503.
    pub max_connections: usize,
    /// Connections from one client address at once. At the cap that address's connection
    /// idle longest is closed to make room; when none is idle a newcomer gets 503.
    pub max_connections_per_address: usize,
    /// Requests without valid credentials (no bearer token, or neither a JWT whose signature
    /// and expiry check out nor the broker token) in progress at once, body read included;
    /// past it they get 503 at once. Logged-in callers and the broker are not counted.
    pub max_unauthenticated: usize,
    /// Event streams (`/api/v1/events`) open at once, in all; past it a new one gets 503.
    pub max_event_streams: usize,
    /// Event streams one user may hold open at once; past it a new one gets 429.
    pub max_event_streams_per_user: usize,
    /// Login attempts per identity and per client address.
    pub login_limits: LoginLimits,
    /// Jobs older than this are deleted (checked every [`JOB_PRUNE_EVERY`] while serving).
    pub job_retention: Duration,
    /// HTTPS (`--tls-cert`, `--tls-key`); `None`: plain HTTP.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// The slowest a large request body may arrive: its deadline is
/// [`ControlSettings::http_body_timeout`] plus one second per this many bytes (64 KiB/s: the
/// broker's largest job batch, 16 MiB, has 256 s more).
pub const HTTP_BODY_MIN_RATE: usize = 64 * 1024;

/// Connections one client address may hold when nothing says (one host running the broker,
/// `fs` and consoles against the API uses a few dozen at most).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 128;

/// Requests without valid credentials in progress at once when nothing says.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 64;

/// How long jobs are kept when nothing says: 7 days.
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often the retention task deletes old jobs.
pub const JOB_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Login rate limits and locks: a burst, then one attempt per period (per address; per
/// identity for addresses that gave it a wrong secret), and locks of the guessing address.
/// See [`auth::LoginGuard`] for the whole rule.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Attempts for one identity, from addresses that gave it a wrong secret since their
    /// last good login, before they have to wait (an address's first attempt for an
    /// identity is always checked).
    pub identity_burst: u32,
    /// After the burst, one more attempt for that identity per this period.
    pub identity_period: Duration,
    /// Attempts from one client address before it has to wait.
    pub address_burst: u32,
    /// After the burst, one more attempt from that address per this period.
    pub address_period: Duration,
    /// Wrong secrets in a row from one address for one identity before that address's
    /// logins as that identity are locked (other addresses are not).
    pub lockout_after: u32,
    /// The first lock's length; each further lock (without a good login between) is twice
    /// the one before, up to [`LoginLimits::lockout_max`].
    pub lockout: Duration,
    /// The longest lock.
    pub lockout_max: Duration,
}

impl Default for LoginLimits {
    /// 10 attempts, then one per 3 s, per identity (from addresses that guessed wrong); 50,
    /// then 5 a second, per address; 10 wrong secrets in a row from an address lock its
    /// logins as that identity for 1 min, then 2, 4, ... up to 1 h.
    fn default() -> LoginLimits {
        LoginLimits {
            identity_burst: 10,
            identity_period: Duration::from_secs(3),
            address_burst: 50,
            address_period: Duration::from_millis(200),
            lockout_after: 10,
            lockout: Duration::from_secs(60),
            lockout_max: Duration::from_secs(3600),
        }
    }
}

impl ControlSettings {
    /// Defaults: SQLite in `data_dir`, 12 h tokens, 1 MiB bodies, no gateway, 30 s HTTP
    /// header timeout, 10 s body timeout, [`default_max_connections`] connections,
    /// [`DEFAULT_MAX_CONNECTIONS_PER_ADDRESS`] per address, [`DEFAULT_MAX_UNAUTHENTICATED`]
    /// requests without credentials, default login limits.
    pub fn new(data_dir: impl Into<PathBuf>) -> ControlSettings {
        ControlSettings {
            data_dir: data_dir.into(),
            database_url: None,
            jwt_ttl: Duration::from_secs(12 * 3600),
            max_body_bytes: 1024 * 1024,
            broker_addr: None,
            http_timeout: Duration::from_secs(30),
            http_body_timeout: Duration::from_secs(10),
            max_connections: default_max_connections(),
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            max_event_streams: 1024,
            max_event_streams_per_user: 8,
            login_limits: LoginLimits::default(),
            job_retention: DEFAULT_JOB_RETENTION,
            tls: None,
        }
    }
}

/// A quarter of the process's open-file limit (the rest is for the broker, the database and
/// the gateway in the same process), between 64 and 10,000.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    (soft / 4).clamp(64, 10_000)
}

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

/// Everything a request handler needs.
pub(crate) struct Shared {
    pub(crate) db: Db,
    pub(crate) settings: ControlSettings,
    pub(crate) jwt: JwtKeys,
    pub(crate) broker_token: String,
    pub(crate) events: broadcast::Sender<ConfigEvent>,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) openapi_json: OnceLock<String>,
    pub(crate) guard: auth::LoginGuard,
    pub(crate) streams: routes::events::Streams,
    pub(crate) jobs: job_store::JobStore,
}

pub(crate) type AppState = Arc<Shared>;

impl Shared {
    /// Tells event-stream subscribers about a committed change.
    pub(crate) fn publish(&self, event: ConfigEvent) {
        tracing::debug!(
            revision = event.revision,
            team = %event.team,
            object = %event.object,
            action = %event.action,
            name = %event.name,
            "config changed"
        );
        // No subscribers is fine.
        let _ = self.events.send(event);
    }
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
        let key_hex = load_or_create_secret(&key_path, || random_hex(32))?;
        let key = hex::decode(key_hex.trim())
            .ok()
            .filter(|k| k.len() >= 32)
            .ok_or_else(|| ControlError::BadFile {
                path: key_path.display().to_string(),
                reason: "expected at least 32 bytes of hex".into(),
            })?;
        let broker_token =
            load_or_create_secret(&settings.data_dir.join("broker.token"), || random_hex(32))?;
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
                metrics: metrics::Metrics::new(),
                openapi_json: OnceLock::new(),
                guard: auth::LoginGuard::new(settings_limits),
                streams: routes::events::Streams::default(),
                jobs,
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
        let hash = auth::hash_secret(&s.guard, secret.clone())
            .await
            .map_err(|e| ControlError::Hash(e.to_string()))?;
        let now = db::now_ms();
        change::change!(s, Object::Team, Action::Created, team, team, |tx| {
            let team_id: i64 = sqlx::query_scalar(
                "INSERT INTO teams (name, install, created, updated) VALUES ($1, TRUE, $2, $2) \
                 RETURNING id",
            )
            .bind(&team)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            // A user `admin` left from a store whose teams were all deleted gets a new
            // secret rather than failing the start on the unique identity.
            let user_id: i64 = sqlx::query_scalar(
                "INSERT INTO users (identity, secret_hash, operator, max_teams, created) \
                 VALUES ($1, $2, TRUE, NULL, $3) ON CONFLICT (identity) DO UPDATE \
                 SET secret_hash = excluded.secret_hash, operator = TRUE, max_teams = NULL \
                 RETURNING id",
            )
            .bind(&identity)
            .bind(&hash)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO members (team_id, user_id, role, created) VALUES ($1, $2, $3, $4)",
            )
            .bind(team_id)
            .bind(user_id)
            .bind(api::Role::Admin.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
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
            let connection = Connection {
                service,
                ticket,
                peer,
                timeout: settings.http_timeout,
            };
            match &tls {
                None => connection.serve_plain(stream, &graceful),
                Some(acceptor) => connection.serve_tls(stream, acceptor.clone(), &graceful),
            }
        }
        drop(listener);
        pruner.abort();
        // Event streams never end on their own: give the others a bounded time.
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::info!("closing the HTTP connections still open");
        }
        Ok(())
    }

    /// Deletes the jobs past their retention every [`JOB_PRUNE_EVERY`], until aborted.
    fn spawn_pruner(&self) -> tokio::task::JoinHandle<()> {
        let cp = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(JOB_PRUNE_EVERY);
            loop {
                every.tick().await;
                match cp.prune_jobs().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "jobs past their retention deleted"),
                    Err(e) => tracing::warn!(error = %e, "cannot delete old jobs"),
                }
            }
        })
    }
}

/// One accepted connection, admitted, with the service its requests go through.
struct Connection<S> {
    service: S,
    ticket: conns::Ticket,
    peer: std::net::SocketAddr,
    /// How long the peer may take to send a request's headers (the TLS handshake too).
    timeout: Duration,
}

impl<S> Connection<S>
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    fn http(&self) -> hyper::server::conn::http1::Builder {
        hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.timeout)
            .clone()
    }

    /// Serves plain HTTP on `stream`, in a task of its own.
    fn serve_plain(
        self,
        stream: tokio::net::TcpStream,
        graceful: &hyper_util::server::graceful::GracefulShutdown,
    ) {
        let io = hyper_util::rt::TokioIo::new(stream);
        let conn = graceful.watch(self.http().serve_connection(io, self.service));
        tokio::spawn(run_connection(conn, self.ticket, self.peer, "HTTP"));
    }

    /// Serves HTTPS on `stream`, in a task of its own. The TLS handshake runs in that task,
    /// within the header timeout: a peer that never finishes it holds a slot no longer.
    fn serve_tls(
        self,
        stream: tokio::net::TcpStream,
        acceptor: tokio_rustls::TlsAcceptor,
        graceful: &hyper_util::server::graceful::GracefulShutdown,
    ) {
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(self.timeout, acceptor.accept(stream));
            let stream = match tokio::select! {
                done = handshake => done,
                () = self.ticket.evicted() => return,
            } {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, peer = %self.peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                    return;
                }
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = watcher.watch(self.http().serve_connection(io, self.service));
            run_connection(conn, self.ticket, self.peer, "HTTPS").await;
        });
    }
}

/// How long a shutdown waits for open requests to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Shared {
    fn data_dir(&self) -> &Path {
        &self.settings.data_dir
    }

    /// The slot a request without credentials holds until its response is sent (`None`: it
    /// has credentials); `Busy` (503, and the connection closed) when none is free.
    fn anonymous_slot(
        &self,
        conns: &conns::Conns,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        if self.has_credentials(headers) {
            return Ok(None);
        }
        let busy = ApiError::Busy {
            retry_after: 1,
            what: "too many requests without credentials at once",
        };
        conns.anonymous_slot().map(Some).ok_or(busy)
    }

    /// Whether a request's headers carry a credential that checks out without the store: a
    /// JWT with a good signature and expiry, or the broker token (an HMAC or a compare: cheap
    /// enough for every request, before its body is read).
    fn has_credentials(&self, headers: &axum::http::HeaderMap) -> bool {
        auth::bearer_token(headers).is_some_and(|token| {
            auth::same_secret(token, &self.broker_token) || self.jwt.verify(token).is_ok()
        })
    }
}

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

/// `response` with `Connection: close`: the connection ends once it is written.
pub(crate) fn closing(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
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
