//! The `triggerfs` binary: parses arguments and calls the library crates.
//!
//! When started under the name of a core plugin (`<pluginspath>/command/command` a copy of
//! this binary, as `triggerfs plugins install` used to lay them out), it runs that plugin
//! instead; the worker now serves core plugins itself.

mod cli;
mod client_cmd;
mod jobs_cmd;
mod metrics_http;
mod seed;
mod settings;
mod up;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use settings::Settings;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// mimalloc instead of glibc malloc: the hot path allocates a few dozen small objects per
/// request (frames' strings and payloads, map entries) on threads that free each other's
/// objects, which glibc's arenas serve with locks and consolidation passes.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "triggerfs",
    version,
    about = "Firewall-friendly realtime request/reply and trigger system"
)]
struct Cli {
    /// Configuration file (default: $HOME/triggerfs.toml).
    #[arg(long, global = true, env = "TRIGGERFS_CONFIG")]
    config: Option<PathBuf>,
    /// PEM file of the CA that signed the servers' certificates, for `tls://` broker
    /// addresses and `https://` URLs (default: `[main] ca`, else the public web PKI roots).
    #[arg(long, global = true, env = "TRIGGERFS_CA")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Broker and a local worker with the core plugins, in one process: zero set-up.
    Up(UpArgs),
    /// Run the broker.
    Broker(BrokerArgs),
    /// Run the control plane (REST API, SQLite or PostgreSQL) alone.
    Control(ControlArgs),
    /// Run a worker that connects out to the broker and serves requests with plugins.
    Worker(WorkerArgs),
    /// Send one request to a service and stream its output.
    Client(client_cmd::ClientArgs),
    /// The job history: every request through a service (`list`, `show ID`).
    Jobs(jobs_cmd::JobsArgs),
    /// Mount the team's trigger files (FUSE): every write to one is a request.
    Fs(FsArgs),
    /// The management console (set, show, delete, request, file); `-c "show workers"` runs
    /// one command.
    Cli(cli::CliArgs),
    /// Benchmarks: latency, throughput and fan-out against baselines.
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
    /// A process a benchmark starts (relay, echo server, NATS responders, load).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchChild(bench::ChildArgs),
    /// Create the seed's program names (triggerfs-client, triggerfs-worker, triggerfs-fs)
    /// in DIR as symlinks to this binary; started under one, it runs that subcommand.
    InstallLinks {
        /// Where to create the links (e.g. a directory on PATH).
        dir: PathBuf,
    },
    /// Manage plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum PluginsCommand {
    /// Lay out the core plugins (echo, command, file, append) as DIR/<name>/<name>.
    Install {
        /// The plugins directory (a worker's `pluginspath`).
        dir: PathBuf,
    },
    /// List the core plugins.
    List,
}

#[derive(Args, Debug)]
struct FsArgs {
    /// Where to mount (default: `[triggerfs] mountpoint` of triggerfs.toml).
    #[arg(long, env = "TRIGGERFS_MOUNT")]
    mount: Option<PathBuf>,
    /// Broker address (default: `[main] broker`, else 127.0.0.1:5555).
    #[arg(long, env = "TRIGGERFS_BROKER")]
    broker: Option<String>,
    /// Control plane URL (default: `[main] url`, else http://127.0.0.1:8080).
    #[arg(long, env = "TRIGGERFS_URL")]
    url: Option<String>,
    /// Team to log in to (default: `[main] team`).
    #[arg(long, env = "TRIGGERFS_TEAM")]
    team: Option<String>,
    /// User identity (default: `[main] identity`).
    #[arg(long, env = "TRIGGERFS_IDENTITY")]
    identity: Option<String>,
    /// The user's secret (default: `[main] secret`).
    #[arg(long, env = "TRIGGERFS_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Also log to this file (default: `[triggerfs] logfile`).
    #[arg(long, env = "TRIGGERFS_LOGFILE")]
    logfile: Option<PathBuf>,
    /// The spool's directory (default: `[triggerfs] spool`, else ./triggerfs-spool).
    #[arg(long, env = "TRIGGERFS_SPOOL")]
    spool: Option<PathBuf>,
    /// The spool's bound; past it writes fail with ENOSPC (default: `[triggerfs] spool_max`,
    /// else 1GiB).
    #[arg(long, env = "TRIGGERFS_SPOOL_MAX")]
    spool_max: Option<bytesize::ByteSize>,
    /// How often the spool is made durable (default: `[triggerfs] spool_sync`, else 100ms);
    /// fsync(2) on a trigger file makes it durable at once.
    #[arg(long, env = "TRIGGERFS_SPOOL_SYNC", value_parser = humantime::parse_duration)]
    spool_sync: Option<Duration>,
    /// FUSE threads.
    #[arg(long, env = "TRIGGERFS_FS_THREADS", default_value_t = 4)]
    threads: usize,
    /// Do not print responses on the terminal (the log file still has them).
    #[arg(long, env = "TRIGGERFS_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    quiet: bool,
    /// Let users other than the one mounting open the trigger files (e.g. a web server's
    /// workers); their mode bits still apply. Non-root mounts need `user_allow_other` in
    /// /etc/fuse.conf.
    #[arg(long, env = "TRIGGERFS_ALLOW_OTHER", value_parser = clap::builder::BoolishValueParser::new())]
    allow_other: bool,
}

