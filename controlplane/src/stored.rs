//! Reading back what the store holds: enum text, JSON text and numbers, each into its type.
//!
//! A stored value that does not read (edited by hand, or written by a newer version) is never
//! guessed at: lists and the broker snapshot leave the row out, a read of that one object
//! answers `Internal`, and each says so in an error log line.

use crate::error::ApiError;
use proto::UnknownText;
use serde::de::DeserializeOwned;
use std::str::FromStr;

/// A stored row of `object` `name` in `team` that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{object} {name} of team {team} cannot be read: {why}")]
pub(crate) struct Unreadable {
    object: &'static str,
    team: String,
    name: String,
    #[source]
    why: Why,
}

/// What is wrong with the stored value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Why {
    /// Enum text that names no variant.
    #[error(transparent)]
    Text(#[from] UnknownText),
    /// JSON that is not the type's.
    #[error("its JSON does not read: {0}")]
    Json(#[from] serde_json::Error),
    /// A number out of its type's range.
    #[error("{0} is out of range")]
    Range(i64),
    /// A compressed value that does not decompress.
    #[error("it does not decompress")]
    Unpack,
    /// A value its type refuses (a timetable that no longer reads).
    #[error("{0}")]
    Invalid(String),
}

impl From<Unreadable> for ApiError {
    fn from(e: Unreadable) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

/// Which row a stored value comes from (`service` `s` of team `main`), for the error when it
/// does not read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row<'a> {
    object: &'static str,
    team: &'a str,
    name: &'a str,
}

impl<'a> Row<'a> {
    /// Row `name` of `object` in `team`.
    pub fn of(object: &'static str, team: &'a str, name: &'a str) -> Row<'a> {
        Row { object, team, name }
    }

    /// The error for this row.
    pub fn fail(self, why: impl Into<Why>) -> Unreadable {
        Unreadable {
            object: self.object,
            team: self.team.to_string(),
            name: self.name.to_string(),
            why: why.into(),
        }
    }

    /// Enum text, read as its enum.
    pub fn text<T: FromStr<Err = UnknownText>>(self, text: &str) -> Result<T, Unreadable> {
        text.parse().map_err(|e| self.fail(e))
    }

    /// JSON text, read as `T`.
    pub fn json<T: DeserializeOwned>(self, text: &str) -> Result<T, Unreadable> {
        serde_json::from_str(text).map_err(|e| self.fail(e))
    }

    /// A number, read as `T` (an unsigned or narrower integer).
    pub fn number<T: TryFrom<i64>>(self, n: i64) -> Result<T, Unreadable> {
        T::try_from(n).map_err(|_| self.fail(Why::Range(n)))
    }
}

/// The rows that could be read; every other one is logged and left out of `answer`.
pub(crate) fn readable<V>(
    answer: &'static str,
    rows: impl IntoIterator<Item = Result<V, Unreadable>>,
) -> Vec<V> {
    rows.into_iter()
        .filter_map(|row| {
            row.map_err(|e| tracing::error!(error = %e, left_out_of = answer, "unreadable row"))
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_rows_are_left_out_or_internal() {
        let row = Row::of("service", "main", "s");
        let read = |text: &str| row.text::<proto::Algorithm>(text);
        assert_eq!(read("mirror").ok(), Some(proto::Algorithm::Mirror));
        let err = read("random").unwrap_err();
        assert_eq!(
            err.to_string(),
            "service s of team main cannot be read: unknown algorithm `random` \
             (expected one of roundrobin, mirror, serial)"
        );
        assert_eq!(
            readable("a list", [read("serial"), read(""), read("mirror")]).len(),
            2
        );
        assert!(row.json::<Vec<String>>("[\"a\"]").is_ok());
        assert!(row.json::<Vec<String>>("{").is_err());
        assert_eq!(row.number::<u32>(7).ok(), Some(7));
        assert_eq!(
            row.number::<u64>(-1).unwrap_err().to_string(),
            "service s of team main cannot be read: -1 is out of range"
        );
        let api: ApiError = err.into();
        assert_eq!(api.status_code().1, api::ErrorCode::Internal);
    }
}
