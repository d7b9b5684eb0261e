//! What names may look like: services, identities, teams and plugins.
//!
//! Checked in one place so that the broker, the worker and the control plane agree. A plugin
//! name is only checked lexically here; the worker also resolves symlinks (see `worker`).

/// Longest name we accept; longer ones are certainly mistakes.
pub const MAX_NAME: usize = 128;

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

    #[test]
    fn service_refs() {
        assert!(check_service_ref("demo").is_ok());
        assert!(check_service_ref("team1/demo").is_ok());
        assert!(check_service_ref("a/b/c").is_err());
        assert!(check_service_ref("../x").is_err());
        assert!(check_service_ref(&"x".repeat(200)).is_err());
    }
}
