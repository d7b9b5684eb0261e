//! [`Manifest`]: a plugin's `plugin.toml`, beside its executable.
//!
//! ```toml
//! persistent = true        # started once, serves many requests (see `persistent`)
//! max_concurrency = 64     # requests in flight inside one instance
//! restart_backoff = "1s"   # first delay before a restart after a failure; doubles, capped
//! cancel_grace = "2s"      # how long a cancelled request may take to answer `done`
//! ```
//!
//! or, for a core plugin the worker serves itself (no executable in the directory):
//!
//! ```toml
//! core = "append"
//! sync = "interval:100ms"  # append only: none (default) | batch | interval:<duration>
//! ```
//!
//! Every key is optional; a missing file means the plain fork-per-request contract. Unknown
//! keys are an error: a misspelt `persistant = true` must not silently fork per request.
//! Which plugins a worker offers stays the operator's choice: a core plugin exists only where
//! its directory does.

use serde::{Deserialize, Deserializer};
use std::path::Path;
use std::time::Duration;

/// The file name of a plugin's manifest, in the directory of its executable.
pub const MANIFEST_FILE: &str = "plugin.toml";

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
    /// Every core plugin, in the order [`crate::CORE_PLUGINS`] names them.
    pub const ALL: [CorePlugin; 4] = [
        CorePlugin::Echo,
        CorePlugin::Command,
        CorePlugin::File,
        CorePlugin::Append,
    ];

    /// The core plugin called `name`, if one is.
    pub fn from_name(name: &str) -> Option<CorePlugin> {
        CorePlugin::ALL
            .into_iter()
            .find(|plugin| plugin.name() == name)
    }

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
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SyncPolicy, D::Error> {
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

/// Default [`Manifest::max_concurrency`].
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;

/// Largest [`Manifest::max_concurrency`] accepted.
pub const MAX_CONCURRENCY_LIMIT: usize = 10_000;

/// Default [`Manifest::restart_backoff`].
pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// Default [`Manifest::cancel_grace`]: the worker's SIGTERM grace for plain plugins.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Longest duration accepted for `restart_backoff` and `cancel_grace`.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// A plugin's manifest.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Manifest {
    /// The worker starts the plugin once and sends it every request over stdin/stdout.
    pub persistent: bool,
    /// Requests in flight inside one instance; more wait in the worker.
    pub max_concurrency: usize,
    /// Delay before the first restart after an instance failed; doubled after each further
    /// failure without a request answered in between, up to [`Manifest::restart_backoff_cap`].
    #[serde(deserialize_with = "duration")]
    pub restart_backoff: Duration,
    /// How long a cancelled request may take to answer `done` before the instance is killed.
    #[serde(deserialize_with = "duration")]
    pub cancel_grace: Duration,
    /// A core plugin the worker serves itself.
    pub core: Option<CorePlugin>,
    /// `append`: when to flush to disk.
    pub sync: SyncPolicy,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            persistent: false,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            restart_backoff: DEFAULT_RESTART_BACKOFF,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            core: None,
            sync: SyncPolicy::None,
        }
    }
}

/// Why a manifest could not be used. The text names no path: it may reach a client.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file exists but could not be read.
    #[error("cannot read plugin.toml: {0}")]
    Read(String),
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid plugin.toml: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("invalid plugin.toml: {0}")]
    Invalid(String),
}

/// A humantime duration (`"1s"`, `"250ms"`, `"1m 30s"`).
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration: {e}")))
}

