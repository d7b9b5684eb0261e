//! `triggerfs up`: the control plane, the broker and a local worker in one process.
//!
//! `up` on an empty data dir creates the first team and admin (printed once, and written with
//! the addresses to `<data>/triggerfs.toml`, mode 0600), then provisions the local worker and
//! the `demo` service over the API exactly as a user would, with that admin's login.

use crate::broker::{ShardArgs, TlsArgs};
use crate::control::{announce_admin, connectable, start_control, ApiArgs, ControlOptions};
use crate::settings::{LoginArgs, Settings};
use anyhow::{bail, Context, Result};
use api::client::{ApiError, Login};
use api::services::CreateService;
use api::workers::{CreateWorker, WorkerView, WorkerWithToken};
use api::{Algorithm, Api, Visibility, WorkerState};
use clap::Args;
use reqwest::Method;
use serde::de::IgnoredAny;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Flags of `triggerfs up`.
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

/// Makes sure worker `local` and service `demo` exist, as the admin of `login`; returns a
/// fresh token for `local` and the admin's client.
async fn provision_local_worker(login: &Login) -> Result<(String, Api)> {
    let api = Api::sign_in(login)
        .await
        .with_context(|| format!("cannot log in as {}", login.identity))?;
    let local = CreateWorker {
        identity: "local".into(),
        description: Some("the worker of `triggerfs up`".into()),
        ..CreateWorker::default()
    };
    let created: Result<WorkerWithToken, ApiError> = api.post("/workers", &local).await;
    let worker = match created {
        // It exists from an earlier start: its token is stored hashed, so issue a new one.
        Err(ApiError::Refused { .. }) => api
            .request(Method::POST, "/workers/local/regenerate", None::<&()>)
            .await
            .context("cannot regenerate the local worker's token")?,
        other => other?,
    };
    let demo = CreateService {
        name: "demo".into(),
        algorithm: Some(Algorithm::Roundrobin),
        visibility: Some(Visibility::Team),
        workers: Some(vec!["local".into()]),
        description: Some("the demo service of `triggerfs up`".into()),
        ..CreateService::default()
    };
    match api.post::<_, IgnoredAny>("/services", &demo).await {
        Ok(_) | Err(ApiError::Refused { status: 409, .. }) => {}
        Err(e) => return Err(e).context("cannot create service demo"),
    }
    Ok((worker.token, api))
}

/// Waits until the API shows worker `local` `ONLINE` (at most `within`), so that `up` says it
/// is listening only once `demo` is served.
async fn wait_local_online(api: &Api, within: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let state = match api.get::<WorkerView>("/workers/local").await {
            Ok(local) if local.state == WorkerState::Online => return Ok(()),
            Ok(local) => local.state.to_string(),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("the local worker is not online after {within:?} ({state})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Provisions worker `local` and service `demo` with the admin login of `config_path`: the
/// local worker's configuration (the core plugins are laid out by then).
async fn local_worker(
    opts: &ControlOptions,
    config_path: &Path,
    api_addr: SocketAddr,
    broker_addr: SocketAddr,
) -> Result<(worker::WorkerConfig, Api)> {
    let main = Settings::load(Some(config_path))
        .context("the admin login the local worker is set up with")?
        .main;
    let login = LoginArgs {
        url: opts.api_url(api_addr),
        team: main.team,
        identity: main.identity,
        secret: main.secret,
    }
    .required(&format!(" ({})", config_path.display()))?;
    let (token, api) = provision_local_worker(&login).await?;
    let pluginspath = opts.data.join("plugins");
    println!(
        "local worker `local` serves service `demo` with plugins in {}",
        pluginspath.display()
    );
    let config = worker::WorkerConfig {
        brokers: client::BrokerList::one(opts.broker_url(broker_addr)),
        team: login.team,
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
    Ok((config, api))
}

/// `triggerfs up`: serves until SIGINT or SIGTERM, then drains the broker and stops.
pub fn run(args: UpArgs, trust: tls::Trust) -> Result<i32> {
    if let Some(addr) = args.metrics_listen {
        println!(
            "metrics on http://{}/metrics",
            crate::metrics_http::serve(addr)?
        );
    }
    let data = std::path::absolute(&args.data)?;
    let server_tls = tls(&args, &data, trust)?;
    // The HTTP gateway needs the broker's address before the broker starts (the broker
    // takes its configuration from the control plane): settle port 0 now, and hold it.
    let (listen, held) = if args.listen.port() == 0 {
        let held = hold_port(args.listen)?;
        let local = held.local_addr()?.as_socket().context("no IP address")?;
        (local, Some(held))
    } else {
        (args.listen, None)
    };
    let broker = dataplane::BrokerSettings {
        worker_cert_required: args.tls_files.tls_client_ca.is_some(),
        tls: server_tls.clone(),
        ..args.shard.settings(listen)?
    };
    let opts = ControlOptions {
        data,
        brokers: Some(client::BrokerList::one(match server_tls {
            Some(_) => format!("tls://{}", connectable(listen)),
            None => listen.to_string(),
        })),
        tls: server_tls,
        api: args.api,
    };
    serve(opts, broker, args.no_worker, held)
}

/// A port of `addr`'s (the kernel's choice for port 0), bound but not listening, so that
/// nothing else takes it (an outgoing connection's port, another `bind`) while the control
/// plane starts. `SO_REUSEPORT`, which the broker's shards set too, lets them bind it beside
/// this socket; it receives no connections, as it never listens.
fn hold_port(addr: SocketAddr) -> Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// The control plane, the broker and (unless `no_worker`) the local worker, until a signal.
/// `held` keeps the broker's port (see [`hold_port`]) until its shards have bound it.
fn serve(
    opts: ControlOptions,
    broker: dataplane::BrokerSettings,
    no_worker: bool,
    held: Option<socket2::Socket>,
) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stop = CancellationToken::new();
        let running = start_control(&opts, stop.clone().cancelled_owned()).await?;
        let api_addr = running.api_addr;
        let api_url = opts.api_url(api_addr);
        println!("control plane listening on {api_url}");

        let feed_settings = feed::FeedSettings {
            url: api_url.clone(),
            broker_token: running.plane.broker_token().to_string(),
            record_jobs: true,
            // One process: the control plane cannot be out of the broker's reach.
            max_staleness: None,
            advertise: None,
        };
        let source = tokio::task::spawn_blocking(move || feed::ControlSource::start(feed_settings))
            .await??;
        let handle = dataplane::start(broker, Arc::new(source))?;
        drop(held);
        let broker_addr = handle.local_addr();

        let config_path = opts.data.join("triggerfs.toml");
        // The config names it as `[workers] pluginspath`, also with `--no-worker`: a worker
        // started from that file finds the core plugins there.
        plugins::install(&opts.data.join("plugins"))?;
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
                Ok((config, api)) => {
                    let worker = tokio::spawn(worker::run(config, stop.clone().cancelled_owned()));
                    // `demo` is served before `up` says it is listening.
                    if let Err(e) = wait_local_online(&api, Duration::from_secs(10)).await {
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
        stop.cancel();
        if let Some(w) = worker {
            let _ = w.await;
        }
        Ok(0)
    })
}

/// `up`'s TLS: the development CA (`--tls`) or the given files; refuses plaintext on an
/// address other than loopback without `--insecure-plaintext`. Sets the process's trust: the
/// development CA (unless `--ca` names another), and the server's certificate as the local
/// worker's client certificate (for `--tls-client-ca`).
fn tls(
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
