//! `triggerfs.toml`: the one configuration file every subcommand reads.
//!
//! Sections as in the original product: `[main]` (team, identity, secret, broker, url),
//! `[workers]` (`pluginspath`, and `[workers.<team>.<identity>] token = "..."`), `[broker]`
//! (services, until the control plane serves them) and `[triggerfs]` (the fs module).
//! Searched as `--config FILE`, else `$TRIGGERFS_CONFIG`, else `$HOME/triggerfs.toml`; a
//! missing default file is simply empty.
//!
//! The file meets the command line in one place, [`Settings::under_flags`]: each value
//! becomes the default of the flag that stands for it, so that clap layers the command line,
//! then the `TRIGGERFS_*` environment, then the file, then the built-in default.

use anyhow::{Context, Result};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// How a command logs in to the control plane; each flag also a `TRIGGERFS_*` variable and
/// a key of `[main]`. Global: `triggerfs jobs --team T list` and `jobs list --team T` alike.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// Control plane URL (else `[main] url` of triggerfs.toml); several, comma-separated, to
    /// fail over between replicas.
    #[arg(long, env = "TRIGGERFS_URL", global = true, default_value = client::login::DEFAULT_URL)]
    pub url: String,
    /// Team to log in to (else `[main] team`).
    #[arg(long, env = "TRIGGERFS_TEAM", global = true)]
    pub team: Option<String>,
    /// User identity to log in as (else `[main] identity`).
    #[arg(long, env = "TRIGGERFS_IDENTITY", global = true)]
    pub identity: Option<String>,
    /// The user's secret (else `[main] secret`).
    #[arg(long, env = "TRIGGERFS_SECRET", hide_env_values = true, global = true)]
    pub secret: Option<String>,
}

impl LoginArgs {
    /// The login with team, identity and secret all given; else an error naming the first
    /// one missing, with `hint` after it.
    pub fn required(&self, hint: &str) -> Result<fs::control::Login> {
        let need = |value: &Option<String>, name: &str| {
            value.clone().with_context(|| {
                format!("no {name}: give --{name} or set {name} in [main] of triggerfs.toml{hint}")
            })
        };
        Ok(fs::control::Login {
            url: self.url.clone(),
            team: need(&self.team, "team")?,
            identity: need(&self.identity, "identity")?,
            secret: need(&self.secret, "secret")?,
        })
    }
}

/// What the binary takes from `triggerfs.toml`: its sections; others (`[broker]`) are
/// parsed by other crates from [`Settings::text`].
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Settings {
    /// The file it came from, if any.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// `[main]`.
    #[serde(default)]
    pub main: Main,
    /// `[workers]`.
    #[serde(default)]
    pub workers: Workers,
    /// `[triggerfs]`: the fs module.
    #[serde(default, rename = "triggerfs")]
    pub fs: FsSection,
    /// The raw text, for sections other crates parse themselves (`[broker]`).
    #[serde(skip)]
    pub text: String,
}

/// `[triggerfs]`, the fs module's section (the original's): where it mounts, where it logs,
/// and its spool. Keys other than these are ignored.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct FsSection {
    /// Where `triggerfs fs` mounts (`./mountpoint` in the original's skeleton).
    pub mountpoint: Option<PathBuf>,
    /// Also log to this file.
    pub logfile: Option<PathBuf>,
    /// The spool's directory.
    pub spool: Option<PathBuf>,
    /// The spool's bound, e.g. `"1GiB"`; past it writes fail with ENOSPC.
    pub spool_max: Option<bytesize::ByteSize>,
    /// How often the spool is made durable, e.g. `"100ms"`.
    #[serde(default, with = "humantime_serde")]
    pub spool_sync: Option<std::time::Duration>,
}

/// `[main]`: who the commands log in as and where the servers are; keys other than these
/// are ignored.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Main {
    /// The broker's address: a string (several comma-separated) or a list of them.
    pub broker: Option<client::BrokerList>,
    /// The control plane's URL.
    pub url: Option<String>,
    /// The CA for `tls://` and `https://` (relative to the file's directory).
    pub ca: Option<PathBuf>,
    /// The team.
    pub team: Option<String>,
    /// The user's identity.
    pub identity: Option<String>,
    /// The user's secret.
    pub secret: Option<String>,
}

