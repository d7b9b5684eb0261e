//! `plugin.toml`: what a plugin directory declares about its plugin.
//!
//! ```toml
//! # <pluginspath>/append/plugin.toml: the core plugin `append`, served inside the worker
//! core = "append"
//! sync = "interval:100ms"   # none (default) | batch | interval:<duration>
//! ```
//!
//! A directory with `core = "<name>"` needs no executable: the worker serves the core plugin
//! itself (`echo`, `file`, `append` as tasks; `command` as `sh -c`, without a copy of the
//! binary in between). Which plugins a worker offers stays the operator's choice: a core
//! plugin exists only where its directory does. Unknown keys are an error.

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The manifest's file name, beside the plugin's executable.
pub const MANIFEST: &str = "plugin.toml";

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file exists but could not be read.
    #[error("cannot read the plugin's manifest: {0}")]
    Read(#[from] std::io::Error),
    /// The TOML is invalid or has unknown keys.
    #[error("invalid plugin manifest: {0}")]
    Invalid(String),
}

/// The core plugins a manifest may name.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CorePlugin {
    /// Prints the payload (or the command line).
    Echo,
    /// Runs the command line (or the payload) with the worker's shell.
    Command,
    /// Writes the payload to the file in arg `path`.
    File,
    /// Appends the payload to the file in arg `path`.
    Append,
}

impl CorePlugin {
    /// The plugin's name.
    pub fn name(self) -> &'static str {
        match self {
            CorePlugin::Echo => "echo",
            CorePlugin::Command => "command",
            CorePlugin::File => "file",
            CorePlugin::Append => "append",
        }
    }
}

/// When `append` flushes what it wrote to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Never (the kernel writes back): a crash of the host may lose the last seconds.
    #[default]
    None,
    /// `fdatasync` after every batch, before its requests are answered.
    Batch,
    /// `fdatasync` at most once per interval; requests are answered after the write.
    Interval(Duration),
}

impl<'de> Deserialize<'de> for SyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SyncPolicy, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<SyncPolicy, String> {
        match text {
            "none" => Ok(SyncPolicy::None),
            "batch" => Ok(SyncPolicy::Batch),
            other => {
                let interval = other.strip_prefix("interval:").ok_or_else(|| {
                    format!("sync `{other}` is not one of none, batch, interval:<duration>")
                })?;
                let every = humantime::parse_duration(interval.trim())
                    .map_err(|e| format!("sync `{other}`: {e}"))?;
                if every.is_zero() {
                    return Err(format!("sync `{other}`: the interval must be above zero"));
                }
                Ok(SyncPolicy::Interval(every))
            }
        }
    }
}

/// A plugin directory's `plugin.toml`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// A core plugin the worker serves itself.
    pub core: Option<CorePlugin>,
    /// `append`: when to flush to disk.
    #[serde(default)]
    pub sync: SyncPolicy,
}

impl Manifest {
    /// Parses manifest text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Invalid(e.message().to_string()))?;
        if manifest.sync != SyncPolicy::None && manifest.core != Some(CorePlugin::Append) {
            return Err(ManifestError::Invalid(
                "`sync` applies to the core plugin `append` only".into(),
            ));
        }
        Ok(manifest)
    }

    /// Reads `<dir>/plugin.toml`; `None` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Manifest>, ManifestError> {
        match std::fs::read_to_string(dir.join(MANIFEST)) {
            Ok(text) => Manifest::parse(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The manifest `plugins install` writes for core plugin `core`.
    pub fn text_for(core: CorePlugin) -> String {
        format!(
            "# The core plugin `{0}`, served inside the worker (written by `triggerfs plugins install`).\ncore = \"{0}\"\n",
            core.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_core_plugins_and_sync_policies() {
        let m = Manifest::parse("core = \"append\"\nsync = \"interval:100ms\"").unwrap();
        assert_eq!(m.core, Some(CorePlugin::Append));
        assert_eq!(m.sync, SyncPolicy::Interval(Duration::from_millis(100)));
        let m = Manifest::parse("core = \"echo\"").unwrap();
        assert_eq!((m.core, m.sync), (Some(CorePlugin::Echo), SyncPolicy::None));
        assert_eq!(
            Manifest::parse("core = \"append\"\nsync = \"batch\"")
                .unwrap()
                .sync,
            SyncPolicy::Batch
        );
        for text in [
            CorePlugin::Echo,
            CorePlugin::Command,
            CorePlugin::File,
            CorePlugin::Append,
        ]
        .map(Manifest::text_for)
        {
            assert!(Manifest::parse(&text).unwrap().core.is_some(), "{text}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for bad in [
            "core = \"rm\"",
            "cor = \"echo\"",
            "core = \"append\"\nsync = \"always\"",
            "core = \"append\"\nsync = \"interval:0s\"",
            "core = \"append\"\nsync = \"interval:soon\"",
            "core = \"echo\"\nsync = \"batch\"",
            "core = [",
        ] {
            assert!(Manifest::parse(bad).is_err(), "{bad}");
        }
    }
}
