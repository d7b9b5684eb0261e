//! The HTTP gateway, `POST /api/v1/services/{name}/requests`: a [`GatewayRequest`] runs
//! through the broker as the caller, and its events stream back as [`GatewayEvent`]s (JSON
//! lines, or server-sent events named by their `event`).

use proto::{text_enum, Algorithm, ErrorKind, Stream};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most command words one request may carry.
pub const MAX_COMMAND_WORDS: usize = 1024;

/// What a share's text must be: a count of at most 9 digits, or a percentage from 0% to
/// 100%.
pub const SHARE_PATTERN: &str = "^([0-9]{1,9}|[0-9]{1,2}%|100%)$";

/// The command: one string (handed to the plugin as one word) or several words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandWords {
    /// One word, e.g. `"uptime"`.
    One(String),
    /// Several words.
    Many(Vec<String>),
}

impl CommandWords {
    /// The words: none for an empty string.
    pub fn into_words(self) -> Vec<String> {
        match self {
            CommandWords::One(text) if text.is_empty() => Vec::new(),
            CommandWords::One(text) => vec![text],
            CommandWords::Many(words) => words,
        }
    }
}

/// A count of workers or a share of them: `10`, `"10"` or `"10%"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShareText {
    /// A count.
    Count(u32),
    /// `"10"` or `"10%"`.
    Text(String),
}

impl ShareText {
    /// The share, when its text follows [`SHARE_PATTERN`]; else why not.
    pub fn share(&self) -> Result<proto::Share, String> {
        let t = match self {
            ShareText::Count(n) => return Ok(proto::Share::Count(*n)),
            ShareText::Text(t) => t,
        };
        let (digits, percent) = match t.strip_suffix('%') {
            Some(d) => (d, true),
            None => (t.as_str(), false),
        };
        let max_digits = if percent { 3 } else { 9 };
        let plain = !digits.is_empty()
            && digits.len() <= max_digits
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (!percent || digits.len() < 3 || digits == "100");
        if !plain {
            return Err(format!(
                "`{t}` is not a count or a percentage (e.g. 10 or 10%)"
            ));
        }
        t.parse()
    }
}

/// A request to run through the broker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GatewayRequest {
    /// Plugin, e.g. `command/command`.
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::PluginName))]
    pub plugin: String,
    /// Command text or words.
    pub command: Option<CommandWords>,
    /// Plugin arguments (at most 256, as a trigger's: 422 past a bound).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::ArgMap>))]
    pub args: Option<BTreeMap<String, String>>,
    /// Payload (text).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<proto::openapi::Text>))]
    pub payload: Option<String>,
    /// Timeout as text (`"10s"`); absent: the service's.
    pub timeout: Option<crate::Timeout>,
    /// `false`: fire-and-forget (only `queued` comes back). Default `true`.
    pub wait: Option<bool>,
    /// Mirror: workers at once (overrides the service's batch).
    pub batch: Option<ShareText>,
    /// Mirror, serial: start no new worker once more than this many failed (the rest are
    /// `skipped`, the summary says `stopped`).
    pub max_failures: Option<ShareText>,
    /// Mirror, serial: the request ends once this many workers exited 0.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 4294967295_u64))]
    pub quorum: Option<u32>,
    /// With `quorum`: cancel the workers still running when it is reached (without one,
    /// nothing to cancel: ignored).
    pub quorum_cancel: Option<bool>,
    /// Mirror, serial: the whole request ends this long after it started (`"10m"`).
    pub deadline: Option<crate::Timeout>,
    /// Only these workers of the service (a name that is not one of them is refused).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::WorkerList>))]
    pub only: Option<Vec<String>>,
}

text_enum! {
    ("gateway error", "PascalCase")
    /// A failure of the gateway itself, in an `error` event.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum GatewayError {
        /// The connection to the broker is gone; the request's fate is unknown.
        Disconnected,
    }
}

/// What ended a request as a whole: a broker's error, or the gateway's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestError {
    /// The broker's typed error (`NoSuchService`, `NoWorkersOnline`, ...).
    Broker(ErrorKind),
    /// The gateway's (`Disconnected`).
    Gateway(GatewayError),
}

