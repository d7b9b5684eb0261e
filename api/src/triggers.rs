//! Triggers: files under a directory that run a plugin through a service when written
//! (`/api/v1/triggers/...`).

use crate::timeout::Timeout;
use proto::control::Visibility;
use proto::text_enum;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

text_enum! {
    ("split", "lowercase")
    /// How a trigger's output is split.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum Split {
        /// One blob.
        #[default]
        None,
        /// Line by line.
        Lines,
    }
}

/// What a trigger's path may be: `/directory/name`, the directory 1 to
/// [`crate::directories::MAX_DEPTH`] names (as [`crate::directories::split_trigger_path`]).
pub const PATH_PATTERN: &str = concat!(
    "^/",
    proto::name_segment_pattern!(),
    "(?:/",
    proto::name_segment_pattern!(),
    "){1,16}$"
);

/// Most hits one call may add.
pub const MAX_HITS_PER_CALL: u32 = 1_000_000;
/// Most lines one request of a `split = "lines"` trigger may carry.
pub const MAX_BATCH_LINES: u32 = 100_000;
/// Lines one request carries unless the trigger says otherwise.
pub const DEFAULT_BATCH_LINES: u32 = 1000;
/// Mode bits a file may have.
pub const MAX_MODE: u32 = 0o7777;
/// A new trigger's mode: read and written by the user who mounted it alone. A read of the
/// file returns its last responses, so a file others may read (with `--allow-other`)
/// shows them what the plugins answered.
pub const DEFAULT_MODE: u32 = 0o600;
/// Most arguments a trigger (or a gateway request) takes.
pub const MAX_ARGS: usize = 256;
/// Most characters of an argument's key and of its value.
pub const MAX_ARG_CHARS: usize = 4096;

/// A trigger.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TriggerView {
    /// Numeric id.
    pub id: i64,
    /// `/directory/name` (`/weatherstation/rpi/station1`).
    pub path: String,
    /// File name.
    pub name: String,
    /// The directory's path without its leading `/` (`weatherstation/rpi`).
    pub directory: String,
    /// Free text.
    pub description: String,
    /// Plugin, e.g. `command/command`; `""` until one is set (writes to the file fail then).
    pub plugin: String,
    /// Service (`service` or `team/service`); `""` until one is set (writes fail then).
    pub service: String,
    /// Default plugin arguments.
    pub args: BTreeMap<String, String>,
    /// Timeout in milliseconds; 0: the service's.
    pub timeout_ms: i64,
    /// The same as text, `null` for the default.
    pub timeout: Option<Timeout>,
    /// Unix mode bits (e.g. 420 = 0o644).
    pub mode: i64,
    /// `none` or `lines`.
    pub split: Split,
    /// `split = "lines"`: the most complete lines one request carries (1: one per line).
    pub batch_lines: i64,
    /// `local`, `team` or `public`.
    pub visibility: Visibility,
    /// Times it ran, as counted through `POST /api/v1/triggers/{id}/hits`.
    pub hits: i64,
    /// Who created it.
    pub owner: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339: the last change to its configuration (or path); counting hits is none.
    pub updated: String,
}

/// A new trigger.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTrigger {
    /// `/directory/name`; the directory must exist (422), the name be new in it (409).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::TriggerPath))]
    pub path: String,
    /// Plugin, e.g. `command/command`. Optional: a trigger may be created first and given
    /// its plugin later (`PATCH`); until then it has none (`""`) and writes to it fail.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<proto::openapi::PluginName>))]
    pub plugin: Option<String>,
    /// Service (`service` or `team/service`); it must exist for the team (422). Optional, as
    /// `plugin`: without one the trigger has none (`""`) until a `PATCH` gives it one.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<proto::openapi::ServiceRef>))]
    pub service: Option<String>,
    /// Default plugin arguments.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::ArgMap>))]
    pub args: Option<BTreeMap<String, String>>,
    /// Timeout as text (`"10s"`); not with `timeout_ms` (422).
    pub timeout: Option<Timeout>,
    /// Timeout in milliseconds.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::TimeoutMs>))]
    pub timeout_ms: Option<u64>,
    /// Unix mode bits (default 0o600 = 384: only the user who mounted the fs reads the
    /// responses in the file, also with `--allow-other`).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Mode>))]
    pub mode: Option<u32>,
    /// `none` (default) or `lines`.
    pub split: Option<Split>,
    /// `split = "lines"`: the most complete lines one request carries (default 1000).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::BatchLines>))]
    pub batch_lines: Option<u32>,
    /// Free text.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Description>))]
    pub description: Option<String>,
    /// `local` (default), `team` or `public`.
    pub visibility: Option<Visibility>,
}

/// Changes to a trigger; absent fields stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateTrigger {
    /// A new `/directory/name`: renames the trigger, moves it to another directory (at any
    /// depth), or both.
    /// The directory must exist (422), and no other trigger have the path (409).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::TriggerPath>))]
    pub path: Option<String>,
    /// Plugin.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<proto::openapi::PluginName>))]
    pub plugin: Option<String>,
    /// Service; it must exist for the team (422).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<proto::openapi::ServiceRef>))]
    pub service: Option<String>,
    /// Default plugin arguments (replaces them).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::ArgMap>))]
    pub args: Option<BTreeMap<String, String>>,
    /// Timeout as text; not with `timeout_ms` (422).
    pub timeout: Option<Timeout>,
    /// Timeout in milliseconds.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::TimeoutMs>))]
    pub timeout_ms: Option<u64>,
    /// Unix mode bits.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Mode>))]
    pub mode: Option<u32>,
    /// `none` or `lines`.
    pub split: Option<Split>,
    /// `split = "lines"`: the most complete lines one request carries.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::BatchLines>))]
    pub batch_lines: Option<u32>,
    /// Free text.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Description>))]
    pub description: Option<String>,
    /// `local`, `team` or `public`.
    pub visibility: Option<Visibility>,
}

/// Hits to add.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddHits {
    /// How many (default 1).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::HitCount>))]
    pub count: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{TextEnum, UnknownText};
    use strum::VariantArray;

    #[test]
    fn split_has_one_text_per_variant() {
        for &split in Split::VARIANTS {
            let text = split.as_str();
            assert_eq!(text.parse::<Split>(), Ok(split));
            assert_eq!(serde_json::to_value(split).unwrap(), text);
            assert_eq!(serde_json::from_value::<Split>(text.into()).unwrap(), split);
        }
        assert_eq!(Split::None.as_str(), "none");
        assert_eq!(Split::Lines.as_str(), "lines");
        for bad in ["", "Lines", "words"] {
            assert_eq!(bad.parse::<Split>(), Err(UnknownText::of::<Split>(bad)));
            assert!(serde_json::from_value::<Split>(bad.into()).is_err());
        }
    }
}
