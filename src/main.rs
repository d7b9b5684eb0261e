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
    #[arg(long, env = "TRIGGERFS_MAX_CLIENT_BACKLOG", default_value = "64MiB")]
    max_client_backlog: bytesize::ByteSize,
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
    /// An API connection that takes longer to send a request's headers (or its body), or
    /// stays idle longer between requests, is closed.
    #[arg(long, env = "TRIGGERFS_HTTP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    http_timeout: Duration,
    /// API connections served at once (default: a quarter of the open-file limit).
    #[arg(long, env = "TRIGGERFS_HTTP_MAX_CONNECTIONS")]
    http_max_connections: Option<usize>,
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
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    shard: ShardArgs,
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
    match cli.command {
        Command::Broker(args) => run_broker(args, &settings),
        Command::Up(args) => {
            if let Some(addr) = args.metrics_listen {
                println!("metrics on http://{}/metrics", metrics_http::serve(addr)?);
            }
            let data = absolute(&args.data)?;
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
                    broker_addr: Some(listen.to_string()),
                    http_timeout: args.api.http_timeout,
                    http_max_connections: args.api.http_max_connections,
                    job_retention: args.api.job_retention,
                },
                broker_settings(listen, &args.shard)?,
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
            job_retention: args.api.job_retention,
        }),
        Command::Worker(args) => {
            let config = worker_config(args, &settings)?;
            tokio_runtime()?.block_on(async {
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
    let handle = dataplane::start(broker_settings(args.listen, &args.shard)?, source)?;
    println!("listening on {}", handle.local_addr());
    wait_then_stop(handle)
}

fn wait_then_stop(handle: dataplane::BrokerHandle) -> Result<i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(shutdown_signal());
    handle.stop();
    handle.join();
    Ok(0)
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
    })
}