#[derive(Args, Debug)]
struct ShardArgs {
    /// Executors (one thread each); default: every core.
    #[arg(long, env = "TRIGGERFS_SHARDS")]
    shards: Option<usize>,
    /// Heartbeat period; a peer silent for three is dropped.
    #[arg(long, env = "TRIGGERFS_HEARTBEAT", default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// How long an idle shard polls before sleeping (catches answers without a wake-up's
    /// latency; pins each shard to a core). `0s`: never spin, never pin.
    #[arg(long, env = "TRIGGERFS_SPIN", default_value = "30us", value_parser = humantime::parse_duration)]
    spin: Duration,
    /// Bytes queued towards one client past which it is cut as a slow consumer: its requests
    /// end with `SlowConsumer` and its connection is closed (the workers are not affected).
    /// Flow control keeps a client far below it unless its plugins cannot be paused.
    #[arg(long, env = "TRIGGERFS_MAX_CLIENT_BACKLOG", default_value = "64MiB")]
    max_client_backlog: bytesize::ByteSize,
    /// Bytes queued towards one client past which the output of its requests is paused at
    /// their workers (the plugin blocks in write) until a quarter of it is left; at most half
    /// of --max-client-backlog.
    #[arg(long, env = "TRIGGERFS_CLIENT_PAUSE_BACKLOG", default_value = "1MiB")]
    client_pause_backlog: bytesize::ByteSize,
    /// Bytes queued towards all clients together; past it every client is paused and one
    /// holding more than its share (this over the clients connected) is cut as a slow
    /// consumer.
    #[arg(
        long,
        env = "TRIGGERFS_MAX_CLIENT_BACKLOG_TOTAL",
        default_value = "256MiB"
    )]
    max_client_backlog_total: bytesize::ByteSize,
    /// Requests one client connection may have open at once; past it a new request is
    /// refused with `TooManyRequests` (the connection stays).
    #[arg(long, env = "TRIGGERFS_MAX_OPEN_REQUESTS", default_value_t = 10_000)]
    max_open_requests: usize,
    /// Requests per client connection and unit of time (`20000/s`, `600/m`); past it a request
    /// is refused with `RateLimited` (the connection stays). Default: no limit.
    #[arg(long, env = "TRIGGERFS_CLIENT_RATE")]
    client_rate: Option<dataplane::ClientRate>,
    /// Requests a client connection may send at once under `--client-rate` (the bucket's
    /// size); default: one second's worth.
    #[arg(long, env = "TRIGGERFS_CLIENT_BURST", requires = "client_rate")]
    client_burst: Option<u64>,
    /// Connections (handshake done) one address may have open; past it a new one is refused
    /// with `TooManyConnections`. Generous: the workers of one site behind NAT share one.
    #[arg(
        long,
        env = "TRIGGERFS_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 16_384
    )]
    max_connections_per_address: usize,
    /// On SIGTERM (or SIGINT), how long requests in flight may take to finish: new
    /// connections and requests are refused meanwhile; those still open at the end get
    /// `ShuttingDown`. A second signal stops at once.
    #[arg(long, env = "TRIGGERFS_DRAIN", default_value = "30s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

