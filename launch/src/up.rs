//! `triggerfs up` and `triggerfs control`: the control plane, and in `up` also the broker
//! and a local worker, in one process.
//!
//! `up` on an empty data dir creates the first team and admin (printed once, and written with
//! the addresses to `<data>/triggerfs.toml`, mode 0600), then provisions the local worker and
//! the `demo` service over the API exactly as a user would, with that admin's login.

use crate::broker::{ShardArgs, TlsArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Settings shared by `up` and `control`.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    pub data: PathBuf,
    pub api_listen: SocketAddr,
    pub database_url: Option<String>,
    pub jwt_ttl: Duration,
    pub broker_addr: Option<String>,
    pub http_timeout: Duration,
    pub http_max_connections: Option<usize>,
    pub http_body_timeout: Duration,
    pub http_max_connections_per_address: usize,
    pub http_max_unauthenticated: usize,
    pub job_retention: Duration,
    /// HTTPS for the API (and, in `up`, TLS for the broker too).
    pub tls: Option<Arc<tls::rustls::ServerConfig>>,
}

impl ControlOptions {
    /// The API's URL for the programs of this process and the client config.
    fn api_url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", connectable(addr))
    }

    /// The broker's address as the client config and the local worker write it.
    fn broker_url(&self, addr: SocketAddr) -> String {
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
    settings.database_url = opts.database_url.clone();
    settings.jwt_ttl = opts.jwt_ttl;
    settings.broker_addr = opts.broker_addr.clone();
    settings.http_timeout = opts.http_timeout;
    settings.http_body_timeout = opts.http_body_timeout;
    settings.max_connections_per_address = opts.http_max_connections_per_address;
    settings.max_unauthenticated = opts.http_max_unauthenticated;
    settings.job_retention = opts.job_retention;
    settings.tls = opts.tls.clone();
    if let Some(n) = opts.http_max_connections {
        settings.max_connections = n;
    }
    let plane = controlplane::ControlPlane::open(settings).await?;
    let first_admin = plane.bootstrap().await?;
    let listener = tokio::net::TcpListener::bind(opts.api_listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.api_listen))?;
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

#[derive(Deserialize)]
struct MainSection {
    team: String,
    identity: String,
    secret: String,
}

#[derive(Deserialize)]
struct ClientToml {
    main: MainSection,
}

/// Writes `<data>/triggerfs.toml` (0600): the admin's login plus where to find the servers,
/// and `[workers] pluginspath` (the data dir's plugins), so that `triggerfs worker` with
/// this file needs only `--identity` and `--token`.
fn write_client_config(
    path: &Path,
    admin: &controlplane::FirstAdmin,
    api: &str,
    broker: &str,
    ca: Option<&Path>,
    pluginspath: &Path,
) -> Result<()> {
    let pluginspath = std::path::absolute(pluginspath)?;
    let ca = match ca {
        Some(ca) => format!(
            "ca = {:?}\n",
            std::path::absolute(ca)?.display().to_string()
        ),
        None => String::new(),
    };
    let text = format!(
        "# Written by `triggerfs up` on its first start: the admin's login.\n\
         [main]\nteam = {:?}\nidentity = {:?}\nsecret = {:?}\nurl = {api:?}\nbroker = {broker:?}\n{ca}\n\
         [workers]\npluginspath = {:?}\n",
        admin.team,
        admin.identity,
        admin.secret,
        pluginspath.display().to_string()
    );
    controlplane::write_private(path, &text)?;
    Ok(())
}

