//! Directories: the folders that hold triggers, at any depth up to [`MAX_DEPTH`]
//! (`/api/v1/directories`), and the one parser of directory and trigger paths.

use proto::names::{check_simple, NameError, MAX_NAME};
use serde::{Deserialize, Serialize};

/// Most names a directory's path has (`/a/b` has 2); a trigger's path has one more.
pub const MAX_DEPTH: usize = 16;

/// The longest directory path, with its leading `/`: [`MAX_DEPTH`] names of [`MAX_NAME`]
/// characters, each after a `/`.
pub const MAX_PATH: usize = MAX_DEPTH * (MAX_NAME + 1);

/// What a directory's path may be: 1 to [`MAX_DEPTH`] names joined by `/`, after an optional
/// `/` (a test checks that the repetition bound is `MAX_DEPTH - 1`).
pub const PATH_PATTERN: &str = concat!(
    "^/?",
    proto::name_segment_pattern!(),
    "(?:/",
    proto::name_segment_pattern!(),
    "){0,15}$"
);

/// Why a directory or trigger path was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A name in it breaks the name rule (or it is empty, or `/` alone).
    #[error(transparent)]
    Name(#[from] NameError),
    /// More names than a path may have.
    #[error("{what} `{path}` is deeper than {max} levels")]
    TooDeep {
        /// `directory` or `trigger`.
        what: &'static str,
        /// The path.
        path: String,
        /// The most levels it may have.
        max: usize,
    },
    /// A trigger path without its leading `/`, or without a directory.
    #[error("trigger path `{0}` must be /directory/name (the directory may be nested)")]
    NotTriggerPath(String),
    /// A directory moved into itself or below itself.
    #[error("directory /{from} cannot move into itself (to /{to})")]
    IntoItself {
        /// The directory.
        from: String,
        /// Where it was to go.
        to: String,
    },
}

/// A checked directory path: 1 to [`MAX_DEPTH`] names, kept without the leading `/`
/// (`weatherstation/rpi`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DirPath(String);

impl DirPath {
    /// `/a/b` or `a/b`, checked: every name follows the name rule, at most [`MAX_DEPTH`] of them.
    pub fn parse(text: &str) -> Result<DirPath, PathError> {
        let rel = text.strip_prefix('/').unwrap_or(text);
        if rel.is_empty() {
            check_simple("directory", rel)?;
        }
        let mut depth = 0;
        for name in rel.split('/') {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(PathError::TooDeep {
                    what: "directory",
                    path: format!("/{rel}"),
                    max: MAX_DEPTH,
                });
            }
            check_simple("directory", name).map_err(|e| match e {
                NameError::Empty { what } => NameError::Escapes {
                    what,
                    name: text.to_string(),
                },
                e => e,
            })?;
        }
        Ok(DirPath(rel.to_string()))
    }

    /// Without the leading `/`: `a/b`, as the API stores it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// With the leading `/`: `/a/b`.
    pub fn absolute(&self) -> String {
        format!("/{}", self.0)
    }

    /// The last name: `b` of `/a/b`.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// How many names: 2 for `/a/b`.
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// The directory it is in; `None` directly under `/`.
    pub fn parent(&self) -> Option<DirPath> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| DirPath(parent.to_string()))
    }

    /// `name` inside it, checked (a trigger or a directory's path).
    pub fn child(&self, name: &str) -> Result<DirPath, PathError> {
        DirPath::parse(&format!("{}/{name}", self.0))
    }

    /// Whether `other` is this directory or inside it.
    pub fn contains(&self, other: &DirPath) -> bool {
        other.0 == self.0
            || other
                .0
                .strip_prefix(&self.0)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// As one segment of an API route: its `/`s percent-encoded (`a%2Fb`).
    pub fn url_part(&self) -> String {
        self.0.replace('/', "%2F")
    }
}

impl std::fmt::Display for DirPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0)
    }
}

/// A trigger path `/directory/name`, checked: its directory (nested or not) and its name.
pub fn split_trigger_path(path: &str) -> Result<(DirPath, &str), PathError> {
    let not = || PathError::NotTriggerPath(path.to_string());
    let rest = path.strip_prefix('/').ok_or_else(not)?;
    let (dir, name) = rest.rsplit_once('/').ok_or_else(not)?;
    check_simple("trigger", name)?;
    let dir = DirPath::parse(dir).map_err(|e| match e {
        PathError::TooDeep { max, .. } => PathError::TooDeep {
            what: "trigger",
            path: path.to_string(),
            max: max + 1,
        },
        e => e,
    })?;
    Ok((dir, name))
}

