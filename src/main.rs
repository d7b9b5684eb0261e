//! The `triggerfs` binary: parses arguments and calls the library crates.
//!
//! When started under the name of a core plugin (`<pluginspath>/command/command` a copy of
//! this binary, as `triggerfs plugins install` used to lay them out), it runs that plugin
//! instead; the worker now serves core plugins itself.

#[cfg(test)]
mod seed_tests;
#[cfg(test)]
mod settings_tests;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cli::{client_cmd, cluster_cmd, console, jobs_cmd, schedules_cmd};
use launch::settings::Settings;
use launch::{broker, control, mount, plugins_cmd, seed, up, worker};
use std::ffi::OsString;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

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
    /// addresses and `https://` URLs (else `[main] ca`, else the public web PKI roots).
    #[arg(long, global = true, env = "TRIGGERFS_CA")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Broker and a local worker with the core plugins, in one process: zero set-up.
    Up(up::UpArgs),
    /// Run the broker.
    Broker(broker::BrokerArgs),
    /// Run the control plane (REST API, SQLite or PostgreSQL) alone.
    Control(control::ControlArgs),
    /// Run a worker that connects out to the broker and serves requests with plugins.
    Worker(worker::WorkerArgs),
    /// Send one request to a service and stream its output.
    Client(client_cmd::ClientArgs),
    /// The job history: every request through a service (`list`, `show ID`).
    Jobs(jobs_cmd::JobsArgs),
    /// Schedules: requests the control plane runs on a timetable (`list`, `create`, `run`,
    /// `pause`, `resume`, ...).
    Schedules(schedules_cmd::SchedulesArgs),
    /// The cell of brokers (`status`: its live nodes, last seen, connections, workers).
    Cluster(cluster_cmd::ClusterArgs),
    /// Mount the team's trigger files (FUSE): every write to one is a request.
    Fs(mount::FsArgs),
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
    /// Create the seed's program names (triggerfs-client, triggerfs-worker, triggerfs-fs,
    /// triggerfs-cli) in DIR as symlinks to this binary; started under one, it runs that
    /// subcommand.
    InstallLinks {
        /// Where to create the links (e.g. a directory on PATH).
        dir: PathBuf,
    },
    /// Manage plugins.
    Plugins {
        #[command(subcommand)]
        command: plugins_cmd::PluginsCommand,
    },
}

fn main() {
    // A copy of this binary under a core plugin's name runs that plugin.
    if let Some(argv0) = std::env::args_os().next() {
        if let Some(name) = plugins::core_plugin_for_argv0(&argv0.to_string_lossy()) {
            std::process::exit(plugins::run_core(name));
        }
    }
    // The seed's names (`triggerfs-client` ...) and single-dash flags (`-service`).
    let args = seed::seed_args(&Cli::command(), std::env::args_os().collect());
    let (cli, settings) = parse(args);
    let debug = match &cli.command {
        Command::Worker(args) => args.debug,
        Command::Client(args) => args.debug,
        _ => false,
    };
    // The soft limit on open files up to the hard one: the common soft default of 1,024 is a
    // few hundred idle clients for a server. (Child processes, plugins included, inherit it.)
    let raised = rlimit::increase_nofile_limit(u64::MAX);
    let filter = match debug {
        true => "info,client=debug,worker=debug",
        false => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter)),
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
    let code = match settings.and_then(|settings| run(cli, &settings)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

/// The command line over triggerfs.toml: the file named by `--config` (or
/// `$TRIGGERFS_CONFIG`, else `$HOME/triggerfs.toml`) gives the defaults of the flags that
/// stand for its keys ([`Settings::under_flags`]). A file that cannot be read is the error
/// returned, after the command line is checked (so `--help` still works).
fn parse(mut args: Vec<OsString>) -> (Cli, Result<Settings>) {
    // A first pass, errors ignored, finds `--config` wherever it is.
    let first = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&args)
        .ok();
    let config = first
        .as_ref()
        .and_then(|matches| matches.get_one::<PathBuf>("config").cloned());
    let settings = Settings::load(config.as_deref());
    // `triggerfs` alone: the fs module, as the original's `./triggerfs`, when the file says
    // where to mount; else the usage and how to mount.
    let asks = ["-h", "--help", "-V", "--version", "help"];
    let asks = args.iter().skip(1).any(|a| asks.iter().any(|h| a == h));
    if !asks && first.is_some_and(|m| m.subcommand_name().is_none()) {
        match &settings {
            Ok(settings) if mount::bare_runs_fs(settings) => args.push("fs".into()),
            _ => {
                eprintln!("{}\n{}", Cli::command().render_usage(), mount::HOW_TO_MOUNT);
                std::process::exit(2);
            }
        }
    }
    let command = match &settings {
        Ok(settings) => settings.under_flags(Cli::command()),
        Err(_) => Cli::command(),
    };
    let cli = command
        .try_get_matches_from(args)
        .and_then(|matches| Cli::from_arg_matches(&matches))
        .unwrap_or_else(|e| e.exit());
    (cli, settings)
}

fn run(cli: Cli, settings: &Settings) -> Result<i32> {
    // One rustls provider (ring) for the process, made the default before anything asks.
    tls::install_provider();
    let trust = tls::Trust {
        ca: cli.ca,
        ..tls::Trust::default()
    };
    // `up` and `worker` add to it (a development CA, a client certificate).
    if !matches!(cli.command, Command::Up(_) | Command::Worker(_)) {
        tls::set_trust(&trust)?;
    }
    match cli.command {
        Command::Up(args) => up::run(args, trust),
        Command::Broker(args) => broker::run(args, settings),
        Command::Control(args) => control::run(args),
        Command::Worker(args) => worker::run(args, settings, trust),
        Command::Fs(args) => mount::run(args, env!("CARGO_PKG_VERSION")),
        Command::Client(args) => client_cmd::main(args),
        Command::Jobs(args) => jobs_cmd::main(args),
        Command::Schedules(args) => schedules_cmd::main(args),
        Command::Cluster(args) => cluster_cmd::main(args),
        Command::Cli(args) => console::run(args, cli.config),
        // The bench's children are started from this (the main) thread, and die with it.
        #[cfg(feature = "bench")]
        Command::Bench(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(bench::run(args)),
        #[cfg(feature = "bench")]
        Command::BenchChild(args) => bench::run_child(args),
        Command::InstallLinks { dir } => {
            for link in seed::install_links(&dir)? {
                println!("linked {}", link.display());
            }
            Ok(0)
        }
        Command::Plugins { command } => plugins_cmd::run(command, settings),
    }
}