/// An API call made by `up` for its own set-up.
async fn api(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: serde_json::Value,
) -> Result<(reqwest::StatusCode, serde_json::Value)> {
    let mut req = http.request(method, &url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// Makes sure worker `local` and service `demo` exist; returns a fresh token for `local` and
/// the admin's JWT.
async fn provision_local_worker(api_url: &str, login: &MainSection) -> Result<(String, String)> {
    let http = tls::http_client().build()?;
    let base = format!("{api_url}/api/v1");
    let (status, body) = api(
        &http,
        reqwest::Method::POST,
        format!("{base}/login"),
        None,
        serde_json::json!({"team": login.team, "identity": login.identity, "secret": login.secret}),
    )
    .await?;
    if !status.is_success() {
        bail!("cannot log in as {}: {body}", login.identity);
    }
    let jwt = body["token"]
        .as_str()
        .context("login answer has no token")?
        .to_string();
    let (status, body) = api(
        &http,
        reqwest::Method::POST,
        format!("{base}/workers"),
        Some(&jwt),
        serde_json::json!({"identity": "local", "description": "the worker of `triggerfs up`"}),
    )
    .await?;
    let token = if status.is_success() {
        body["token"].as_str().map(String::from)
    } else {
        // It exists from an earlier start: its token is stored hashed, so issue a new one.
        let (status, body) = api(
            &http,
            reqwest::Method::POST,
            format!("{base}/workers/local/regenerate"),
            Some(&jwt),
            serde_json::json!({}),
        )
        .await?;
        if !status.is_success() {
            bail!("cannot regenerate the local worker's token: {body}");
        }
        body["token"].as_str().map(String::from)
    };
    let token = token.context("the API returned no worker token")?;
    let (status, body) = api(
        &http,
        reqwest::Method::POST,
        format!("{base}/services"),
        Some(&jwt),
        serde_json::json!({"name": "demo", "algorithm": "roundrobin", "visibility": "team",
                           "workers": ["local"], "description": "the demo service of `triggerfs up`"}),
    )
    .await?;
    if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
        bail!("cannot create service demo: {body}");
    }
    Ok((token, jwt))
}

/// Waits until the API shows worker `local` `ONLINE` (at most `within`), so that `up` says it
/// is listening only once `demo` is served.
async fn wait_local_online(api_url: &str, jwt: &str, within: Duration) -> Result<()> {
    let http = tls::http_client().build()?;
    let url = format!("{api_url}/api/v1/workers/local");
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = api(
            &http,
            reqwest::Method::GET,
            url.clone(),
            Some(jwt),
            serde_json::Value::Null,
        )
        .await?;
        if status.is_success() && body["state"] == "ONLINE" {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the local worker is not online after {within:?} ({status}: {body})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Provisions worker `local` and service `demo` with the admin login of `config_path`, and
/// lays out the core plugins: the local worker's configuration.
async fn local_worker(
    opts: &ControlOptions,
    config_path: &Path,
    api_addr: SocketAddr,
    broker_addr: SocketAddr,
) -> Result<(worker::WorkerConfig, String)> {
    let text = std::fs::read_to_string(config_path).with_context(|| {
        format!(
            "cannot read {} for the admin login the local worker is set up with",
            config_path.display()
        )
    })?;
    let login: ClientToml = toml::from_str(&text).with_context(|| {
        format!(
            "{} has no [main] team/identity/secret",
            config_path.display()
        )
    })?;
    let (token, jwt) = provision_local_worker(&opts.api_url(api_addr), &login.main).await?;
    let pluginspath = opts.data.join("plugins");
    plugins::install(&pluginspath)?;
    println!(
        "local worker `local` serves service `demo` with plugins in {}",
        pluginspath.display()
    );
    let config = worker::WorkerConfig {
        broker: opts.broker_url(broker_addr),
        team: login.main.team.clone(),
        identity: "local".into(),
        token,
        pluginspath,
        services: vec![],
        max_concurrency: 64,
        shell: worker::DEFAULT_SHELL.into(),
        reconnect_max: Duration::from_secs(1),
        debug: false,
        max_output: worker::DEFAULT_MAX_OUTPUT,
    };
    Ok((config, jwt))
}

/// `triggerfs up`.
pub fn run_up(
    opts: ControlOptions,
    broker: dataplane::BrokerSettings,
    no_worker: bool,
) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let control_stop = {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.changed().await;
            }
        };
        let running = start_control(&opts, control_stop).await?;
        let api_addr = running.api_addr;
        let api_url = opts.api_url(api_addr);
        println!("control plane listening on {api_url}");

        let feed_settings = feed::FeedSettings {
            url: api_url.clone(),
            broker_token: running.plane.broker_token().to_string(),
            record_jobs: true,
        };
        let source = tokio::task::spawn_blocking(move || feed::ControlSource::start(feed_settings))
            .await??;
        let handle = dataplane::start(broker, Arc::new(source))?;
        let broker_addr = handle.local_addr();

        let config_path = opts.data.join("triggerfs.toml");
        if let Some(admin) = &running.first_admin {
            announce_admin(admin);
            let tls_dir = opts.data.join("tls");
            write_client_config(
                &config_path,
                admin,
                &api_url,
                &opts.broker_url(broker_addr),
                opts.tls
                    .as_ref()
                    .map(|_| tls_dir.join("ca.pem"))
                    .filter(|ca| ca.exists())
                    .as_deref(),
                &opts.data.join("plugins"),
            )?;
        }
        println!("client config: {}", config_path.display());
        println!(
            "try: triggerfs --config {} client --service demo --plugin command --command uptime",
            config_path.display()
        );

        let worker = if no_worker {
            None
        } else {
            match local_worker(&opts, &config_path, api_addr, broker_addr).await {
                Ok((config, jwt)) => {
                    let mut rx = stop_rx.clone();
                    let worker = tokio::spawn(worker::run(config, async move {
                        let _ = rx.changed().await;
                    }));
                    // `demo` is served before `up` says it is listening.
                    if let Err(e) = wait_local_online(&api_url, &jwt, Duration::from_secs(10)).await
                    {
                        tracing::warn!(error = %format!("{e:#}"), "local worker");
                        println!("the local worker is not online yet: {e:#}");
                    }
                    Some(worker)
                }
                Err(e) => {
                    // The rest is still useful: the API and the broker serve other workers.
                    tracing::warn!(error = %format!("{e:#}"), "no local worker");
                    println!("the local worker is not started: {e:#}");
                    None
                }
            }
        };
        // Before `listening on`: a SIGTERM right after it drains, never kills.
        let signals = crate::signals::ShutdownSignals::new()?;
        // The line test harnesses wait for: everything is up.
        println!("listening on {broker_addr}");

        // The broker drains first (see `--drain`), while the control plane and the local
        // worker still serve the requests in flight; then they stop.
        crate::signals::drain_broker(handle, signals).await?;
        let _ = stop_tx.send(true);
        if let Some(w) = worker {
            let _ = w.await;
        }
        Ok(0)
    })
}