/// A server's TLS: its certificate and key, and the CA of the client certificates it checks.
#[derive(Args, Debug, Clone, Default)]
struct TlsArgs {
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, env = "TRIGGERFS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TRIGGERFS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA of client certificates: the broker then requires one, signed by it, from every
    /// worker (mutual TLS); clients need none.
    #[arg(long, env = "TRIGGERFS_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The server configuration, when TLS was asked for.
    fn server_config(&self) -> Result<Option<Arc<tls::rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(tls::server_config(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?)),
            _ => Ok(None),
        }
    }
}

#[derive(Args, Debug)]
struct BrokerArgs {
    /// Address to listen on.
    #[arg(long, env = "TRIGGERFS_LISTEN", default_value = "127.0.0.1:5555")]
    listen: SocketAddr,
    /// Control plane URL to take services and trust from (else [broker] of the config file).
    #[arg(long, env = "TRIGGERFS_CONTROL_URL")]
    control: Option<String>,
    /// The control plane's broker token (see its data dir's broker.token).
    #[arg(long, env = "TRIGGERFS_BROKER_TOKEN", hide_env_values = true)]
    broker_token: Option<String>,
    /// A file holding the broker token.
    #[arg(long, env = "TRIGGERFS_BROKER_TOKEN_FILE")]
    broker_token_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long, env = "TRIGGERFS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// With --control: record no job history (to measure what recording costs).
    #[arg(long, hide = true)]
    no_job_records: bool,
    #[command(flatten)]
    shard: ShardArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args, Debug)]
struct ApiArgs {
    /// Where the REST API listens.
    #[arg(long, env = "TRIGGERFS_API_LISTEN", default_value = "127.0.0.1:8080")]
    api_listen: SocketAddr,
    /// `postgres://...` to use PostgreSQL; default: SQLite in the data dir.
    #[arg(long, env = "TRIGGERFS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// How long a login's JWT is valid.
    #[arg(long, env = "TRIGGERFS_JWT_TTL", default_value = "12h", value_parser = humantime::parse_duration)]
    jwt_ttl: Duration,
    /// An API connection that takes longer to send a request's headers, or stays idle
    /// longer between requests, is closed.
    #[arg(long, env = "TRIGGERFS_HTTP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    http_timeout: Duration,
    /// A request body must arrive within this, plus 1 s per 64 KiB of it; else 408 and the
    /// connection is closed.
    #[arg(long, env = "TRIGGERFS_HTTP_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    http_body_timeout: Duration,
    /// API connections served at once (default: a quarter of the open-file limit). At the
    /// limit the connection idle longest is closed to make room; if none is idle, 503.
    #[arg(long, env = "TRIGGERFS_HTTP_MAX_CONNECTIONS")]
    http_max_connections: Option<usize>,
    /// API connections from one client address at once. At the cap that address's
    /// connection idle longest is closed to make room; if none is idle, 503. Keep it above
    /// --http-max-unauthenticated, so anonymous requests cannot fill an address's share.
    #[arg(long, env = "TRIGGERFS_HTTP_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = controlplane::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    http_max_connections_per_address: usize,
    /// API requests without valid credentials (no bearer token, or a bad or expired one)
    /// in progress at once, logins included; past it, 503 at once. Logged-in callers and
    /// the broker are not counted.
    #[arg(long, env = "TRIGGERFS_HTTP_MAX_UNAUTHENTICATED", default_value_t = controlplane::DEFAULT_MAX_UNAUTHENTICATED)]
    http_max_unauthenticated: usize,
    /// How long the job history keeps a request (e.g. `7d`, `12h`); older ones are deleted.
    #[arg(long, env = "TRIGGERFS_JOB_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    job_retention: Duration,
}

#[derive(Args, Debug)]
struct ControlArgs {
    /// Data directory (SQLite database, JWT key, broker token).
    #[arg(long, env = "TRIGGERFS_DATA", default_value = "triggerfs-data")]
    data: PathBuf,
    /// The broker the HTTP gateway sends requests through.
    #[arg(long, env = "TRIGGERFS_BROKER", default_value = "127.0.0.1:5555")]
    broker: String,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args, Debug)]