/// A directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DirectoryView {
    /// Numeric id: stays the same when the directory is renamed or moved.
    pub id: i64,
    /// Its last name (`rpi` of `/weatherstation/rpi`).
    pub name: String,
    /// `/weatherstation/rpi`.
    pub path: String,
    /// Triggers directly in it.
    pub n_triggers: i64,
    /// Directories directly in it.
    pub n_directories: i64,
    /// Who created it.
    pub owner: String,
    /// RFC 3339.
    pub created: String,
}

/// A new directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateDirectory {
    /// `/name` or `/name/sub/...`, unique in the team (409 when taken, also by a trigger). Its
    /// parent must exist (422) unless `parents` is true.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::DirectoryPath))]
    pub path: String,
    /// Also make the missing directories above it, as `mkdir -p` does (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parents: Option<bool>,
}

/// A directory's move (`mv`): a new path for it and everything in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateDirectory {
    /// The new path: its parent must exist and not be inside it (422), and nothing may have
    /// the path yet (409). Its triggers and directories move with it, keeping their ids.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::DirectoryPath))]
    pub path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(n: usize) -> String {
        (0..n).map(|i| format!("/d{i}")).collect()
    }

    #[test]
    fn paths_are_names_at_any_depth_up_to_the_bound() {
        let p = DirPath::parse("/weatherstation/rpi").unwrap();
        assert_eq!(p.as_str(), "weatherstation/rpi");
        assert_eq!(p.absolute(), "/weatherstation/rpi");
        assert_eq!(p.name(), "rpi");
        assert_eq!(p.depth(), 2);
        assert_eq!(p.parent(), Some(DirPath::parse("weatherstation").unwrap()));
        assert_eq!(DirPath::parse("/a").unwrap().parent(), None);
        assert_eq!(p.url_part(), "weatherstation%2Frpi");
        assert!(DirPath::parse(&levels(MAX_DEPTH)).is_ok());
        assert!(matches!(
            DirPath::parse(&levels(MAX_DEPTH + 1)),
            Err(PathError::TooDeep { max: MAX_DEPTH, .. })
        ));
        for bad in ["", "/", "//a", "/a/", "a//b", "/a/..", "/./a", "/a b", "/é"] {
            assert!(
                matches!(DirPath::parse(bad), Err(PathError::Name(_))),
                "{bad}"
            );
        }
        let a = DirPath::parse("/a").unwrap();
        assert!(a.contains(&DirPath::parse("/a/b").unwrap()));
        assert!(a.contains(&a));
        assert!(!a.contains(&DirPath::parse("/ab").unwrap()));
    }

    #[test]
    fn the_pattern_is_the_parser() {
        let re = regex::Regex::new(PATH_PATTERN).unwrap();
        let long = format!("/{}", "x".repeat(MAX_NAME)).repeat(MAX_DEPTH);
        assert_eq!(long.len(), MAX_PATH);
        for text in [
            levels(1),
            levels(MAX_DEPTH),
            levels(MAX_DEPTH + 1),
            long.clone(),
            format!("{long}/x"),
            "a/b".into(),
            "/a//b".into(),
            "/a/".into(),
            "/a/..".into(),
            "".into(),
        ] {
            assert_eq!(
                re.is_match(&text),
                DirPath::parse(&text).is_ok(),
                "{}",
                &text[..text.len().min(40)]
            );
        }
    }

    #[test]
    fn trigger_paths_have_a_directory_of_any_depth() {
        let (dir, name) = split_trigger_path("/weatherstation/rpi/station1").unwrap();
        assert_eq!((dir.as_str(), name), ("weatherstation/rpi", "station1"));
        for bad in [
            "station1",
            "/station1",
            "weatherstation/rpi",
            "/a/",
            "/a/..",
        ] {
            assert!(split_trigger_path(bad).is_err(), "{bad}");
        }
        let deep = format!("{}/t", levels(MAX_DEPTH + 1));
        assert!(matches!(
            split_trigger_path(&deep),
            Err(PathError::TooDeep {
                what: "trigger",
                ..
            })
        ));
        assert!(split_trigger_path(&format!("{}/t", levels(MAX_DEPTH))).is_ok());
        let re = regex::Regex::new(crate::triggers::PATH_PATTERN).unwrap();
        for text in [
            format!("{}/t", levels(MAX_DEPTH)),
            format!("{}/t", levels(MAX_DEPTH + 1)),
            "/a/t".into(),
            "/t".into(),
            "a/t".into(),
            "/a//t".into(),
        ] {
            assert_eq!(
                re.is_match(&text),
                split_trigger_path(&text).is_ok(),
                "{text}"
            );
        }
    }
}
