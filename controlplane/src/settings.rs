//! How the control plane runs: [`ControlSettings`] and [`LoginLimits`], and their defaults.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// The brokers' client addresses, for the HTTP gateway (and the schedules): each request
    /// goes through one that answers.
    pub brokers: Option<client::BrokerList>,
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
    /// How long a broker node of a cell stays in the list without a heartbeat; past it, it is
    /// swept with its links to workers (checked every fifth of it while serving).
    pub node_lease: Duration,
}

/// A broker node's lease when nothing says: 10 s (a node heartbeats every fifth of it).
pub const DEFAULT_NODE_LEASE: Duration = Duration::from_secs(10);

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
/// See [`crate::credentials::LoginGuard`] for the whole rule.
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
    /// header timeout, 10 s body timeout, a 10 s node lease, [`default_max_connections`] connections,
    /// [`DEFAULT_MAX_CONNECTIONS_PER_ADDRESS`] per address, [`DEFAULT_MAX_UNAUTHENTICATED`]
    /// requests without credentials, default login limits.
    pub fn new(data_dir: impl Into<PathBuf>) -> ControlSettings {
        ControlSettings {
            data_dir: data_dir.into(),
            database_url: None,
            jwt_ttl: Duration::from_secs(12 * 3600),
            max_body_bytes: 1024 * 1024,
            brokers: None,
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
            node_lease: DEFAULT_NODE_LEASE,
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
