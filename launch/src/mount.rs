//! `triggerfs fs`: its flags, and the fs module run until SIGINT or SIGTERM; also what
//! `triggerfs` alone runs (the original's `./triggerfs` was the fs module).

use crate::settings::{LoginArgs, Settings};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `triggerfs fs`; those of a `[triggerfs]` or `[main]` key default to it (see
/// [`crate::settings::Settings::under_flags`]).
#[derive(Args, Debug)]
pub struct FsArgs {
    /// Where to mount (else `[triggerfs] mountpoint` of triggerfs.toml).
    #[arg(long, env = "TRIGGERFS_MOUNT")]
    pub mount: Option<PathBuf>,
    /// Broker address (else `[main] broker`); several, comma-separated, to fail over between
    /// a cell's nodes.
    #[arg(long, env = "TRIGGERFS_BROKER", default_value = "127.0.0.1:5555")]
    pub broker: client::BrokerList,
    #[command(flatten)]
    pub login: LoginArgs,
    /// Also log to this file (else `[triggerfs] logfile`).
    #[arg(long, env = "TRIGGERFS_LOGFILE")]
    pub logfile: Option<PathBuf>,
    /// The spool's directory (else `[triggerfs] spool`).
    #[arg(long, env = "TRIGGERFS_SPOOL", default_value = "triggerfs-spool")]
    pub spool: PathBuf,
    /// The spool's bound; past it writes fail with ENOSPC (else `[triggerfs] spool_max`).
    #[arg(long, env = "TRIGGERFS_SPOOL_MAX", default_value = "1GiB")]
    pub spool_max: bytesize::ByteSize,
    /// How often the spool is made durable (else `[triggerfs] spool_sync`); fsync(2) on a
    /// trigger file makes it durable at once.
    #[arg(long, env = "TRIGGERFS_SPOOL_SYNC", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub spool_sync: Duration,
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

impl FsArgs {
    /// The fs module's options; an error when the mount point or the login is missing.
    pub fn options(self) -> Result<fs::FsOptions> {
        let mount = self.mount.context(
            "no mount point: give --mount DIR or set mountpoint in [triggerfs] of triggerfs.toml",
        )?;
        Ok(fs::FsOptions {
            mount,
            login: self.login.required("")?,
            broker: self.broker,
            logfile: self.logfile,
            spool_dir: self.spool,
            spool_max: self.spool_max.as_u64(),
            spool_sync: self.spool_sync,
            threads: self.threads,
            quiet: self.quiet,
            allow_other: self.allow_other,
        })
    }
}

/// What `triggerfs` with no subcommand says under its usage when triggerfs.toml has no
/// `[triggerfs]` section.
pub const HOW_TO_MOUNT: &str = "To mount the trigger files: `triggerfs fs --mount DIR`, or \
    add a [triggerfs] section to triggerfs.toml (mountpoint = \"./mountpoint\") and run \
    `triggerfs` alone, as the original's ./triggerfs.";

/// Whether `triggerfs` alone runs the fs module: when `settings` has a `[triggerfs]` section.
pub fn bare_runs_fs(settings: &Settings) -> bool {
    toml::from_str::<toml::Table>(&settings.text).is_ok_and(|t| t.contains_key("triggerfs"))
}

/// The original's start-up banner, with this binary's `version`.
pub fn banner(version: &str) -> String {
    let stars = "*".repeat(82);
    format!(
        "triggerfs (v{version})\n\n{stars}\n*** Welcome to triggerFS. A realtime messaging and \
         distributed trigger system. ***\n{stars}\n"
    )
}

/// `triggerfs fs`: prints the banner, mounts, and serves until SIGINT or SIGTERM.
pub fn run(args: FsArgs, version: &str) -> Result<i32> {
    let opts = args.options()?;
    println!("{}", banner(version));
    // One thread for the sender, the follower and the connection's tasks: a request's
    // frames then pass between them without waking another thread (the FUSE threads and
    // the spool's writer are threads of their own).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(fs::run(opts, crate::signals::shutdown_signal()))?;
    Ok(0)
}