impl Manifest {
    /// Parses manifest text and checks its values.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            // One line: the message and where, without toml's multi-line snippet.
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ManifestError::Parse(format!("{}{at}", e.message().trim_end()))
        })?;
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), ManifestError> {
        if self.sync != SyncPolicy::None && self.core != Some(CorePlugin::Append) {
            return Err(ManifestError::Invalid(
                "`sync` applies to the core plugin `append` only".into(),
            ));
        }
        if self.core.is_some() && self.persistent {
            return Err(ManifestError::Invalid(
                "a core plugin is served by the worker itself: it is not `persistent`".into(),
            ));
        }
        if !(1..=MAX_CONCURRENCY_LIMIT).contains(&self.max_concurrency) {
            return Err(ManifestError::Invalid(format!(
                "max_concurrency must be between 1 and {MAX_CONCURRENCY_LIMIT}, not {}",
                self.max_concurrency
            )));
        }
        for (key, value) in [
            ("restart_backoff", self.restart_backoff),
            ("cancel_grace", self.cancel_grace),
        ] {
            if value > MAX_DURATION {
                return Err(ManifestError::Invalid(format!(
                    "{key} must be at most {}",
                    humantime::format_duration(MAX_DURATION)
                )));
            }
        }
        Ok(())
    }

    /// Reads `<dir>/plugin.toml`: `Ok(None)` when there is none (a plain plugin).
    pub fn load(dir: &Path) -> Result<Option<Manifest>, ManifestError> {
        match std::fs::read_to_string(dir.join(MANIFEST_FILE)) {
            Ok(text) => Manifest::parse(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            // The kind only: an I/O error's text may carry a path.
            Err(e) => Err(ManifestError::Read(match e.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
                None => e.kind().to_string(),
            })),
        }
    }

    /// The manifest `plugins install` writes for core plugin `core`.
    pub fn text_for(core: CorePlugin) -> String {
        format!(
            "# The core plugin `{0}`, served inside the worker (written by `triggerfs plugins install`).\ncore = \"{0}\"\n",
            core.name()
        )
    }

    /// The longest delay between restarts: 30 s, or [`Manifest::restart_backoff`] when that
    /// is longer.
    pub fn restart_backoff_cap(&self) -> Duration {
        self.restart_backoff.max(Duration::from_secs(30))
    }

    /// The delay before a restart after `failures` consecutive failures (≥ 1): the backoff
    /// doubled `failures - 1` times, capped.
    pub fn restart_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.restart_backoff
            .saturating_mul(1 << doublings)
            .min(self.restart_backoff_cap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_manifest() {
        assert_eq!(Manifest::parse("").unwrap(), Manifest::default());
        assert!(!Manifest::default().persistent);
        let m = Manifest::parse(
            "persistent = true\nmax_concurrency = 8\nrestart_backoff = \"250ms\"\ncancel_grace = \"1m 30s\"\n",
        )
        .unwrap();
        assert_eq!(
            m,
            Manifest {
                persistent: true,
                max_concurrency: 8,
                restart_backoff: Duration::from_millis(250),
                cancel_grace: Duration::from_secs(90),
                ..Manifest::default()
            }
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let cases = [
            ("persistant = true", "unknown field `persistant`", 1),
            ("persistent = true\nfoo = 1", "unknown field `foo`", 2),
            ("persistent = \"yes\"", "invalid type", 1),
            ("restart_backoff = \"soon\"", "`soon` is not a duration", 1),
            ("restart_backoff = 5", "invalid type", 1),
            ("max_concurrency = -1", "invalid value", 1),
            ("persistent = true\n[x]\n", "unknown field `x`", 2),
            ("persistent = ", "", 1),
        ];
        for (text, want, line) in cases {
            let err = Manifest::parse(text).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ManifestError::Parse(_)), "{text}: {err:?}");
            assert!(msg.contains(want), "{text}: {msg}");
            assert!(msg.contains(&format!("(line {line})")), "{text}: {msg}");
            assert!(!msg.contains('\n'), "one line: {msg:?}");
        }
        // The whole text, as plugins/README.md shows it.
        assert_eq!(
            Manifest::parse("persistant = true")
                .unwrap_err()
                .to_string(),
            "invalid plugin.toml: unknown field `persistant`, expected one of `persistent`, \
             `max_concurrency`, `restart_backoff`, `cancel_grace`, `core`, `sync` (line 1)"
        );
        for (text, want) in [
            (
                "max_concurrency = 0",
                "max_concurrency must be between 1 and",
            ),
            ("max_concurrency = 10001", "not 10001"),
            ("cancel_grace = \"2h\"", "cancel_grace must be at most 1h"),
        ] {
            let err = Manifest::parse(text).unwrap_err();
            assert!(matches!(err, ManifestError::Invalid(_)), "{text}: {err:?}");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn core_plugins_and_sync_policies() {
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
        for core in [
            CorePlugin::Echo,
            CorePlugin::Command,
            CorePlugin::File,
            CorePlugin::Append,
        ] {
            let text = Manifest::text_for(core);
            assert_eq!(Manifest::parse(&text).unwrap().core, Some(core), "{text}");
        }
        for bad in [
            "core = \"rm\"",
            "core = \"append\"\nsync = \"always\"",
            "core = \"append\"\nsync = \"interval:0s\"",
            "core = \"append\"\nsync = \"interval:soon\"",
            "core = \"echo\"\nsync = \"batch\"",
            "core = \"echo\"\npersistent = true",
        ] {
            assert!(Manifest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn load_reads_the_file_beside_the_executable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(MANIFEST_FILE), "persistent = true\n").unwrap();
        assert!(Manifest::load(dir.path()).unwrap().unwrap().persistent);
        std::fs::write(dir.path().join(MANIFEST_FILE), "persistent = maybe\n").unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(!err.contains(dir.path().to_str().unwrap()), "{err}");
        // A directory where the file should be: a read error, named without the path.
        std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
        std::fs::create_dir(dir.path().join(MANIFEST_FILE)).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Read(_)), "{err:?}");
        assert!(!err.to_string().contains(dir.path().to_str().unwrap()));
    }

    #[test]
    fn restart_delay_doubles_up_to_the_cap() {
        let m = Manifest {
            restart_backoff: Duration::from_secs(1),
            ..Manifest::default()
        };
        let delays: Vec<u64> = (1..=8).map(|n| m.restart_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(m.restart_delay(u32::MAX), Duration::from_secs(30));
        let long = Manifest {
            restart_backoff: Duration::from_secs(60),
            ..Manifest::default()
        };
        assert_eq!(long.restart_delay(3), Duration::from_secs(60));
        let zero = Manifest {
            restart_backoff: Duration::ZERO,
            ..Manifest::default()
        };
        assert_eq!(zero.restart_delay(5), Duration::ZERO);
    }
}
