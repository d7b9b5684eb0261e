//! Directories: the folders directly under `/` that hold triggers (`/api/v1/directories`).

use serde::{Deserialize, Serialize};

/// What a directory's path may be: a name, after an optional `/`.
pub const PATH_PATTERN: &str = concat!("^/?", proto::name_segment_pattern!(), "$");

/// A directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DirectoryView {
    /// Name (one path segment).
    pub name: String,
    /// `/name`.
    pub path: String,
    /// Triggers in it.
    pub n_triggers: i64,
    /// Who created it.
    pub owner: String,
    /// RFC 3339.
    pub created: String,
}

/// A new directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateDirectory {
    /// `/name`: one level under `/`, unique in the team (409 when taken).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::DirectoryPath))]
    pub path: String,
}
