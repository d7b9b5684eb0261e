//! The OpenAPI document's frame: info, security schemes, and schema twins of the
//! `proto::control` types (which stay free of documentation dependencies).
//!
//! The paths themselves come from the handlers' `#[utoipa::path]` attributes, collected by
//! the router as it registers them, so the document cannot drift from what is served.
//!
//! Request fields name the constrained types below (`Name`, `Timeout`, `Limit`, ...) with
//! `#[schema(value_type = ..)]`: each builds its schema from the constant or the expression
//! the server checks with, so that the document states exactly what the server accepts (a
//! test sends every boundary to the server). [`layer_responses`] adds the answers that come
//! from the layers every route shares (credentials, JSON, path, body size).

use proto::names::{MAX_NAME, NAME_PATTERN, PLUGIN_PATTERN, SERVICE_REF_PATTERN};
use proto::TextEnum;
use strum::VariantNames;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document's fixed parts.
#[derive(OpenApi)]
#[openapi(
    info(title = "triggerFS control plane", description = "Teams, users, workers, services, directories, triggers, quotas; the broker's feed; the HTTP gateway."),
    modifiers(&Security),
    components(schemas(crate::error::ErrorBody, TriggerId, JobId))
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "jwt",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "broker_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `proto::control::BrokerSnapshot`.
#[derive(ToSchema)]
#[schema(as = BrokerSnapshot)]
pub struct BrokerSnapshotDoc {
    /// Increases with every configuration change.
    pub revision: u64,
    /// The HS256 key that signs client JWTs (hex).
    pub jwt_secret_hex: String,
    /// Every team name.
    pub teams: Vec<String>,
    /// Every member of every team (whose JWTs the broker accepts for that team).
    pub members: Vec<MemberEntryDoc>,
    /// Every worker.
    pub workers: Vec<WorkerEntryDoc>,
    /// Every service.
    pub services: Vec<ServiceEntryDoc>,
}

/// `proto::control::WorkerEntry`.
#[derive(ToSchema)]
#[schema(as = WorkerEntry)]
pub struct WorkerEntryDoc {
    /// Team.
    pub team: String,
    /// Identity.
    pub identity: String,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    /// The user who created it.
    pub owner: String,
    /// `local` or `team`: who may use it directly and its announced services.
    pub visibility: String,
}

/// `proto::control::MemberEntry`.
#[derive(ToSchema)]
#[schema(as = MemberEntry)]
pub struct MemberEntryDoc {
    /// Team.
    pub team: String,
    /// User identity.
    pub identity: String,
    /// The user's id (the JWT's `uid` claim).
    pub uid: i64,
    /// The user's secret generation (the JWT's `sgen` claim): a token from before the user's
    /// last change of secret is refused.
    pub sgen: i64,
}

/// `proto::control::ServiceEntry`.
#[derive(ToSchema)]
#[schema(as = ServiceEntry)]
pub struct ServiceEntryDoc {
    /// Team.
    pub team: String,
    /// Name.
    pub name: String,
    /// Owner identity.
    pub owner: String,
    /// `roundrobin`, `serial` or `mirror`.
    #[schema(value_type = Algorithm)]
    pub algorithm: String,
    /// Bound worker identities, in order.
    pub workers: Vec<String>,
    /// Default timeout; 0: the broker's.
    pub timeout_ms: u64,
    /// `local`, `team` or `public`.
    #[schema(value_type = Visibility)]
    pub visibility: String,
    /// mirror: workers at once.
    pub batch: Option<u32>,
    /// serial: stop at the first failure.
    pub stop_on_failure: bool,
    /// roundrobin: retry after `Accepted`.
    pub retry: bool,
}

/// `proto::control::BrokerReport`.
#[derive(ToSchema)]
#[schema(as = BrokerReport)]
pub struct BrokerReportDoc {
    /// Worker state changes, oldest first.
    pub workers: Vec<WorkerStateReportDoc>,
    /// `workers` lists every worker online at the broker: any other is `DISCONNECTED`.
    #[schema(required = false)]
    pub full: bool,
}

