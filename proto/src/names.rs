//! What names may look like: services, identities, teams and plugins.
//!
//! Checked in one place so that the broker, the worker and the control plane agree. A plugin
//! name is only checked lexically here; the worker also resolves symlinks (see `worker`).

/// Longest name we accept; longer ones are certainly mistakes.
pub const MAX_NAME: usize = 128;

/// One segment as a regular expression (no anchors): what [`check_simple`] accepts, i.e. 1 to
/// [`MAX_NAME`] of `[A-Za-z0-9._-]`, but not `.` or `..`. Written without look-around (so
/// every JSON Schema validator and fuzzer reads it): a segment starts with a character other
/// than `.`, or with one `.` and another character, or with `..` and any character. The
/// repetition bounds are `MAX_NAME` minus the length of each start; a test checks that the
/// expression and the code agree.
#[macro_export]
macro_rules! name_segment_pattern {
    () => {
        r"(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})"
    };
}

/// [`check_simple`] as a regular expression: a team, user, worker, service or directory name.
pub const NAME_PATTERN: &str = concat!("^", crate::name_segment_pattern!(), "$");

/// One segment (unanchored), for patterns built on names (paths of directories, triggers).
pub const SEGMENT_PATTERN: &str = crate::name_segment_pattern!();

/// Text without a NUL character, as a regular expression: the control plane refuses NUL in
/// every string of every body (PostgreSQL's TEXT cannot hold one).
pub const NO_NUL_PATTERN: &str = r"^[^\x00]*$";

/// [`check_service_ref`] as a regular expression; the whole reference is also at most
/// [`MAX_NAME`] long.
pub const SERVICE_REF_PATTERN: &str = concat!(
    "^",
    crate::name_segment_pattern!(),
    "(?:/",
    crate::name_segment_pattern!(),
    ")?$"
);

/// [`check_plugin`] as a regular expression; the whole name is also at most [`MAX_NAME`] long.
pub const PLUGIN_PATTERN: &str = concat!(
    "^",
    crate::name_segment_pattern!(),
    "(?:/",
    crate::name_segment_pattern!(),
    ")*$"
);

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Empty string.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of name.
        what: &'static str,
    },
    /// Longer than [`MAX_NAME`].
    #[error("{what} is longer than {MAX_NAME} characters")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
    },
    /// A character outside `[A-Za-z0-9._-]` (and `/` where allowed).
    #[error("{what} `{name}` may only contain letters, digits, `.`, `_` and `-`")]
    BadChar {
        /// Which kind of name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A `..` or `.` component, an absolute path or an empty component.
    #[error("{what} `{name}` escapes its directory")]
    Escapes {
        /// Which kind of name.
        what: &'static str,
        /// The name.
        name: String,
    },
}

fn check_segment(what: &'static str, full: &str, seg: &str) -> Result<(), NameError> {
    if seg.is_empty() || seg == "." || seg == ".." {
        return Err(NameError::Escapes {
            what,
            name: full.to_string(),
        });
    }
    if !seg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(NameError::BadChar {
            what,
            name: full.to_string(),
        });
    }
    Ok(())
}

fn check_len(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong { what });
    }
    Ok(())
}

/// A team, service or worker identity: one segment.
pub fn check_simple(what: &'static str, name: &str) -> Result<(), NameError> {
    check_len(what, name)?;
    check_segment(what, name, name)
}

/// A service reference: `service` or `team/service`.
pub fn check_service_ref(name: &str) -> Result<(), NameError> {
    check_len("service", name)?;
    let mut parts = name.splitn(2, '/');
    let first = parts.next().unwrap_or_default();
    check_segment("service", name, first)?;
    if let Some(second) = parts.next() {
        check_segment("service", name, second)?;
    }
    Ok(())
}

/// A plugin name: `name` or `dir/name`, relative, no `..`.
pub fn check_plugin(name: &str) -> Result<(), NameError> {
    check_len("plugin", name)?;
    if name.starts_with('/') {
        return Err(NameError::Escapes {
            what: "plugin",
            name: name.to_string(),
        });
    }
    for seg in name.split('/') {
        check_segment("plugin", name, seg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names() {
        let cases: &[(&str, bool)] = &[
            ("command", true),
            ("command/command", true),
            ("my-plugin_2.sh", true),
            ("../../bin/sh", false),
            ("/bin/sh", false),
            ("a/../b", false),
            ("a//b", false),
            ("", false),
            ("a b", false),
            ("a\0b", false),
        ];
        for (name, ok) in cases {
            assert_eq!(check_plugin(name).is_ok(), *ok, "{name:?}");
        }
    }

    /// Every string over an alphabet of the interesting characters, up to 4 long, and strings
    /// of every shape around `MAX_NAME`: the patterns accept exactly what the checks accept.
    #[test]
    fn patterns_are_the_checks() {
        let re = |p: &str| regex::Regex::new(p).unwrap();
        let (name, service, plugin) = (
            re(NAME_PATTERN),
            re(SERVICE_REF_PATTERN),
            re(PLUGIN_PATTERN),
        );
        assert_eq!(
            NAME_PATTERN,
            format!("^{SEGMENT_PATTERN}$"),
            "one segment is a name"
        );
        let agree = |s: &str| {
            let short = s.len() <= MAX_NAME;
            assert_eq!(name.is_match(s), check_simple("n", s).is_ok(), "name {s:?}");
            assert_eq!(
                service.is_match(s) && short,
                check_service_ref(s).is_ok(),
                "service {s:?}"
            );
            assert_eq!(
                plugin.is_match(s) && short,
                check_plugin(s).is_ok(),
                "plugin {s:?}"
            );
        };
        let alphabet = ['a', 'Z', '0', '.', '_', '-', '/', ' ', 'é', '\0', '\n'];
        let mut level = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for s in &level {
                agree(s);
                for c in alphabet {
                    next.push(format!("{s}{c}"));
                }
            }
            level = next;
        }
        level.iter().for_each(|s| agree(s));
        let mut checked = 0;
        for n in MAX_NAME - 3..=MAX_NAME + 3 {
            for start in ["", ".", "..", "...", "-", "_", "/", "é"] {
                for split in [None, Some(1), Some(n / 2), Some(n.saturating_sub(2))] {
                    let mut s = format!("{start}{}", "a".repeat(n.saturating_sub(start.len())));
                    if let Some(at) =
                        split.filter(|at| s.is_char_boundary(*at) && s.is_char_boundary(at + 1))
                    {
                        s.replace_range(at..at + 1, "/");
                    }
                    agree(&s);
                    agree(&format!("{s}/.."));
                    agree(&format!("{s}/b"));
                    checked += 1;
                }
            }
        }
        assert!(checked > 200);
    }

    #[test]
    fn service_refs() {
        assert!(check_service_ref("demo").is_ok());
        assert!(check_service_ref("team1/demo").is_ok());
        assert!(check_service_ref("a/b/c").is_err());
        assert!(check_service_ref("../x").is_err());
        assert!(check_service_ref(&"x".repeat(200)).is_err());
    }
}