struct UpArgs {
    /// Data directory (database, keys, plugins, the admin's client config).
    #[arg(long, env = "TRIGGERFS_DATA", default_value = "triggerfs-data")]
    data: PathBuf,
    /// Broker address to listen on.
    #[arg(long, env = "TRIGGERFS_LISTEN", default_value = "127.0.0.1:5555")]
    listen: SocketAddr,
    /// Do not start the local worker.
    #[arg(long)]
    no_worker: bool,
    /// Also serve the broker's Prometheus metrics on this address (`/metrics`).
    #[arg(long, env = "TRIGGERFS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// TLS on both planes with a development CA made in the data dir (`<data>/tls`); the
    /// client config written on the first start trusts it (`ca`, `tls://`, `https://`).
    #[arg(long, conflicts_with = "tls_cert")]
    tls: bool,
    /// Serve plaintext on an address other than loopback (refused without it).
    #[arg(long)]
    insecure_plaintext: bool,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    shard: ShardArgs,
    #[command(flatten)]
    tls_files: TlsArgs,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// The worker's identity (also a service name).
    #[arg(long, env = "TRIGGERFS_IDENTITY")]
    identity: String,
    /// Broker address; default: [main] broker, else 127.0.0.1:5555.
    #[arg(long, env = "TRIGGERFS_BROKER")]
    broker: Option<String>,
    /// The worker's team; default: the team of [workers.<team>.<identity>].
    #[arg(long, env = "TRIGGERFS_TEAM")]
    team: Option<String>,
    /// The worker's token; default: from [workers.<team>.<identity>].
    #[arg(long, env = "TRIGGERFS_WORKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Directory of plugins; default: [workers] pluginspath.
    #[arg(long, env = "TRIGGERFS_PLUGINSPATH")]
    pluginspath: Option<PathBuf>,
    /// A service to announce besides the identity; repeat for more.
    #[arg(long = "service", env = "TRIGGERFS_SERVICES", value_delimiter = ',')]
    services: Vec<String>,
    /// Plugins running at once; further requests wait for a slot.
    #[arg(long, env = "TRIGGERFS_MAX_CONCURRENCY", default_value_t = 64)]
    max_concurrency: usize,
    /// The shell that runs the core plugin `command` (`sh -c`, or e.g. `bash` for bash
    /// syntax); default: [workers] shell, else `sh`.
    #[arg(long, env = "TRIGGERFS_SHELL")]
    shell: Option<String>,
    /// The seed's `-debug true`: log the acceptance, each announced service and every
    /// heartbeat sent and received.
    #[arg(long, env = "TRIGGERFS_DEBUG", num_args = 0..=1, default_missing_value = "true",
          default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    debug: bool,
    /// PEM client certificate presented to a broker that requires one (`--tls-client-ca`).
    #[arg(long, env = "TRIGGERFS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TRIGGERFS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Output (stdout and stderr, in bytes) one request's plugin may write; past it the
    /// plugin's process group is stopped and the request ends with `OutputLimit`.
    #[arg(long, env = "TRIGGERFS_MAX_OUTPUT", default_value = "64MiB")]
    max_output: bytesize::ByteSize,
}

