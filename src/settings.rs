//! `triggerfs.toml`: the one configuration file every subcommand reads.
//!
//! Sections as in the original product: `[main]` (team, identity, secret, broker, url),
//! `[workers]` (`pluginspath`, and `[workers.<team>.<identity>] token = "..."`), `[broker]`
//! (services, until the control plane serves them) and `[triggerfs]` (the fs module).
//! Searched as `--config FILE`, else `$TRIGGERFS_CONFIG`, else `$HOME/triggerfs.toml`; a
//! missing default file is simply empty.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the binary takes from `triggerfs.toml`.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    /// `[main] broker`.
    pub broker: Option<String>,
    /// `[main] url`: the control plane.
    pub url: Option<String>,
    /// `[main] team`.
    pub team: Option<String>,
    /// `[main] identity`.
    pub identity: Option<String>,
    /// `[main] secret`.
    pub secret: Option<String>,
    /// `[workers] pluginspath`.
    pub pluginspath: Option<PathBuf>,
    /// `[workers.<team>.<identity>] token`, keyed by (team, identity).
    pub worker_tokens: BTreeMap<(String, String), String>,
    /// The raw text, for sections other crates parse themselves (`[broker]`).
    pub text: String,
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
        settings.path = Some(path);
        Ok(settings)
    }

    /// Parses the text of a `triggerfs.toml`.
    pub fn parse(text: &str) -> Result<Settings> {
        let table: toml::Table = toml::from_str(text)?;
        let mut settings = Settings {
            text: text.to_string(),
            ..Settings::default()
        };
        if let Some(main) = table.get("main").and_then(|v| v.as_table()) {
            let get = |key: &str| main.get(key).and_then(|v| v.as_str()).map(String::from);
            settings.broker = get("broker");
            settings.url = get("url");
            settings.team = get("team");
            settings.identity = get("identity");
            settings.secret = get("secret");
        }
        if let Some(workers) = table.get("workers").and_then(|v| v.as_table()) {
            for (key, value) in workers {
                match (key.as_str(), value) {
                    ("pluginspath", toml::Value::String(p)) => {
                        settings.pluginspath = Some(PathBuf::from(p))
                    }
                    ("pluginspath", _) => bail!("[workers] pluginspath must be a string"),
                    (team, toml::Value::Table(identities)) => {
                        for (identity, entry) in identities {
                            let token =
                                entry
                                    .get("token")
                                    .and_then(|t| t.as_str())
                                    .with_context(|| {
                                        format!("[workers.{team}.{identity}] needs token = \"...\"")
                                    })?;
                            settings
                                .worker_tokens
                                .insert((team.to_string(), identity.clone()), token.to_string());
                        }
                    }
                    (other, _) => bail!("unexpected key `{other}` in [workers]"),
                }
            }
        }
        Ok(settings)
    }

    /// The team and token of a worker identity from `[workers.<team>.<identity>]`.
    pub fn worker_credentials(
        &self,
        team: Option<&str>,
        identity: &str,
    ) -> Option<(String, String)> {
        self.worker_tokens
            .iter()
            .find(|((t, i), _)| i == identity && team.is_none_or(|want| want == t))
            .map(|((t, _), token)| (t.clone(), token.clone()))
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
            [workers.team1.demo01]
            token = "9b1bd278-e645-4eec-bffb-0587ad84534e"
            "#,
        )
        .unwrap();
        assert_eq!(s.broker.as_deref(), Some("tcp://127.0.0.1:5555"));
        assert_eq!(s.team.as_deref(), Some("team1"));
        assert_eq!(s.identity.as_deref(), Some("hp"));
        assert_eq!(s.secret.as_deref(), Some("password"));
        assert_eq!(s.pluginspath, Some(PathBuf::from("/opt/plugins")));
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
    fn missing_token_is_an_error() {
        assert!(Settings::parse("[workers.team1.demo01]\nfoo = 1").is_err());
    }
}
