//! The OpenAPI document's frame: info, security schemes, and schema twins of the
//! `proto::control` types (which stay free of documentation dependencies).
//!
//! The paths themselves come from the handlers' `#[utoipa::path]` attributes, collected by
//! the router as it registers them, so the document cannot drift from what is served.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document's fixed parts.
#[derive(OpenApi)]
#[openapi(
    info(title = "triggerFS control plane", description = "Teams, users, workers, services, directories, triggers, quotas; the broker's feed; the HTTP gateway."),
    modifiers(&Security),
    components(schemas(crate::error::ErrorBody))
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
    pub algorithm: String,
    /// Bound worker identities, in order.
    pub workers: Vec<String>,
    /// Default timeout; 0: the broker's.
    pub timeout_ms: u64,
    /// `local`, `team` or `public`.
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
    pub full: Option<bool>,
}

/// `proto::control::WorkerStateReport`.
#[derive(ToSchema)]
#[schema(as = WorkerStateReport)]
pub struct WorkerStateReportDoc {
    /// Team.
    pub team: String,
    /// Identity.
    pub identity: String,
    /// `ONLINE` or `DISCONNECTED`.
    pub state: String,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Orders one identity's connections within one broker run.
    pub generation: Option<u64>,
    /// The services it announced (`ONLINE`).
    pub services: Option<Vec<String>>,
}

/// `proto::control::ConfigEvent`: the `data` of `event: config`.
#[derive(ToSchema)]
#[schema(as = ConfigEvent)]
pub struct ConfigEventDoc {
    /// The new revision.
    pub revision: u64,
    /// The team whose objects changed.
    pub team: String,
    /// `team`, `user`, `worker`, `service`, `directory`, `trigger`.
    pub object: String,
    /// `created`, `updated`, `deleted`.
    pub action: String,
    /// The object's name or path.
    pub name: String,
}
