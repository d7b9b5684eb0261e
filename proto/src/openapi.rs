//! Schemas for the control plane's OpenAPI document (feature `openapi`): the constrained
//! types that fields name with `#[schema(value_type = ..)]` (`Name`, `Text`, ...), each built
//! from the constant or the expression the server checks with, so that the document states
//! exactly what is accepted. [`doc_type!`](crate::doc_type) declares more of them (the `api`
//! crate does, for its own bounds).

use crate::names::{MAX_NAME, NAME_PATTERN, NO_NUL_PATTERN, PLUGIN_PATTERN, SERVICE_REF_PATTERN};
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};

/// Declares a type that exists only for the document: a named schema built by `$schema`.
#[macro_export]
macro_rules! doc_type {
    ($(#[$meta:meta])* $name:ident => $schema:expr) => {
        $(#[$meta])*
        pub struct $name;

        impl ::utoipa::PartialSchema for $name {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                $schema.into()
            }
        }

        impl ::utoipa::ToSchema for $name {}
    };
}

/// A string schema.
pub fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

/// A string schema for text: anything without a NUL character (the control plane refuses
/// those in every string of every body).
pub fn text(description: &str) -> ObjectBuilder {
    string(description).pattern(Some(NO_NUL_PATTERN))
}

/// An integer schema with inclusive bounds.
pub fn integer<N: Into<utoipa::Number>>(
    description: &str,
    minimum: N,
    maximum: N,
    format: KnownFormat,
) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(format)))
        .minimum(Some(minimum))
        .maximum(Some(maximum))
        .description(Some(description))
}

doc_type! {
    /// A team, user, worker, service or directory name (`crate::names::check_simple`).
    Name => string(
        "A name: 1 to 128 letters, digits, `.`, `_` or `-`, but not `.` or `..`.",
    )
    .min_length(Some(1))
    .max_length(Some(MAX_NAME))
    .pattern(Some(NAME_PATTERN))
}

doc_type! {
    /// A service reference (`crate::names::check_service_ref`).
    ServiceRef => string(
        "A service of the caller's team (or a worker identity, which serves itself), or \
         `team/service`: another team's public service. At most 128 characters; each part is \
         a name.",
    )
    .min_length(Some(1))
    .max_length(Some(MAX_NAME))
    .pattern(Some(SERVICE_REF_PATTERN))
}

doc_type! {
    /// A plugin name (`crate::names::check_plugin`).
    PluginName => string(
        "A plugin: names separated by `/` (`command/command`), relative, at most 128 \
         characters.",
    )
    .min_length(Some(1))
    .max_length(Some(MAX_NAME))
    .pattern(Some(PLUGIN_PATTERN))
}

doc_type! {
    /// Any text.
    Text => text("Any text without a NUL character.")
}

doc_type! {
    /// Milliseconds since the Unix epoch, as the broker reports them.
    UnixMs => integer(
        "Milliseconds since the Unix epoch.",
        0,
        u64::MAX,
        KnownFormat::Int64,
    )
}

doc_type! {
    /// What a worker announced, as its report carries it.
    AnnouncedServices => ArrayBuilder::new()
        .items(Name::schema())
        .max_items(Some(crate::control::MAX_ANNOUNCED))
        .description(Some("Service names, at most 64."))
}

doc_type! {
    /// A name in a job record.
    JobName => text("Any text without a NUL character, at most 512 characters.")
        .max_length(Some(crate::job::MAX_JOB_NAME))
}

doc_type! {
    /// A worker's output tail in a job record.
    JobOutput => text("Any text without a NUL character, at most 65536 characters.")
        .max_length(Some(crate::job::JOB_OUTPUT_TAIL))
}

/// A word or an argument's name or value in a job record.
fn job_text(description: &str) -> ObjectBuilder {
    text(description).max_length(Some(crate::job::MAX_JOB_TEXT))
}

doc_type! {
    /// A job's command words.
    JobCommand => ArrayBuilder::new()
        .items(job_text("A word, at most 4096 characters (the broker cuts longer ones)."))
        .max_items(Some(crate::job::MAX_JOB_ITEMS))
        .description(Some("The command words, at most 256."))
}

doc_type! {
    /// A job's arguments as pairs.
    JobArgs => ArrayBuilder::new()
        .items(
            ArrayBuilder::new()
                .items(job_text(
                    "A name or value, at most 4096 characters (the broker cuts longer ones).",
                ))
                .min_items(Some(2))
                .max_items(Some(2)),
        )
        .max_items(Some(crate::job::MAX_JOB_ITEMS))
        .description(Some(
            "Arguments as `[name, value]` pairs, at most 256; values of secret-looking names \
             are stored as `***`.",
        ))
}

doc_type! {
    /// A count of connections, as a broker node's heartbeat carries it.
    Count => integer("How many.", 0, u32::MAX, KnownFormat::Int64)
}

doc_type! {
    /// A broker node's id (`crate::control::check_node_id`).
    NodeId => string("A broker node's id: a UUID in lower-case hyphenated form.")
        .min_length(Some(36))
        .max_length(Some(36))
        .pattern(Some(crate::control::NODE_ID_PATTERN))
}

doc_type! {
    /// The address a broker node advertises (`crate::control::check_advertise`).
    Advertise => string(
        "`host:port` or `tls://host:port`: a DNS name (labels of 1 to 63 letters, digits or \
         `-`, neither first nor last, separated by `.`) or an IPv6 address in brackets, and a \
         port from 1 to 65535; at most 265 characters.",
    )
    .min_length(Some(1))
    .max_length(Some(crate::control::MAX_ADVERTISE))
    .pattern(Some(crate::control::ADVERTISE_PATTERN))
}
