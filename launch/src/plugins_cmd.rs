//! `triggerfs plugins install DIR` and `triggerfs plugins list [DIR]`.

use crate::settings::Settings;
use anyhow::{Context, Result};
use plugins::Kind;
use std::path::PathBuf;

/// `triggerfs plugins ...`.
#[derive(clap::Subcommand, Debug)]
pub enum PluginsCommand {
    /// Lay out the core plugins (echo, command, file, append) as DIR/<name>/plugin.toml.
    ///
    /// Each manifest says `core = "<name>"`: the worker serves the plugin itself, so no
    /// executable is written.
    Install {
        /// The plugins directory (a worker's `pluginspath`).
        dir: PathBuf,
    },
    /// List the plugins a plugins path offers, and how a worker serves each.
    ///
    /// Executables directly in it (DIR/<name>, the plain contract), directories DIR/<name>
    /// with a core plugin's `plugin.toml` or an executable DIR/<name>/<name> (plain or
    /// persistent), and what is refused (e.g. a symlink out of it). Without DIR and
    /// `[workers] pluginspath`: the core plugins' names.
    List {
        /// The plugins directory (else `[workers] pluginspath`).
        dir: Option<PathBuf>,
    },
}

/// Runs `command`; the exit status.
pub fn run(command: PluginsCommand, settings: &Settings) -> Result<i32> {
    match command {
        PluginsCommand::Install { dir } => {
            for path in plugins::install(&dir)? {
                println!("installed {}", path.display());
            }
        }
        PluginsCommand::List { dir } => {
            let Some(dir) = dir.or_else(|| settings.workers.pluginspath.clone()) else {
                for name in plugins::CORE_PLUGINS {
                    println!("{name}");
                }
                return Ok(0);
            };
            let listed = plugins::list(&dir)
                .with_context(|| format!("cannot list plugins path {}", dir.display()))?;
            let width = listed.iter().map(|l| l.name.len()).max().unwrap_or(0);
            for plugin in listed {
                let what = match plugin.kind {
                    Kind::Core(core) => format!("core      {} (served by the worker)", core.name()),
                    Kind::Plain(path) => format!("plain     {}", path.display()),
                    Kind::Persistent(path) => format!("persistent {}", path.display()),
                    Kind::Refused(why) => format!("refused   {why}"),
                };
                println!("{:width$}  {what}", plugin.name);
            }
        }
    }
    Ok(0)
}