/// `triggerfs control`.
pub fn run_control(opts: ControlOptions) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let running = start_control(&opts, async move {
            let _ = stop_rx.changed().await;
        })
        .await?;
        if let Some(admin) = &running.first_admin {
            announce_admin(admin);
        }
        println!("broker token: {}", opts.data.join("broker.token").display());
        println!("listening on {}", running.api_addr);
        crate::signals::shutdown_signal().await;
        let _ = stop_tx.send(true);
        Ok(0)
    })
}

#[derive(Args, Debug)]
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
}

#[derive(Args, Debug)]
pub struct ControlArgs {
    /// Data directory (SQLite database, JWT key, broker token).
    #[arg(long, env = "TRIGGERFS_DATA", default_value = "triggerfs-data")]
    pub data: PathBuf,
    /// The broker the HTTP gateway sends requests through.
    #[arg(long, env = "TRIGGERFS_BROKER", default_value = "127.0.0.1:5555")]
    pub broker: String,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Data directory (database, keys, plugins, the admin's client config).
    #[arg(long, env = "TRIGGERFS_DATA", default_value = "triggerfs-data")]
    pub data: PathBuf,
    /// Broker address to listen on.
    #[arg(long, env = "TRIGGERFS_LISTEN", default_value = "127.0.0.1:5555")]
    pub listen: SocketAddr,
    /// Do not start the local worker.
    #[arg(long)]
    pub no_worker: bool,
    /// Also serve the broker's Prometheus metrics on this address (`/metrics`).
    #[arg(long, env = "TRIGGERFS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// TLS on both planes with a development CA made in the data dir (`<data>/tls`); the
    /// client config written on the first start trusts it (`ca`, `tls://`, `https://`).
    #[arg(long, conflicts_with = "tls_cert")]
    pub tls: bool,
    /// Serve plaintext on an address other than loopback (refused without it).
    #[arg(long)]
    pub insecure_plaintext: bool,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub tls_files: TlsArgs,
}

/// `up`'s TLS: the development CA (`--tls`) or the given files; refuses plaintext on an
/// address other than loopback without `--insecure-plaintext`. Sets the process's trust: the
/// development CA (unless `--ca` names another), and the server's certificate as the local
/// worker's client certificate (for `--tls-client-ca`).
pub fn up_tls(
    args: &UpArgs,
    data: &Path,
    mut trust: tls::Trust,
) -> Result<Option<Arc<tls::rustls::ServerConfig>>> {
    let config = if args.tls {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        for ip in [args.listen.ip(), args.api.api_listen.ip()] {
            let name = ip.to_string();
            if !ip.is_unspecified() && !names.contains(&name) {
                names.push(name);
            }
        }
        controlplane::create_private_dir(data)?;
        let files = tls::dev_files(&data.join("tls"), &names)?;
        trust.ca = trust.ca.or(Some(files.ca.clone()));
        trust.cert = Some(files.cert.clone());
        trust.key = Some(files.key.clone());
        Some(tls::server_config(
            &files.cert,
            &files.key,
            args.tls_files.tls_client_ca.as_deref(),
        )?)
    } else {
        let config = args.tls_files.server_config()?;
        if config.is_some() {
            trust.cert = args.tls_files.tls_cert.clone();
            trust.key = args.tls_files.tls_key.clone();
        }
        config
    };
    let public = [args.listen.ip(), args.api.api_listen.ip()]
        .into_iter()
        .find(|ip| !ip.is_loopback());
    if let (None, Some(ip), false) = (&config, public, args.insecure_plaintext) {
        bail!(
            "refusing to serve plaintext on {ip}, which is not loopback: tokens and secrets would \
             cross the network in clear. Use --tls (a development CA in the data dir), \
             --tls-cert and --tls-key, or --insecure-plaintext"
        );
    }
    tls::set_trust(&trust)?;
    Ok(config)
}

pub fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}
