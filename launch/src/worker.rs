//! `triggerfs worker`: its flags and the worker's configuration they make.

use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The worker's identity (also a service name).
    #[arg(long, env = "TRIGGERFS_IDENTITY")]
    pub identity: String,
    /// Broker address; default: [main] broker, else 127.0.0.1:5555.
    #[arg(long, env = "TRIGGERFS_BROKER")]
    pub broker: Option<String>,
    /// The worker's team; default: the team of [workers.<team>.<identity>].
    #[arg(long, env = "TRIGGERFS_TEAM")]
    pub team: Option<String>,
    /// The worker's token; default: from [workers.<team>.<identity>].
    #[arg(long, env = "TRIGGERFS_WORKER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Directory of plugins; default: [workers] pluginspath.
    #[arg(long, env = "TRIGGERFS_PLUGINSPATH")]
    pub pluginspath: Option<PathBuf>,
    /// A service to announce besides the identity; repeat for more.
    #[arg(long = "service", env = "TRIGGERFS_SERVICES", value_delimiter = ',')]
    pub services: Vec<String>,
    /// Plugins running at once; further requests wait for a slot.
    #[arg(long, env = "TRIGGERFS_MAX_CONCURRENCY", default_value_t = 64)]
    pub max_concurrency: usize,
    /// The shell that runs the core plugin `command` (`sh -c`, or e.g. `bash` for bash
    /// syntax); default: [workers] shell, else `sh`.
    #[arg(long, env = "TRIGGERFS_SHELL")]
    pub shell: Option<String>,
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

pub fn worker_config(args: WorkerArgs, settings: &Settings) -> Result<worker::WorkerConfig> {
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