/// `[workers]`: `pluginspath`, `shell`, and every other key a team of
/// `<identity> = { token }`.
#[derive(Debug, Default, Clone)]
pub struct Workers {
    /// Where the plugins are.
    pub pluginspath: Option<PathBuf>,
    /// What runs the core plugin `command` (`sh` when absent).
    pub shell: Option<String>,
    /// `[workers.<team>.<identity>]`: each team's workers, by identity.
    teams: BTreeMap<String, BTreeMap<String, WorkerEntry>>,
}

/// By hand rather than `#[serde(flatten)]`, which buffers the values and so loses where in
/// the file a bad one is: this way an error points at the offending key.
impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Workers, D::Error> {
        struct WorkersVisitor;
        impl<'de> Visitor<'de> for WorkersVisitor {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`pluginspath` and [workers.<team>.<identity>] tables")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Workers, A::Error> {
                let mut workers = Workers::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "pluginspath" {
                        workers.pluginspath = Some(map.next_value()?);
                    } else if key == "shell" {
                        workers.shell = Some(map.next_value()?);
                    } else {
                        workers.teams.insert(key, map.next_value()?);
                    }
                }
                Ok(workers)
            }
        }
        deserializer.deserialize_map(WorkersVisitor)
    }
}

/// `[workers.<team>.<identity>]`; keys other than `token` are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a table with token = \"...\"")]
struct WorkerEntry {
    token: String,
}

