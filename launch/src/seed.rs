//! The seed's command lines: `triggerfs-client -service S -plugin P -timeout 10s ...` and
//! `triggerfs-worker -identity demo01 -debug true`.
//!
//! - Started as `triggerfs-client`, `triggerfs-worker` or `triggerfs-fs` (symlinks to this
//!   binary, laid out by `triggerfs install-links DIR`), the binary runs that subcommand.
//! - Under `client`, `worker` and `fs`, a single-dash multi-letter word in flag position
//!   that is a long flag of that subcommand (or the global `-config`) becomes `--word`
//!   before clap parses; anything else (`-h`, `-5`, a value such as the `-x` of
//!   `-command -x`, an unknown `-word`) is left to clap.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The seed's program names and the subcommand each runs.
pub const SEED_NAMES: &[(&str, &str)] = &[
    ("triggerfs-client", "client"),
    ("triggerfs-worker", "worker"),
    ("triggerfs-fs", "fs"),
    ("triggerfs-cli", "cli"),
];

/// The subcommands whose single-dash long flags are accepted.
const SEED_SUBCOMMANDS: &[&str] = &["client", "worker", "fs", "cli"];

/// The arguments clap parses: the subcommand of a seed name inserted after argv\[0\], and
/// the seed's single-dash long flags rewritten (see the module's documentation).
pub fn seed_args(cli: &clap::Command, mut args: Vec<OsString>) -> Vec<OsString> {
    let subcommand = args.first().and_then(|argv0| {
        let name = Path::new(argv0).file_name()?.to_str()?;
        SEED_NAMES
            .iter()
            .find(|(seed, _)| *seed == name)
            .map(|(_, sub)| *sub)
    });
    if let Some(sub) = subcommand {
        args.insert(1, sub.into());
    }
    rewrite_flags(cli, args)
}

/// Rewrites `-word` to `--word` where `word` is a long flag of the subcommand being parsed.
fn rewrite_flags(cli: &clap::Command, mut args: Vec<OsString>) -> Vec<OsString> {
    let mut cli = cli.clone();
    // Propagates the global flags into the subcommands and settles every flag's arity.
    cli.build();
    let mut current = &cli;
    let mut i = 1;
    while i < args.len() {
        let Some(token) = args[i].to_str().map(str::to_string) else {
            i += 1;
            continue;
        };
        if token == "--" {
            break;
        }
        let long = if let Some(rest) = token.strip_prefix("--") {
            Some(rest.to_string())
        } else if let Some(word) = token.strip_prefix('-') {
            let name = word.split('=').next().unwrap_or_default();
            // Only multi-letter words that are long flags here: `-h`, `-5`, `-x` stay.
            if name.chars().count() > 1 && find_long(current, name).is_some() {
                args[i] = format!("-{token}").into();
                Some(word.to_string())
            } else {
                None
            }
        } else {
            None
        };
        i += 1;
        match long {
            Some(flag) => {
                let (name, inline_value) = match flag.split_once('=') {
                    Some((name, _)) => (name.to_string(), true),
                    None => (flag, false),
                };
                let Some(arg) = find_long(current, &name) else {
                    continue;
                };
                let range = arg.get_num_args().unwrap_or_default();
                if inline_value || !arg.get_action().takes_values() || range.max_values() == 0 {
                    continue;
                }
                // The next token is this flag's value, not a flag: never rewritten. An
                // optional value is taken only when it does not look like a flag (as clap).
                let next_is_value = args
                    .get(i)
                    .and_then(|next| next.to_str())
                    .is_some_and(|next| range.min_values() > 0 || !next.starts_with('-'));
                if next_is_value {
                    i += 1;
                }
            }
            None if token.starts_with('-') => {}
            None => {
                // A positional: a subcommand while we are at the top; otherwise a value.
                if std::ptr::eq(current, &cli) {
                    match cli.find_subcommand(&token) {
                        Some(sub) if SEED_SUBCOMMANDS.contains(&token.as_str()) => current = sub,
                        _ => break,
                    }
                }
            }
        }
    }
    args
}

fn find_long<'a>(cmd: &'a clap::Command, name: &str) -> Option<&'a clap::Arg> {
    cmd.get_arguments().find(|arg| arg.get_long() == Some(name))
}

/// `triggerfs install-links DIR`: the seed's program names as symlinks to this executable.
/// Returns the links created (a link already pointing here is kept and not returned; one
/// pointing elsewhere is replaced); refuses to replace anything that is not a symlink.
pub fn install_links(dir: &Path) -> Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut created = Vec::new();
    for (name, _) in SEED_NAMES {
        let link = dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if std::fs::read_link(&link).is_ok_and(|target| target == exe) {
                    continue;
                }
                std::fs::remove_file(&link)
                    .with_context(|| format!("cannot replace {}", link.display()))?;
            }
            Ok(_) => bail!(
                "{} exists and is not a symlink; not overwriting it",
                link.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot look at {}", link.display())),
        }
        std::os::unix::fs::symlink(&exe, &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
        created.push(link);
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_links_is_idempotent_and_keeps_other_files() {
        let dir = std::env::temp_dir().join(format!("triggerfs-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let created = install_links(&dir).unwrap();
        assert_eq!(created.len(), SEED_NAMES.len());
        let exe = std::env::current_exe().unwrap();
        for (name, _) in SEED_NAMES {
            assert_eq!(std::fs::read_link(dir.as_path().join(name)).unwrap(), exe);
        }
        assert!(install_links(dir.as_path()).unwrap().is_empty());
        std::fs::remove_file(dir.as_path().join("triggerfs-fs")).unwrap();
        std::fs::write(dir.as_path().join("triggerfs-fs"), "mine").unwrap();
        let err = install_links(dir.as_path()).unwrap_err();
        assert!(err.to_string().contains("not a symlink"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.as_path().join("triggerfs-fs")).unwrap(),
            "mine"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
