//! Services of the caller's team: algorithm, timeout, visibility, bound workers
//! (`/api/v1/services/...`).

use crate::timeout::Timeout;
use proto::control::Visibility;
use proto::job::JobHistory;
use proto::Algorithm;
use serde::{Deserialize, Serialize};

/// A service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceView {
    /// Name, unique in the team.
    pub name: String,
    /// Free text.
    pub description: String,
    /// `roundrobin`, `serial` or `mirror`.
    #[cfg_attr(feature = "openapi", schema(example = "roundrobin"))]
    pub algorithm: Algorithm,
    /// Default timeout in milliseconds; 0: the broker's default.
    pub timeout_ms: i64,
    /// The same as text (`"10s"`), `null` for the default.
    pub timeout: Option<Timeout>,
    /// `local` (owner only), `team` or `public`.
    #[cfg_attr(feature = "openapi", schema(example = "local"))]
    pub visibility: Visibility,
    /// Bound worker identities, in order.
    pub workers: Vec<String>,
    /// Who serves it now: the bound workers that are `ONLINE`, in order. Only bound
    /// workers ever serve a configured service; a worker that announces its name does not,
    /// nor does a bound `local` worker of another user than the service's owner.
    pub serving: Vec<String>,
    /// mirror: workers at once.
    pub batch: Option<i64>,
    /// serial: stop at the first failure.
    pub stop_on_failure: bool,
    /// roundrobin: retry after `Accepted`.
    pub retry: bool,
    /// Who reads its jobs in the history: `sender` (the sender and the team's admins) or
    /// `team` (every member).
    #[cfg_attr(feature = "openapi", schema(example = "sender"))]
    pub history: JobHistory,
    /// Who created it.
    pub owner: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub updated: String,
}

/// A new service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateService {
    /// Name, unique in the team among services and workers (409 when taken).
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::Name))]
    pub name: String,
    /// Free text.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Description>))]
    pub description: Option<String>,
    /// `roundrobin` (default), `serial` or `mirror`.
    #[cfg_attr(feature = "openapi", schema(example = "roundrobin"))]
    pub algorithm: Option<Algorithm>,
    /// Default timeout as text (`"10s"`, `"1h 30m"`); not with `timeout_ms` (422).
    pub timeout: Option<Timeout>,
    /// Default timeout in milliseconds (instead of `timeout`).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::TimeoutMs>))]
    pub timeout_ms: Option<u64>,
    /// `local` (default), `team` or `public` (403 where the team's tier has no public
    /// services).
    #[cfg_attr(feature = "openapi", schema(example = "team"))]
    pub visibility: Option<Visibility>,
    /// Worker identities of the team, each one the caller may bind (403 otherwise): their
    /// own; another's `team` worker (into a `public` service only for an admin); never
    /// another user's `local` worker.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::WorkerList>))]
    pub workers: Option<Vec<String>>,
    /// mirror: workers at once (0 or absent: all).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Batch>))]
    pub batch: Option<u32>,
    /// serial: stop at the first failure.
    pub stop_on_failure: Option<bool>,
    /// roundrobin: retry after `Accepted`.
    pub retry: Option<bool>,
    /// Who reads its jobs in the history: `sender` (default: the sender and the team's
    /// admins) or `team` (every member).
    #[cfg_attr(feature = "openapi", schema(example = "team"))]
    pub history: Option<JobHistory>,
}

/// Changes to a service; absent fields stay. `workers` replaces the list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateService {
    /// Free text.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Description>))]
    pub description: Option<String>,
    /// `roundrobin`, `serial` or `mirror`.
    #[cfg_attr(feature = "openapi", schema(example = "mirror"))]
    pub algorithm: Option<Algorithm>,
    /// Timeout as text; not with `timeout_ms` (422).
    pub timeout: Option<Timeout>,
    /// Timeout in milliseconds.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::TimeoutMs>))]
    pub timeout_ms: Option<u64>,
    /// `local`, `team` or `public` (403 where the team's tier has no public services). A
    /// wider visibility checks every bound worker again, as on create (403).
    #[cfg_attr(feature = "openapi", schema(example = "public"))]
    pub visibility: Option<Visibility>,
    /// Worker identities (replaces the list); a worker not bound before must be one the
    /// caller may bind, as on create (403 otherwise).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::WorkerList>))]
    pub workers: Option<Vec<String>>,
    /// mirror: workers at once (0: all).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Batch>))]
    pub batch: Option<u32>,
    /// serial: stop at the first failure.
    pub stop_on_failure: Option<bool>,
    /// roundrobin: retry after `Accepted`.
    pub retry: Option<bool>,
    /// Who reads its jobs in the history: `sender` (default: the sender and the team's
    /// admins) or `team` (every member).
    #[cfg_attr(feature = "openapi", schema(example = "team"))]
    pub history: Option<JobHistory>,
}

/// A worker to bind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BindWorker {
    /// Worker identity (of the team: 422 otherwise; 409 when it is bound already).
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::Name))]
    pub identity: String,
}
