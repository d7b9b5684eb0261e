//! `triggerfs control`: the control plane alone, and what `up` shares with it (the API's
//! flags, opening the store, the first admin).

use crate::broker::TlsArgs;
use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The REST API's flags, of `control` and `up`.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Where the REST API listens.
    #[arg(long, env = "TRIGGERFS_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub api_listen: SocketAddr,
    /// `postgres://...` to use PostgreSQL; default: SQLite in the data dir.
    #[arg(long, env = "TRIGGERFS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// How long a login's JWT is valid.
    #[arg(long, env = "TRIGGERFS_JWT_TTL", default_value = "12h", value_parser = humantime::parse_duration)]
    pub jwt_ttl: Duration,
    /// An API connection that takes longer to send a request's headers, or stays idle
    /// longer between requests, is closed.
    #[arg(long, env = "TRIGGERFS_HTTP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http_timeout: Duration,
    /// A request body must arrive within this, plus 1 s per 64 KiB of it; else 408 and the
    /// connection is closed.
    #[arg(long, env = "TRIGGERFS_HTTP_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_body_timeout: Duration,
    /// API connections served at once (default: a quarter of the open-file limit). At the
    /// limit the connection idle longest is closed to make room; if none is idle, 503.
    #[arg(long, env = "TRIGGERFS_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// API connections from one client address at once. At the cap that address's
    /// connection idle longest is closed to make room; if none is idle, 503. Keep it above
    /// --http-max-unauthenticated, so anonymous requests cannot fill an address's share.
    #[arg(long, env = "TRIGGERFS_HTTP_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = controlplane::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    pub http_max_connections_per_address: usize,
    /// API requests without valid credentials (no bearer token, or a bad or expired one)
    /// in progress at once, logins included; past it, 503 at once. Logged-in callers and
    /// the broker are not counted.
    #[arg(long, env = "TRIGGERFS_HTTP_MAX_UNAUTHENTICATED", default_value_t = controlplane::DEFAULT_MAX_UNAUTHENTICATED)]
    pub http_max_unauthenticated: usize,
    /// How long the job history keeps a request (e.g. `7d`, `12h`); older ones are deleted.
    #[arg(long, env = "TRIGGERFS_JOB_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub job_retention: Duration,
    /// How long a broker node of a cell stays listed without a heartbeat (it sends one every
    /// fifth of this); past it, the workers only it connected become DISCONNECTED.
    #[arg(long, env = "TRIGGERFS_NODE_LEASE", default_value = "10s", value_parser = parse_node_lease)]
    pub node_lease: Duration,
}

/// A node lease: at least 500 ms (a node heartbeats every fifth of it), at most a day.
fn parse_node_lease(text: &str) -> Result<Duration, String> {
    let lease = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if lease < Duration::from_millis(500) || lease > Duration::from_secs(24 * 3600) {
        return Err("a node lease is from 500ms to 24h".into());
    }
    Ok(lease)
}

/// Flags of `triggerfs control`.
#[derive(Args, Debug)]
pub struct ControlArgs {
    /// Data directory (SQLite database, JWT key, broker token).
    #[arg(long, env = "TRIGGERFS_DATA", default_value = "triggerfs-data")]
    pub data: PathBuf,
    /// The broker the HTTP gateway sends requests through; several, comma-separated, to fail
    /// over between a cell's nodes.
    #[arg(long, env = "TRIGGERFS_BROKER", default_value = "127.0.0.1:5555")]
    pub broker: client::BrokerList,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Settings shared by `up` and `control`.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// The data directory (absolute).
    pub data: PathBuf,
    /// The API's flags.
    pub api: ApiArgs,
    /// The brokers the HTTP gateway sends requests through.
    pub brokers: Option<client::BrokerList>,
    /// HTTPS for the API (and, in `up`, TLS for the broker too).
    pub tls: Option<Arc<tls::rustls::ServerConfig>>,
}

impl ControlOptions {
    /// The API's URL for the programs of this process and the client config.
    pub(crate) fn api_url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", connectable(addr))
    }

    /// The broker's address as the client config and the local worker write it.
    pub(crate) fn broker_url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "tcp" };
        format!("{scheme}://{}", connectable(addr))
    }
}

/// `addr` as a peer can connect to it: an unspecified address (`0.0.0.0`) becomes loopback,
/// which the development certificate names.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// The control plane, opened and bootstrapped, with its API listening.
pub struct RunningControl {
    pub plane: controlplane::ControlPlane,
    pub api_addr: SocketAddr,
    pub first_admin: Option<controlplane::FirstAdmin>,
}

/// Opens the store, creates the first admin when there is none, and serves the API.
pub async fn start_control(
    opts: &ControlOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningControl> {
    controlplane::create_private_dir(&opts.data)?;
    let mut settings = controlplane::ControlSettings::new(&opts.data);
    let api = &opts.api;
    settings.database_url = api.database_url.clone();
    settings.jwt_ttl = api.jwt_ttl;
    settings.brokers = opts.brokers.clone();
    settings.http_timeout = api.http_timeout;
    settings.http_body_timeout = api.http_body_timeout;
    settings.max_connections_per_address = api.http_max_connections_per_address;
    settings.max_unauthenticated = api.http_max_unauthenticated;
    settings.job_retention = api.job_retention;
    settings.node_lease = api.node_lease;
    settings.tls = opts.tls.clone();
    if let Some(n) = api.http_max_connections {
        settings.max_connections = n;
    }
    let plane = controlplane::ControlPlane::open(settings).await?;
    let first_admin = plane.bootstrap().await?;
    let listener = tokio::net::TcpListener::bind(api.api_listen)
        .await
        .with_context(|| format!("cannot listen on {}", api.api_listen))?;
    let api_addr = listener.local_addr()?;
    let serving = plane.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve(listener, shutdown).await {
            tracing::error!(error = %e, "control plane stopped");
        }
    });
    Ok(RunningControl {
        plane,
        api_addr,
        first_admin,
    })
}

/// Prints the first admin's credentials (only ever once, on the first start).
pub fn announce_admin(admin: &controlplane::FirstAdmin) {
    println!(
        "created team `{}` and admin `{}`",
        admin.team, admin.identity
    );
    println!("  secret: {}", admin.secret);
    println!("  (shown once; also saved to {})", admin.path.display());
}

/// `triggerfs control`: serves the API until SIGINT or SIGTERM.
pub fn run(args: ControlArgs) -> Result<i32> {
    let opts = ControlOptions {
        data: std::path::absolute(&args.data)?,
        brokers: Some(args.broker),
        tls: args.tls.server_config()?,
        api: args.api,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let running = start_control(&opts, stop.clone().cancelled_owned()).await?;
        if let Some(admin) = &running.first_admin {
            announce_admin(admin);
        }
        println!("broker token: {}", opts.data.join("broker.token").display());
        println!("listening on {}", running.api_addr);
        crate::signals::shutdown_signal().await;
        stop.cancel();
        Ok(0)
    })
}