/// `proto::control::WorkerStateReport`.
#[derive(ToSchema)]
#[schema(as = WorkerStateReport)]
pub struct WorkerStateReportDoc {
    /// Team (any text: a worker no team has is not updated, and not an error).
    #[schema(value_type = Text)]
    pub team: String,
    /// Identity (any text, as `team`).
    #[schema(value_type = Text)]
    pub identity: String,
    /// `ONLINE` or `DISCONNECTED`.
    #[schema(value_type = WorkerState)]
    pub state: String,
    /// Milliseconds since the Unix epoch (a later time than the column holds is stored as the
    /// latest it holds).
    #[schema(value_type = UnixMs)]
    pub at_unix_ms: u64,
    /// Orders one identity's connections within one broker run.
    #[schema(required = false)]
    pub generation: u64,
    /// The services it announced (`ONLINE`).
    #[schema(required = false, value_type = AnnouncedServices)]
    pub services: Vec<String>,
}

doc_type! {
    /// What a worker announced, as its report carries it.
    AnnouncedServices => ArrayBuilder::new()
        .items(<Name as utoipa::PartialSchema>::schema())
        .max_items(Some(crate::routes::MAX_ANNOUNCED))
        .description(Some("Service names, at most 64."))
}

/// `proto::control::ConfigEvent`: the `data` of `event: config`.
#[derive(ToSchema)]
#[schema(as = ConfigEvent)]
pub struct ConfigEventDoc {
    /// The new revision.
    pub revision: u64,
    /// The team whose objects changed; empty for a change to a user that belongs to no one
    /// team (`max_teams`).
    pub team: String,
    /// `team`, `user`, `worker`, `service`, `directory`, `trigger`.
    pub object: String,
    /// `created`, `updated`, `deleted`; `renamed` for a trigger given a new path (moved or
    /// renamed, with or without other changes).
    pub action: String,
    /// The object's name or path; after `renamed`, the new path.
    pub name: String,
}