fn main() {
    // A copy of this binary under a core plugin's name runs that plugin.
    if let Some(argv0) = std::env::args_os().next() {
        if let Some(name) = plugins::core_plugin_for_argv0(&argv0.to_string_lossy()) {
            std::process::exit(plugins::run_core(name));
        }
    }
    // The seed's names (`triggerfs-client` ...) and single-dash flags (`-service`).
    let cli = Cli::parse_from(seed::seed_args(
        &Cli::command(),
        std::env::args_os().collect(),
    ));
    let debug = match &cli.command {
        Command::Worker(args) => args.debug,
        Command::Client(args) => args.debug,
        _ => false,
    };
    let raised = raise_open_file_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if debug {
                    "info,client=debug,worker=debug"
                } else {
                    "info"
                })
            }),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    if let Err(e) = raised {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

/// Raises the soft limit on open files to the hard limit: the common soft default of 1,024
/// is a few hundred idle clients for a server. (Child processes, plugins included, inherit
/// the raised limit.)
fn raise_open_file_limit() -> std::io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(());
    }
    limit.rlim_cur = limit.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn run(cli: Cli) -> Result<i32> {
    let settings = Settings::load(cli.config.as_deref())?;
    // One rustls provider (ring) for the process, made the default before anything asks.
    tls::install_provider();
    let mut trust = tls::Trust {
        ca: cli.ca.clone().or_else(|| settings.ca.clone()),
        ..tls::Trust::default()
    };
    if let Command::Worker(args) = &cli.command {
        trust.cert = args.tls_cert.clone();
        trust.key = args.tls_key.clone();
    }
    // `up` sets its own (its development CA, its certificate for the local worker).
    if !matches!(cli.command, Command::Up(_)) {
        tls::set_trust(&trust)?;
    }
    match cli.command {
        Command::Broker(args) => run_broker(args, &settings),
        Command::Up(args) => {
            if let Some(addr) = args.metrics_listen {
                println!("metrics on http://{}/metrics", metrics_http::serve(addr)?);
            }
            let data = absolute(&args.data)?;
            let server_tls = up_tls(&args, &data, trust)?;
            // The HTTP gateway needs the broker's address before the broker starts (the
            // broker takes its configuration from the control plane): settle port 0 now.
            let listen = if args.listen.port() == 0 {
                std::net::TcpListener::bind(args.listen)?.local_addr()?
            } else {
                args.listen
            };
            up::run_up(
                up::ControlOptions {
                    data,
                    api_listen: args.api.api_listen,
                    database_url: args.api.database_url,
                    jwt_ttl: args.api.jwt_ttl,
                    broker_addr: Some(if server_tls.is_some() {
                        format!("tls://{}", up::connectable(listen))
                    } else {
                        listen.to_string()
                    }),
                    http_timeout: args.api.http_timeout,
                    http_max_connections: args.api.http_max_connections,
                    http_body_timeout: args.api.http_body_timeout,
                    http_max_connections_per_address: args.api.http_max_connections_per_address,
                    http_max_unauthenticated: args.api.http_max_unauthenticated,
                    job_retention: args.api.job_retention,
                    tls: server_tls.clone(),
                },
                dataplane::BrokerSettings {
                    worker_cert_required: args.tls_files.tls_client_ca.is_some(),
                    tls: server_tls,
                    ..broker_settings(listen, &args.shard)?
                },
                args.no_worker,
            )
        }
        Command::Control(args) => up::run_control(up::ControlOptions {
            data: absolute(&args.data)?,
            api_listen: args.api.api_listen,
            database_url: args.api.database_url,
            jwt_ttl: args.api.jwt_ttl,
            broker_addr: Some(args.broker),
            http_timeout: args.api.http_timeout,
            http_max_connections: args.api.http_max_connections,
            http_body_timeout: args.api.http_body_timeout,
            http_max_connections_per_address: args.api.http_max_connections_per_address,
            http_max_unauthenticated: args.api.http_max_unauthenticated,
            job_retention: args.api.job_retention,
            tls: args.tls.server_config()?,
        }),
        Command::Worker(args) => {
            let config = worker_config(args, &settings)?;
            // One thread for the connection's reader and writer and the plugins' pipes: a
            // dispatch's answer then passes from the reader to the writer without waking
            // another thread (with two threads, a third of a busy worker's time went to
            // those wake-ups). Blocking work (file writes of `file`, `append`) still goes to
            // the blocking pool.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                worker::run(config, shutdown_signal()).await?;
                Ok(0)
            })
        }
        Command::Client(mut args) => {
            if std::env::var_os("TRIGGERFS_BROKER").is_none() && args.broker == "127.0.0.1:5555" {
                if let Some(broker) = &settings.broker {
                    args.broker = broker.clone();
                }
            }
            // Flags and environment win; `[main]` of triggerfs.toml fills the rest.
            args.url = args.url.or_else(|| settings.url.clone());
            args.team = args.team.or_else(|| settings.team.clone());
            args.identity = args.identity.or_else(|| settings.identity.clone());
            args.secret = args.secret.or_else(|| settings.secret.clone());
            if let Some(id) = args.rerun {
                let only = args.rerun_only;
                return tokio_runtime()?.block_on(jobs_cmd::run_rerun(args, id, only));
            }
            tokio_runtime()?.block_on(async {
                match client_cmd::run(args).await {
                    Ok(code) => Ok(code),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        Ok(e.exit_status())
                    }
                }
            })
        }
        Command::Jobs(mut args) => {
            // Flags and environment win; `[main]` of triggerfs.toml fills the rest.
            args.url = args.url.or_else(|| settings.url.clone());
            args.team = args.team.or_else(|| settings.team.clone());
            args.identity = args.identity.or_else(|| settings.identity.clone());
            args.secret = args.secret.or_else(|| settings.secret.clone());
            tokio_runtime()?.block_on(jobs_cmd::run(args))
        }
        Command::Fs(args) => {
            let opts = fs_options(args, &settings)?;
            // One thread for the sender, the follower and the connection's tasks: a request's
            // frames then pass between them without waking another thread (the FUSE threads
            // and the spool's writer are threads of their own).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                fs::run(opts, shutdown_signal()).await?;
                Ok(0)
            })
        }
        // The bench's children are started from this (the main) thread, and die with it.
        #[cfg(feature = "bench")]
        Command::Bench(args) => tokio_runtime()?.block_on(bench::run(args)),
        #[cfg(feature = "bench")]
        Command::BenchChild(args) => bench::run_child(args),
        Command::Cli(args) => cli::run(args, &settings, cli.config.clone()),
        Command::InstallLinks { dir } => {
            for link in seed::install_links(&dir)? {
                println!("linked {}", link.display());
            }
            Ok(0)
        }
        Command::Plugins { command } => match command {
            PluginsCommand::Install { dir } => {
                for path in plugins::install(&dir)? {
                    println!("installed {}", path.display());
                }
                Ok(0)
            }
            PluginsCommand::List => {
                for name in plugins::CORE_PLUGINS {
                    println!("{name}");
                }
                Ok(0)
            }
        },
    }
}