/// Counts at the end of a request (the `summary` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GatewaySummary {
    /// Workers the request was sent to.
    pub workers: u32,
    /// Exited 0.
    pub ok: u32,
    /// Exited non-zero or failed.
    pub failed: u32,
    /// Ran past the timeout.
    pub timed_out: u32,
    /// Went away mid-run.
    pub lost: u32,
    /// Bound to the service but offline at dispatch.
    pub offline: u32,
    /// Never started (max failures, quorum, deadline, serial stop).
    pub skipped: u32,
    /// Sent the request but no answer by the deadline.
    pub no_response: u32,
    /// Still running when the quorum was reached, left to run on.
    pub detached: u32,
    /// The run stopped starting workers because `max_failures` was passed.
    pub stopped: bool,
    /// `quorum` workers exited 0.
    pub quorum_met: bool,
}

impl From<proto::Summary> for GatewaySummary {
    fn from(s: proto::Summary) -> GatewaySummary {
        GatewaySummary {
            workers: s.workers,
            ok: s.ok,
            failed: s.failed,
            timed_out: s.timed_out,
            lost: s.lost,
            offline: s.offline,
            skipped: s.skipped,
            no_response: s.no_response,
            detached: s.detached,
            stopped: s.stopped,
            quorum_met: s.quorum_met,
        }
    }
}

/// One event of a request's stream, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum GatewayEvent {
    /// The broker resolved the service.
    Routed {
        /// The service's algorithm.
        algorithm: Algorithm,
        /// Workers the request will run on.
        workers: u32,
    },
    /// A fire-and-forget request was handed to its workers (final).
    Queued {
        /// Workers it went to.
        workers: u32,
    },
    /// A worker started the plugin.
    Accepted {
        /// The worker's identity.
        worker: String,
    },
    /// One line of plugin output.
    Output {
        /// The worker's identity.
        worker: String,
        /// Sequence number per worker run, from 0.
        seq: u64,
        /// `stdout` or `stderr`.
        stream: Stream,
        /// The line, without its newline (invalid UTF-8 replaced).
        line: String,
    },
    /// A worker's plugin exited.
    Done {
        /// The worker's identity.
        worker: String,
        /// Exit status.
        exit_code: i32,
    },
    /// A worker's run failed without an exit code.
    Failed {
        /// The worker's identity.
        worker: String,
        /// What went wrong.
        kind: ErrorKind,
        /// Detail.
        message: String,
    },
    /// The request is over (final).
    Summary(GatewaySummary),
    /// The request failed as a whole (final).
    Error {
        /// What went wrong.
        kind: RequestError,
        /// Detail.
        message: String,
    },
}

impl GatewayEvent {
    /// The event's name: its `event` field, and the SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            GatewayEvent::Routed { .. } => "routed",
            GatewayEvent::Queued { .. } => "queued",
            GatewayEvent::Accepted { .. } => "accepted",
            GatewayEvent::Output { .. } => "output",
            GatewayEvent::Done { .. } => "done",
            GatewayEvent::Failed { .. } => "failed",
            GatewayEvent::Summary(_) => "summary",
            GatewayEvent::Error { .. } => "error",
        }
    }
}

#[cfg(feature = "openapi")]
mod schemas {
    use super::{CommandWords, ShareText, MAX_COMMAND_WORDS, SHARE_PATTERN};
    use proto::openapi::text;
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    use utoipa::openapi::RefOr;

    impl utoipa::PartialSchema for CommandWords {
        fn schema() -> RefOr<Schema> {
            OneOfBuilder::new()
                .item(text("One word, e.g. `uptime`."))
                .item(
                    ArrayBuilder::new()
                        .items(text("A word."))
                        .max_items(Some(MAX_COMMAND_WORDS))
                        .description(Some("At most 1024 words.")),
                )
                .description(Some(
                    "The command: one string (handed to the plugin as one word) or several \
                     words.",
                ))
                .into()
        }
    }

    impl utoipa::ToSchema for CommandWords {}

    impl utoipa::PartialSchema for ShareText {
        fn schema() -> RefOr<Schema> {
            OneOfBuilder::new()
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0))
                        .maximum(Some(u32::MAX)),
                )
                .item(
                    text(
                        "A count (`\"10\"`) or a percentage of the request's workers \
                         (`\"10%\"`).",
                    )
                    .pattern(Some(SHARE_PATTERN)),
                )
                .description(Some(
                    "A count of workers, or a percentage of them: `10`, `\"10%\"`.",
                ))
                .into()
        }
    }

    impl utoipa::ToSchema for ShareText {}
}
