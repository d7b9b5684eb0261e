//! The `triggerfs` binary: parses arguments and calls the library crates.
//!
//! When started under the name of a core plugin (`<pluginspath>/command/command` a copy of
//! this binary, as `triggerfs plugins install` used to lay them out), it runs that plugin
//! instead; the worker now serves core plugins itself.

#[cfg(test)]
mod seed_tests;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use cli::{client_cmd, console, jobs_cmd};
use launch::broker::{broker_settings, run_broker, BrokerArgs};
use launch::mount::{fs_options, FsArgs};
use launch::settings::Settings;
use launch::signals::shutdown_signal;
use launch::up::{self, absolute, up_tls, ControlArgs, UpArgs};
use launch::worker::{worker_config, WorkerArgs};
use launch::{metrics_http, seed};
use std::path::PathBuf;

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
    Cli(console::CliArgs),
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
        Command::Cli(args) => console::run(args, &settings, cli.config.clone()),
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
fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