/// Declares a type that exists only for the document: a named schema built by `$schema`.
macro_rules! doc_type {
    ($(#[$meta:meta])* $name:ident => $schema:expr) => {
        $(#[$meta])*
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $schema.into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use doc_type;

/// A string schema.
pub(crate) fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

/// An integer schema with inclusive bounds.
pub(crate) fn integer<N: Into<utoipa::Number>>(
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

/// The texts of an enum, from its variants (the names serde reads).
pub(crate) fn texts<T: TextEnum>(description: &str) -> ObjectBuilder {
    string(description).enum_values(Some(<T as VariantNames>::VARIANTS.iter().copied()))
}

doc_type! {
    /// A team, user, worker, service or directory name (`proto::names::check_simple`).
    Name => string(
        "A name: 1 to 128 letters, digits, `.`, `_` or `-`, but not `.` or `..`.",
    )
    .min_length(Some(1))
    .max_length(Some(MAX_NAME))
    .pattern(Some(NAME_PATTERN))
}

doc_type! {
    /// A service reference (`proto::names::check_service_ref`).
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
    /// A plugin name (`proto::names::check_plugin`).
    PluginName => string(
        "A plugin: names separated by `/` (`command/command`), relative, at most 128 \
         characters.",
    )
    .min_length(Some(1))
    .max_length(Some(MAX_NAME))
    .pattern(Some(PLUGIN_PATTERN))
}

doc_type! {
    /// A trigger's id (only in paths, so listed in [`ApiDoc`]'s components).
    TriggerId => integer("A trigger's id.", 1, i64::MAX, KnownFormat::Int64)
}

doc_type! {
    /// A timeout as text (`crate::routes::timeout_pattern`).
    Timeout => string(
        "A duration of at most 7 days: one term (`90s`, `1500ms`, `168h`, `7d`) or terms in \
         descending units separated by one space, each after the first below one of the unit \
         before it (`1h 30m`, `6d 23h 59m 59s 999ms`). Units: `d`, `h`, `m`, `s`, `ms`. `0s`: \
         the default.",
    )
    .pattern(Some(crate::routes::timeout_pattern()))
}

doc_type! {
    /// A timeout in milliseconds.
    TimeoutMs => integer(
        "Milliseconds, at most 7 days (604800000); 0: the default.",
        0,
        crate::routes::MAX_TIMEOUT_MS,
        KnownFormat::Int64,
    )
}

/// A string schema for text: anything without a NUL character (`crate::extract` refuses
/// those in every string of every body).
pub(crate) fn text(description: &str) -> ObjectBuilder {
    string(description).pattern(Some(crate::extract::NO_NUL_PATTERN))
}

doc_type! {
    /// Any text.
    Text => text("Any text without a NUL character.")
}

doc_type! {
    /// Free text.
    Description => text("Free text, at most 4096 characters.")
        .max_length(Some(crate::routes::MAX_DESCRIPTION))
}

doc_type! {
    /// A user's secret.
    Secret => text("A secret: any text but the empty one.").min_length(Some(1))
}

doc_type! {
    /// A new secret for a user (`crate::routes::MAX_SECRET`).
    NewSecret => text("A new secret: 1 to 1024 characters.")
        .min_length(Some(1))
        .max_length(Some(crate::routes::MAX_SECRET))
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
    /// `proto::Algorithm`.
    Algorithm => texts::<proto::Algorithm>(
        "How a request picks workers: `roundrobin` (one, the next), `mirror` (all), `serial` \
         (all, one after the other).",
    )
}

doc_type! {
    /// `proto::control::Visibility`.
    Visibility => texts::<proto::control::Visibility>(
        "Who may use it: `local` (its owner), `team`, `public` (every team).",
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
    /// `proto::control::WorkerState`.
    WorkerState => texts::<proto::control::WorkerState>(
        "Whether the worker is connected to a broker.",
    )
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

/// Adds to every operation the answers of the layers all routes share, where the route does
/// not state them itself: 401 where it needs a credential (the `AuthUser`, `BrokerAuth` and
/// `EventsCaller` extractors), 400 where it reads a JSON body (`crate::extract::Json`) or path
/// parameters (`crate::extract::Path`), and 413 everywhere (`crate::extract::buffer_body`
/// reads every body before routing).
pub(crate) fn layer_responses(doc: &mut utoipa::openapi::OpenApi) {
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        let operations: [&mut Option<Operation>; 5] = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in operations.into_iter().flatten() {
            let mut add = |status: &str, description: &str| {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(error(description)));
            };
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                add(
                    "401",
                    "No credential, a bad one, or a JWT past its expiry (`TokenExpired`), or \
                     the user is no longer a member of the token's team.",
                );
            }
            let has_body = op.request_body.is_some();
            let has_path = op
                .parameters
                .iter()
                .flatten()
                .any(|p| p.parameter_in == ParameterIn::Path);
            if has_body || has_path {
                add(
                    "400",
                    "Malformed: JSON that does not parse, a wrong type, a missing or unknown \
                     field, a NUL character, or a path parameter that is not text.",
                );
            }
            add(
                "413",
                "The request body is larger than the limit (1 MiB unless configured).",
            );
            add(
                "408",
                "`RequestTimeout`: the request body did not arrive within its deadline \
                 (`--http-body-timeout`, 10 s unless configured, plus 1 s per 64 KiB of it); \
                 the connection is closed.",
            );
            add(
                "503",
                "`ServiceUnavailable`: too many requests without valid credentials at once \
                 (`--http-max-unauthenticated`), or too many connections; retry after \
                 `Retry-After`.",
            );
        }
    }
}

doc_type! {
    /// A job's id (only in paths).
    JobId => integer("A job's id.", 1, i64::MAX, KnownFormat::Int64)
}

doc_type! {
    /// `proto::job::JobHistory`.
    JobHistoryDoc => texts::<proto::job::JobHistory>(
        "Who reads the service's jobs in the team's history (its command, arguments and \
         output, which may hold secrets): `sender` (default: the member who sent it and the \
         team's admins) or `team` (every member of the team; redacted as ever). A job of \
         another team's request is its sender's and that team's admins', and a `local` \
         service's its sender's alone, whatever this says.",
    )
}

doc_type! {
    /// `proto::job::JobReaders`.
    JobReadersDoc => texts::<proto::job::JobReaders>(
        "Who reads the job: `team` (every member), `sender_and_admins` (default) or `sender` \
         (a `local` service or worker).",
    )
}

doc_type! {
    /// `proto::job::JobStatus`.
    JobStatusDoc => texts::<proto::job::JobStatus>(
        "A job's status, the worst of its workers' outcomes: `ok` (every worker exited 0), \
         `failed` (some failed), `timed_out` (none failed, some timed out or never answered), \
         `lost` (some went away mid-run), `cancelled`.",
    )
}

doc_type! {
    /// `proto::job::JobOutcome`.
    JobOutcomeDoc => texts::<proto::job::JobOutcome>(
        "How one worker's part ended: `ok`, `failed` (non-zero exit or no run), `timed_out`, \
         `lost` (its connection went away), `cancelled`, `no_response`.",
    )
}

doc_type! {
    /// A name in a job record.
    JobName => text("Any text without a NUL character, at most 512 characters.")
        .max_length(Some(proto::job::MAX_JOB_NAME))
}

doc_type! {
    /// A worker's output tail in a job record.
    JobOutput => text("Any text without a NUL character, at most 65536 characters.")
        .max_length(Some(proto::job::JOB_OUTPUT_TAIL))
}

doc_type! {
    /// A job's command words.
    JobCommand => ArrayBuilder::new()
        .items(text("A word, at most 4096 characters (the broker cuts longer ones).").max_length(Some(proto::job::MAX_JOB_TEXT)))
        .max_items(Some(proto::job::MAX_JOB_ITEMS))
        .description(Some("The command words, at most 256."))
}

doc_type! {
    /// A job's arguments as pairs.
    JobArgs => ArrayBuilder::new()
        .items(
            ArrayBuilder::new()
                .items(text("A name or value, at most 4096 characters (the broker cuts longer ones).").max_length(Some(proto::job::MAX_JOB_TEXT)))
                .min_items(Some(2))
                .max_items(Some(2)),
        )
        .max_items(Some(proto::job::MAX_JOB_ITEMS))
        .description(Some(
            "Arguments as `[name, value]` pairs, at most 256; values of secret-looking names \
             are stored as `***`.",
        ))
}

/// `proto::job::JobBatch`.
#[derive(ToSchema)]
#[schema(as = JobBatch)]
pub struct JobBatchDoc {
    /// Records, oldest first (at most 1024).
    #[schema(max_items = 1024)]
    pub jobs: Vec<JobRecordDoc>,
}

/// `proto::job::JobRecord`.
#[derive(ToSchema)]
#[schema(as = JobRecord)]
pub struct JobRecordDoc {
    /// Unique per record (the parts of one record share it); a record whose key is stored
    /// already only adds the workers not stored yet.
    #[schema(value_type = JobName)]
    pub key: String,
    /// The caller's team; a record of a team that does not exist is skipped.
    #[schema(value_type = JobName)]
    pub team: String,
    /// The caller.
    #[schema(value_type = JobName)]
    pub identity: String,
    /// The service: `name` in the caller's team, `team/name` for another team's.
    #[schema(value_type = JobName)]
    pub service: String,
    /// The service's algorithm.
    #[schema(value_type = JobName)]
    pub algorithm: String,
    /// The plugin.
    #[schema(value_type = JobName)]
    pub plugin: String,
    /// The command words.
    #[schema(required = false, value_type = JobCommand)]
    pub command: Vec<String>,
    /// Arguments.
    #[schema(required = false, value_type = JobArgs)]
    pub args: Vec<(String, String)>,
    /// Arrival (milliseconds since the Unix epoch).
    pub started_unix_ms: u64,
    /// Arrival to summary (milliseconds).
    pub duration_ms: u64,
    /// The workers (of this part), at most 10000.
    #[schema(required = false, max_items = 10000)]
    pub workers: Vec<JobWorkerDoc>,
    /// Who reads the job (absent: its sender and the team's admins).
    #[schema(required = false, value_type = JobReadersDoc)]
    pub readers: String,
}

/// `proto::job::JobWorker`.
#[derive(ToSchema)]
#[schema(as = JobWorker)]
pub struct JobWorkerDoc {
    /// Worker identity.
    #[schema(value_type = JobName)]
    pub worker: String,
    /// How it ended.
    #[schema(value_type = JobOutcomeDoc)]
    pub outcome: String,
    /// Exit code, when it exited.
    #[schema(required = false, minimum = -2147483648, maximum = 2147483647)]
    pub exit_code: Option<i32>,
    /// From its first answer (`Accepted`) to its end (milliseconds).
    pub duration_ms: u64,
    /// The tail of its output.
    #[schema(required = false, value_type = JobOutput)]
    pub output: String,
    /// Earlier output was left out.
    #[schema(required = false)]
    pub truncated: bool,
}