impl Settings {
    /// Loads the file named by `explicit`, or the default one when it exists.
    pub fn load(explicit: Option<&Path>) -> Result<Settings> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => std::env::var_os("HOME")
                .map(|home| Path::new(&home).join("triggerfs.toml"))
                .filter(|p| p.exists()),
        };
        let Some(path) = path else {
            return Ok(Settings::default());
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut settings =
            Settings::parse(&text).with_context(|| format!("invalid config {}", path.display()))?;
        if let (Some(ca), Some(dir)) = (&settings.main.ca, path.parent()) {
            settings.main.ca = Some(dir.join(ca));
        }
        settings.path = Some(path);
        Ok(settings)
    }

    /// Parses the text of a `triggerfs.toml`.
    pub fn parse(text: &str) -> Result<Settings> {
        Ok(Settings {
            text: text.to_string(),
            ..toml::from_str(text)?
        })
    }

    /// Makes the file's values the defaults of the flags that stand for them in `cli`, the
    /// binary's whole command line: its `--ca`, and its subcommands' flags below. clap then
    /// takes a flag before its variable, the variable before the file, the file before the
    /// built-in default. (A worker's team and token come from [`Settings::worker_login`].)
    pub fn under_flags(&self, cli: clap::Command) -> clap::Command {
        const LOGIN: &[&str] = &["client", "jobs", "schedules", "cluster", "cli", "fs"];
        const BROKER: &[&str] = &["client", "cli", "fs", "worker"];
        let text = |value: &Option<String>| value.as_ref().map(OsString::from);
        let path = |value: &Option<PathBuf>| value.as_ref().map(OsString::from);
        let (main, workers, fs) = (&self.main, &self.workers, &self.fs);
        // (the subcommands, the flag's id, the key's value)
        let keys: [(&[&str], &str, Option<OsString>); 12] = [
            (
                BROKER,
                "broker",
                main.broker.as_ref().map(|b| b.to_string().into()),
            ),
            (LOGIN, "url", text(&main.url)),
            (LOGIN, "team", text(&main.team)),
            (LOGIN, "identity", text(&main.identity)),
            (LOGIN, "secret", text(&main.secret)),
            (&["worker"], "pluginspath", path(&workers.pluginspath)),
            (&["worker"], "shell", text(&workers.shell)),
            (&["fs"], "mount", path(&fs.mountpoint)),
            (&["fs"], "logfile", path(&fs.logfile)),
            (&["fs"], "spool", path(&fs.spool)),
            (
                &["fs"],
                "spool_max",
                fs.spool_max.map(|b| b.as_u64().to_string().into()),
            ),
            (
                &["fs"],
                "spool_sync",
                fs.spool_sync
                    .map(|d| humantime::format_duration(d).to_string().into()),
            ),
        ];
        let with_default = |arg: clap::Arg, value: OsString| {
            let secret = arg.get_id() == "secret";
            arg.default_value(value).hide_default_value(secret)
        };
        let cli = match path(&main.ca) {
            Some(ca) => cli.mut_arg("ca", |arg| with_default(arg, ca)),
            None => cli,
        };
        cli.mut_subcommands(|mut sub| {
            for (subcommands, id, value) in &keys {
                if let (true, Some(value)) = (subcommands.contains(&sub.get_name()), value) {
                    sub = sub.mut_arg(*id, |arg| with_default(arg, value.clone()));
                }
            }
            sub
        })
    }

    /// A worker's team and token: `--team` and `--token` when given, else those of its
    /// `[workers.<team>.<identity>]` entry (under `--team`'s team, when given), else
    /// `[main] team` or `default`, and no token.
    pub fn worker_login(
        &self,
        team: Option<String>,
        identity: &str,
        token: Option<String>,
    ) -> (String, String) {
        let entry = self.worker_credentials(team.as_deref(), identity);
        let team = team
            .or_else(|| entry.as_ref().map(|(t, _)| t.clone()))
            .or_else(|| self.main.team.clone())
            .unwrap_or_else(|| "default".into());
        let token = token.or_else(|| entry.map(|(_, t)| t)).unwrap_or_default();
        (team, token)
    }

    /// The team and token of a worker identity from `[workers.<team>.<identity>]`: under
    /// `team`, else under the first team in name order that has it.
    pub fn worker_credentials(
        &self,
        team: Option<&str>,
        identity: &str,
    ) -> Option<(String, String)> {
        self.workers
            .teams
            .iter()
            .filter(|(t, _)| team.is_none_or(|want| want == t.as_str()))
            .find_map(|(t, identities)| Some((t.clone(), identities.get(identity)?.token.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_layout() {
        let s = Settings::parse(
            r#"
            [main]
            team = "team1"
            identity = "hp"
            secret = "password"
            broker = "tcp://127.0.0.1:5555"
            [workers]
            pluginspath = "/opt/plugins"
            shell = "bash"
            [workers.team1.demo01]
            token = "9b1bd278-e645-4eec-bffb-0587ad84534e"
            "#,
        )
        .unwrap();
        assert_eq!(
            s.main.broker.as_ref().map(|b| b.to_string()).as_deref(),
            Some("tcp://127.0.0.1:5555")
        );
        assert_eq!(s.main.team.as_deref(), Some("team1"));
        assert_eq!(s.main.identity.as_deref(), Some("hp"));
        assert_eq!(s.main.secret.as_deref(), Some("password"));
        assert_eq!(s.workers.pluginspath, Some(PathBuf::from("/opt/plugins")));
        assert_eq!(s.workers.shell.as_deref(), Some("bash"));
        assert_eq!(
            s.worker_credentials(None, "demo01"),
            Some((
                "team1".into(),
                "9b1bd278-e645-4eec-bffb-0587ad84534e".into()
            ))
        );
        assert_eq!(s.worker_credentials(Some("other"), "demo01"), None);
    }

    #[test]
    fn a_relative_ca_is_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("triggerfs-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("triggerfs.toml");
        std::fs::write(&path, "[main]\nca = \"tls/ca.pem\"\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.main.ca, Some(dir.join("tls/ca.pem")));
        std::fs::write(&path, "[main]\nca = \"/etc/ca.pem\"\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.main.ca, Some(PathBuf::from("/etc/ca.pem")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let s = Settings::parse("").unwrap();
        assert_eq!(
            (s.main.broker, s.main.url, s.workers.pluginspath),
            (None, None, None)
        );
        assert!(s.workers.teams.is_empty());
    }

    #[test]
    fn other_sections_and_unknown_main_keys_are_ignored() {
        let text = r#"
            [main]
            team = "team1"
            colour = "blue"
            [broker.services.dc1]
            algorithm = "mirror"
            [triggerfs]
            mountpoint = "/mnt/t"
            colour = "green"
            "#;
        let s = Settings::parse(text).unwrap();
        assert_eq!(s.main.team.as_deref(), Some("team1"));
        assert_eq!(s.fs.mountpoint, Some(PathBuf::from("/mnt/t")));
        assert_eq!(
            s.text, text,
            "[broker] is parsed elsewhere, from the raw text"
        );
    }

    #[test]
    fn reads_the_fs_section() {
        let s = Settings::parse(
            r#"
            [triggerfs]
            mountpoint = "./mountpoint"
            logfile = "./triggerfs.log"
            spool = "/var/spool/triggerfs"
            spool_max = "64MiB"
            spool_sync = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(s.fs.mountpoint, Some(PathBuf::from("./mountpoint")));
        assert_eq!(s.fs.logfile, Some(PathBuf::from("./triggerfs.log")));
        assert_eq!(s.fs.spool, Some(PathBuf::from("/var/spool/triggerfs")));
        assert_eq!(s.fs.spool_max.map(|b| b.as_u64()), Some(64 * 1024 * 1024));
        assert_eq!(s.fs.spool_sync, Some(std::time::Duration::from_millis(250)));
        let bad = Settings::parse("[triggerfs]\nspool_sync = \"soon\"\n").unwrap_err();
        assert!(format!("{bad:#}").contains("spool_sync"), "{bad:#}");
    }

    #[test]
    fn several_teams_and_identities() {
        let s = Settings::parse(
            r#"
            [workers.team1.demo01]
            token = "a"
            [workers.team1.demo02]
            token = "b"
            [workers.team2.demo01]
            token = "c"
            "#,
        )
        .unwrap();
        assert_eq!(s.workers.pluginspath, None);
        assert_eq!(
            s.workers.teams.values().map(BTreeMap::len).sum::<usize>(),
            3
        );
        let creds = |team, identity| s.worker_credentials(team, identity);
        assert_eq!(
            creds(Some("team2"), "demo01"),
            Some(("team2".into(), "c".into()))
        );
        assert_eq!(creds(None, "demo02"), Some(("team1".into(), "b".into())));
        // Without a team, the first team in name order that has the identity.
        assert_eq!(creds(None, "demo01"), Some(("team1".into(), "a".into())));
        assert_eq!(creds(None, "nobody"), None);
    }

    /// Each bad file is refused with an error that names what is wrong.
    #[test]
    fn malformed_files_are_refused_clearly() {
        let check = |text: &str, want: &str| {
            let err = format!("{:#}", Settings::parse(text).unwrap_err());
            assert!(err.contains(want), "{text:?}: {err}");
        };
        check("[workers.team1.demo01]\nfoo = 1", "token");
        check("[workers.team1.demo01]\ntoken = 5", "string");
        check("[workers]\npluginspath = 5", "path");
        check("[workers]\nteam1 = 1", "team1");
        check(
            "[workers.team1]\ndemo01 = \"tok\"",
            "expected a table with token",
        );
        check("[main]\nbroker = 5555", "broker");
        check("[main\nbroker = 1", "TOML parse error");
    }

    /// `[main] broker` may list several addresses; a worker's `--broker` takes them all (and
    /// a comma-separated flag wins over the file).
    #[test]
    fn broker_is_one_address_or_a_list() {
        let s = Settings::parse("[main]\nbroker = [\"a:1\", \"tls://b:2\"]\n").unwrap();
        assert_eq!(
            s.main.broker.as_ref().map(ToString::to_string).as_deref(),
            Some("a:1,tls://b:2")
        );
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(subcommand)]
            command: Sub,
        }
        #[derive(clap::Subcommand, Debug)]
        enum Sub {
            Worker(crate::worker::WorkerArgs),
        }
        use clap::{CommandFactory, FromArgMatches};
        let parse = |settings: &Settings, args: &[&str]| {
            let matches = settings
                .under_flags(Cli::command())
                .try_get_matches_from(args)
                .unwrap();
            let Sub::Worker(worker) = Cli::from_arg_matches(&matches).unwrap().command;
            worker.broker.addrs().to_vec()
        };
        let base = ["triggerfs", "worker", "--identity", "w"];
        assert_eq!(parse(&s, &base), ["a:1", "tls://b:2"]);
        let flags = [&base[..], &["--broker", "c:3,d:4"]].concat();
        assert_eq!(parse(&s, &flags), ["c:3", "d:4"]);
        assert_eq!(parse(&Settings::default(), &base), ["127.0.0.1:5555"]);
        let one = Settings::parse("[main]\nbroker = \"e:5\"\n").unwrap();
        assert_eq!(parse(&one, &base), ["e:5"]);
    }

    #[test]
    fn missing_token_is_an_error() {
        assert!(Settings::parse("[workers.team1.demo01]\nfoo = 1").is_err());
    }
}
