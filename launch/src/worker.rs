//! `triggerfs worker`: its flags, and the worker run until SIGINT or SIGTERM.

use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags of `triggerfs worker`; those of a `[main]` or `[workers]` key default to it (see
/// [`Settings::under_flags`]).
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The worker's identity (also a service name).
    #[arg(long, env = "TRIGGERFS_IDENTITY")]
    pub identity: String,
    /// Broker addresses, comma-separated (else `[main] broker` of triggerfs.toml, a string or
    /// a list): seeds. The worker connects to each, and to every node of the cell they name.
    #[arg(long, env = "TRIGGERFS_BROKER", default_value = "127.0.0.1:5555")]
    pub broker: client::BrokerList,
    /// The worker's team (else the team of `[workers.<team>.<identity>]`, else `[main] team`).
    #[arg(long, env = "TRIGGERFS_TEAM")]
    pub team: Option<String>,
    /// The worker's token (else that of `[workers.<team>.<identity>]`).
    #[arg(long, env = "TRIGGERFS_WORKER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Directory of plugins (else `[workers] pluginspath`).
    #[arg(long, env = "TRIGGERFS_PLUGINSPATH")]
    pub pluginspath: Option<PathBuf>,
    /// A service to announce besides the identity; repeat for more.
    #[arg(long = "service", env = "TRIGGERFS_SERVICES", value_delimiter = ',')]
    pub services: Vec<String>,
    /// Plugins running at once; further requests wait for a slot.
    #[arg(long, env = "TRIGGERFS_MAX_CONCURRENCY", default_value_t = 64)]
    pub max_concurrency: usize,
    /// The shell that runs the core plugin `command` (`sh -c`, or e.g. `bash` for bash
    /// syntax); else `[workers] shell`.
    #[arg(long, env = "TRIGGERFS_SHELL", default_value = worker::DEFAULT_SHELL)]
    pub shell: String,
    /// The seed's `-debug true`: log the acceptance, each announced service and every
    /// heartbeat sent and received.
    #[arg(long, env = "TRIGGERFS_DEBUG", num_args = 0..=1, default_missing_value = "true",
          default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub debug: bool,
    /// PEM client certificate presented to a broker that requires one (`--tls-client-ca`).
    #[arg(long, env = "TRIGGERFS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TRIGGERFS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Output (stdout and stderr, in bytes) one request's plugin may write; past it the
    /// plugin's process group is stopped and the request ends with `OutputLimit`.
    #[arg(long, env = "TRIGGERFS_MAX_OUTPUT", default_value = "64MiB")]
    pub max_output: bytesize::ByteSize,
}

impl WorkerArgs {
    /// The worker's configuration; an error when the plugins path is missing or the limits
    /// are out of range.
    pub fn config(self, settings: &Settings) -> Result<worker::WorkerConfig> {
        let (team, token) = settings.worker_login(self.team, &self.identity, self.token);
        let pluginspath = self
            .pluginspath
            .context("no plugins path: pass --pluginspath DIR or set [workers] pluginspath")?;
        if !Path::new(&pluginspath).is_dir() {
            bail!("plugins path {} is not a directory", pluginspath.display());
        }
        if self.max_concurrency == 0 {
            bail!("--max-concurrency must be at least 1");
        }
        Ok(worker::WorkerConfig {
            brokers: self.broker,
            team,
            identity: self.identity,
            token,
            pluginspath,
            services: self.services,
            max_concurrency: self.max_concurrency,
            shell: self.shell,
            reconnect_max: Duration::from_secs(1),
            debug: self.debug,
            max_output: self.max_output.as_u64(),
        })
    }
}

/// `triggerfs worker`: connects out and serves until SIGINT or SIGTERM.
/// `trust` (the CA) gets the worker's client certificate, if any, before it is set.
pub fn run(args: WorkerArgs, settings: &Settings, mut trust: tls::Trust) -> Result<i32> {
    trust.cert = args.tls_cert.clone();
    trust.key = args.tls_key.clone();
    tls::set_trust(&trust)?;
    let config = args.config(settings)?;
    // One thread for the connection's reader and writer and the plugins' pipes: a
    // dispatch's answer then passes from the reader to the writer without waking another
    // thread (with two threads, a third of a busy worker's time went to those wake-ups).
    // Blocking work (file writes of `file`, `append`) still goes to the blocking pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(worker::run(config, crate::signals::shutdown_signal()))?;
    Ok(0)
}
