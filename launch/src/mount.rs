//! `triggerfs fs`: its flags and the options of the fs module they make.

use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct FsArgs {
    /// Where to mount (default: `[triggerfs] mountpoint` of triggerfs.toml).
    #[arg(long, env = "TRIGGERFS_MOUNT")]
    pub mount: Option<PathBuf>,
    /// Broker address (default: `[main] broker`, else 127.0.0.1:5555).
    #[arg(long, env = "TRIGGERFS_BROKER")]
    pub broker: Option<String>,
    /// Control plane URL (default: `[main] url`, else http://127.0.0.1:8080).
    #[arg(long, env = "TRIGGERFS_URL")]
    pub url: Option<String>,
    /// Team to log in to (default: `[main] team`).
    #[arg(long, env = "TRIGGERFS_TEAM")]
    pub team: Option<String>,
    /// User identity (default: `[main] identity`).
    #[arg(long, env = "TRIGGERFS_IDENTITY")]
    pub identity: Option<String>,
    /// The user's secret (default: `[main] secret`).
    #[arg(long, env = "TRIGGERFS_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Also log to this file (default: `[triggerfs] logfile`).
    #[arg(long, env = "TRIGGERFS_LOGFILE")]
    pub logfile: Option<PathBuf>,
    /// The spool's directory (default: `[triggerfs] spool`, else ./triggerfs-spool).
    #[arg(long, env = "TRIGGERFS_SPOOL")]
    pub spool: Option<PathBuf>,
    /// The spool's bound; past it writes fail with ENOSPC (default: `[triggerfs] spool_max`,
    /// else 1GiB).
    #[arg(long, env = "TRIGGERFS_SPOOL_MAX")]
    pub spool_max: Option<bytesize::ByteSize>,
    /// How often the spool is made durable (default: `[triggerfs] spool_sync`, else 100ms);
    /// fsync(2) on a trigger file makes it durable at once.
    #[arg(long, env = "TRIGGERFS_SPOOL_SYNC", value_parser = humantime::parse_duration)]
    pub spool_sync: Option<Duration>,
    /// FUSE threads.
    #[arg(long, env = "TRIGGERFS_FS_THREADS", default_value_t = 4)]
    pub threads: usize,
    /// Do not print responses on the terminal (the log file still has them).
    #[arg(long, env = "TRIGGERFS_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    pub quiet: bool,
    /// Let users other than the one mounting open the trigger files (e.g. a web server's
    /// workers); their mode bits still apply. Non-root mounts need `user_allow_other` in
    /// /etc/fuse.conf.
    #[arg(long, env = "TRIGGERFS_ALLOW_OTHER", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_other: bool,
}

/// `triggerfs fs`'s options: flags and environment first, then triggerfs.toml, then defaults.
pub fn fs_options(args: FsArgs, settings: &Settings) -> Result<fs::FsOptions> {
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
