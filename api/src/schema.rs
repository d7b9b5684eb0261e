//! The constrained schemas the API's fields name (feature `openapi`), each built from the
//! constant the control plane checks with; `proto::openapi` has those the broker's types
//! share (`Name`, `Text`, ...).

use crate::timeout::MAX_TIMEOUT_MS;
use crate::triggers::{MAX_ARGS, MAX_ARG_CHARS, MAX_BATCH_LINES, MAX_HITS_PER_CALL, MAX_MODE};
use proto::doc_type;
use proto::names::MAX_NAME;
use proto::openapi::{integer, string, text, Name};
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, Type};

doc_type! {
    /// A trigger's id (only in paths).
    TriggerId => integer("A trigger's id.", 1, i64::MAX, KnownFormat::Int64)
}

doc_type! {
    /// A job's id (only in paths).
    JobId => integer("A job's id.", 1, i64::MAX, KnownFormat::Int64)
}

doc_type! {
    /// A timeout in milliseconds.
    TimeoutMs => integer(
        "Milliseconds, at most 7 days (604800000); 0: the default.",
        0,
        MAX_TIMEOUT_MS,
        KnownFormat::Int64,
    )
}

doc_type! {
    /// Free text.
    Description => text("Free text, at most 4096 characters.")
        .max_length(Some(crate::MAX_DESCRIPTION))
}

doc_type! {
    /// A user's secret.
    Secret => text("A secret: any text but the empty one.").min_length(Some(1))
}

doc_type! {
    /// A new secret for a user ([`crate::users::MAX_SECRET`]).
    NewSecret => text("A new secret: 1 to 1024 characters.")
        .min_length(Some(1))
        .max_length(Some(crate::users::MAX_SECRET))
}

doc_type! {
    /// A limit on objects, users or teams.
    Limit => integer(
        "How many at most; 0 allows none.",
        0,
        i64::MAX,
        KnownFormat::Int64,
    )
}

doc_type! {
    /// Worker identities, in order.
    WorkerList => ArrayBuilder::new()
        .items(Name::schema())
        .unique_items(true)
        .description(Some(
            "Worker identities of the caller's team, in order, each at most once; every one \
             must exist (422 otherwise).",
        ))
}

doc_type! {
    /// `mirror`: how many workers run at once.
    Batch => integer(
        "mirror: how many workers run at once; 0: all.",
        0,
        u32::MAX,
        KnownFormat::Int64,
    )
}

doc_type! {
    /// A worker's visibility: `proto::control::Visibility` without `public`.
    WorkerVisibility => string(
        "Who may use the worker by its identity and the ad-hoc services it announces: `local` \
         (its owner) or `team` (every member). Ad-hoc services never reach other teams.",
    )
    .enum_values(Some(["local", "team"]))
}

doc_type! {
    /// A directory's path.
    DirectoryPath => string("`/name` or `/name/sub/...` (the leading `/` may be left out): 1 to 16 names, each following the name rule.")
        .min_length(Some(1))
        .max_length(Some(crate::directories::MAX_PATH))
        .pattern(Some(crate::directories::PATH_PATTERN))
}

doc_type! {
    /// A trigger's path.
    TriggerPath => string("`/directory/name`, the directory nested or not (1 to 16 names): the directory must exist (422 otherwise).")
        .min_length(Some(4))
        .max_length(Some(crate::directories::MAX_PATH + MAX_NAME + 1))
        .pattern(Some(crate::triggers::PATH_PATTERN))
}

doc_type! {
    /// Unix mode bits.
    Mode => integer(
        "Unix mode bits, at most 0o7777 (4095); e.g. 420 = 0o644.",
        0,
        MAX_MODE,
        KnownFormat::Int32,
    )
}

doc_type! {
    /// Lines one request of a `split = "lines"` trigger carries.
    BatchLines => integer(
        "The most complete lines one request of a `split = \"lines\"` trigger carries, 1 to \
         100000 (default 1000); 1: one request per line.",
        1,
        MAX_BATCH_LINES,
        KnownFormat::Int32,
    )
}

doc_type! {
    /// Hits one call adds.
    HitCount => integer("How many runs to count.", 0, MAX_HITS_PER_CALL, KnownFormat::Int32)
}

doc_type! {
    /// Plugin arguments: a trigger's defaults, or a gateway request's.
    ArgMap => ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("At most 256 arguments; keys 1 to 4096 characters, values at most 4096."))
        .max_properties(Some(MAX_ARGS))
        .property_names(Some(text("An argument's name.").min_length(Some(1)).max_length(Some(MAX_ARG_CHARS))))
        .additional_properties(Some(text("An argument's value.").max_length(Some(MAX_ARG_CHARS))))
}