/// `triggerfs fs`'s options: flags and environment first, then triggerfs.toml, then defaults.
fn fs_options(args: FsArgs, settings: &Settings) -> Result<fs::FsOptions> {
    let section = &settings.fs;
    let Some(mount) = args.mount.or_else(|| section.mountpoint.clone()) else {
        bail!(
            "no mount point: give --mount DIR or set mountpoint in [triggerfs] of triggerfs.toml"
        );
    };
    let need = |flag: Option<String>, key: &Option<String>, name: &str| {
        flag.or_else(|| key.clone()).with_context(|| {
            format!("no {name}: give --{name} or set {name} in [main] of triggerfs.toml")
        })
    };
    Ok(fs::FsOptions {
        mount,
        login: fs::control::Login {
            url: args
                .url
                .or_else(|| settings.url.clone())
                .unwrap_or_else(|| client::login::DEFAULT_URL.to_string()),
            team: need(args.team, &settings.team, "team")?,
            identity: need(args.identity, &settings.identity, "identity")?,
            secret: need(args.secret, &settings.secret, "secret")?,
        },
        broker: args
            .broker
            .or_else(|| settings.broker.clone())
            .unwrap_or_else(|| "127.0.0.1:5555".to_string()),
        logfile: args.logfile.or_else(|| section.logfile.clone()),
        spool_dir: args
            .spool
            .or_else(|| section.spool.clone())
            .unwrap_or_else(|| PathBuf::from("triggerfs-spool")),
        spool_max: args
            .spool_max
            .or(section.spool_max)
            .map_or(1 << 30, |b| b.as_u64()),
        spool_sync: args
            .spool_sync
            .or(section.spool_sync)
            .unwrap_or(Duration::from_millis(100)),
        threads: args.threads,
        quiet: args.quiet,
        allow_other: args.allow_other,
    })
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn broker_settings(listen: SocketAddr, shard: &ShardArgs) -> Result<dataplane::BrokerSettings> {
    let mut settings = dataplane::BrokerSettings {
        listen,
        heartbeat: shard.heartbeat,
        spin: shard.spin,
        max_client_backlog: usize::try_from(shard.max_client_backlog.as_u64())
            .unwrap_or(usize::MAX),
        client_pause_backlog: usize::try_from(shard.client_pause_backlog.as_u64())
            .unwrap_or(usize::MAX),
        max_client_backlog_total: usize::try_from(shard.max_client_backlog_total.as_u64())
            .unwrap_or(usize::MAX),
        max_open_requests: shard.max_open_requests.max(1),
        client_rate: shard.client_rate.map(|rate| match shard.client_burst {
            Some(burst) => rate.with_burst(burst),
            None => rate,
        }),
        max_connections_per_address: shard.max_connections_per_address.max(1),
        drain: shard.drain,
        ..Default::default()
    };
    if let Some(n) = shard.shards {
        if n == 0 {
            bail!("--shards must be at least 1");
        }
        settings.shards = n;
    }
    Ok(settings)
}

/// `up`'s TLS: the development CA (`--tls`) or the given files; refuses plaintext on an
/// address other than loopback without `--insecure-plaintext`. Sets the process's trust: the
/// development CA (unless `--ca` names another), and the server's certificate as the local
/// worker's client certificate (for `--tls-client-ca`).
fn up_tls(
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

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

fn run_broker(args: BrokerArgs, settings: &Settings) -> Result<i32> {
    let source: Arc<dyn dataplane::ConfigSource> = match &args.control {
        Some(url) => {
            let broker_token = match (&args.broker_token, &args.broker_token_file) {
                (Some(t), _) => t.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read {}", f.display()))?
                    .trim()
                    .to_string(),
                (None, None) => bail!("--control needs --broker-token or --broker-token-file"),
            };
            Arc::new(feed::ControlSource::start(feed::FeedSettings {
                url: url.trim_end_matches('/').to_string(),
                broker_token,
                record_jobs: !args.no_job_records,
            })?)
        }
        None => Arc::new(dataplane::FileConfig::parse(&settings.text).map_err(|e| {
            anyhow::anyhow!(
                "invalid [broker] section in {}: {e}",
                settings
                    .path
                    .as_deref()
                    .map_or("the config".into(), |p| p.display().to_string())
            )
        })?),
    };
    if let Some(addr) = args.metrics_listen {
        println!("metrics on http://{}/metrics", metrics_http::serve(addr)?);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Before `listening on`: a SIGTERM right after it drains, never kills.
    let signals = {
        let _context = runtime.enter();
        ShutdownSignals::new()?
    };
    let broker = dataplane::BrokerSettings {
        tls: args.tls.server_config()?,
        worker_cert_required: args.tls.tls_client_ca.is_some(),
        ..broker_settings(args.listen, &args.shard)?
    };
    let handle = dataplane::start(broker, source)?;
    println!("listening on {}", handle.local_addr());
    runtime.block_on(drain_broker(handle, signals))?;
    Ok(0)
}

/// SIGINT and SIGTERM, caught from when this is made (inside a tokio runtime).
pub(crate) struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub(crate) fn new() -> Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    /// Completes on the next SIGINT or SIGTERM.
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// After the first SIGINT/SIGTERM: drains `handle` (see `--drain`) and waits for its shards
/// to exit; a second signal meanwhile stops it at once.
pub(crate) async fn drain_broker(
    handle: dataplane::BrokerHandle,
    mut signals: ShutdownSignals,
) -> Result<()> {
    signals.recv().await;
    tracing::info!("shutdown signal: draining the broker");
    handle.drain();
    let handle = Arc::new(handle);
    let joined = {
        let handle = handle.clone();
        tokio::task::spawn_blocking(move || handle.wait())
    };
    tokio::pin!(joined);
    tokio::select! {
        r = &mut joined => r?,
        () = signals.recv() => {
            tracing::warn!("second shutdown signal: stopping the broker now");
            handle.stop();
            joined.await?;
        }
    }
    Ok(())
}

fn worker_config(args: WorkerArgs, settings: &Settings) -> Result<worker::WorkerConfig> {
    let from_file = settings.worker_credentials(args.team.as_deref(), &args.identity);
    let team = args
        .team
        .clone()
        .or_else(|| from_file.as_ref().map(|(t, _)| t.clone()))
        .or_else(|| settings.team.clone())
        .unwrap_or_else(|| "default".into());
    let token = args
        .token
        .or_else(|| from_file.map(|(_, t)| t))
        .unwrap_or_default();
    let pluginspath = args
        .pluginspath
        .or_else(|| settings.pluginspath.clone())
        .context("no plugins path: pass --pluginspath DIR or set [workers] pluginspath")?;
    if !Path::new(&pluginspath).is_dir() {
        bail!("plugins path {} is not a directory", pluginspath.display());
    }
    if args.max_concurrency == 0 {
        bail!("--max-concurrency must be at least 1");
    }
    Ok(worker::WorkerConfig {
        broker: args
            .broker
            .or_else(|| settings.broker.clone())
            .unwrap_or_else(|| "127.0.0.1:5555".into()),
        team,
        identity: args.identity,
        token,
        pluginspath,
        services: args.services,
        max_concurrency: args.max_concurrency,
        shell: args
            .shell
            .or_else(|| settings.shell.clone())
            .unwrap_or_else(|| worker::DEFAULT_SHELL.into()),
        reconnect_max: Duration::from_secs(1),
        debug: args.debug,
        max_output: args.max_output.as_u64(),
    })
}
