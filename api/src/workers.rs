//! Workers of the caller's team (`/api/v1/workers/...`). The token (uuid v4) is shown once,
//! at creation and on `regenerate`.

use proto::control::{Visibility, WorkerState};
use serde::{Deserialize, Serialize};

/// A worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerView {
    /// Identity, unique in the team.
    pub identity: String,
    /// Free text.
    pub description: String,
    /// `ONLINE` or `DISCONNECTED` (reported by the broker).
    pub state: WorkerState,
    /// When the broker last reported it (RFC 3339), if ever.
    pub last_seen: Option<String>,
    /// Who owns it: its creator, or whom an admin gave it to.
    pub owner: String,
    /// Whether its owner is a member of the team. A worker whose owner left or was removed
    /// does not serve: the broker refuses it and closes its connection, until an admin gives
    /// it a new owner (`PATCH` with `owner`) or deletes it.
    pub owner_is_member: bool,
    /// Who may call it by its identity and use the services it announces: `local` (its
    /// owner) or `team` (every member). Ad-hoc services never reach other teams.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::WorkerVisibility, example = "team"))]
    pub visibility: Visibility,
    /// The services it announced when it last came online. They are ad-hoc services only
    /// where the team has no configured service of that name (a configured service is served
    /// only by the workers bound to it).
    pub announces: Vec<String>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub updated: String,
    /// In a cell of brokers: how many of the live broker nodes it is connected to.
    pub nodes: NodesReached,
}

/// How many of a cell's live broker nodes a worker is connected to (both 0 outside a cell:
/// no node registered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodesReached {
    /// Live nodes that report it connected.
    pub reached: u32,
    /// Live nodes of the cell.
    pub live: u32,
}

impl std::fmt::Display for NodesReached {
    /// `reached/live`, or `-` outside a cell.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.live == 0 {
            f.write_str("-")
        } else {
            write!(f, "{}/{}", self.reached, self.live)
        }
    }
}

/// A worker with its token: only in the answers of create and regenerate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerWithToken {
    /// The worker.
    #[serde(flatten)]
    pub worker: WorkerView,
    /// The token (uuid v4); it is not shown again.
    pub token: String,
}

/// A new worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateWorker {
    /// Identity, unique in the team among workers and services (409 when taken).
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::Name))]
    pub identity: String,
    /// Free text.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Description>))]
    pub description: Option<String>,
    /// `team` (default) or `local`: who may use it directly and its announced services.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::WorkerVisibility>, example = "team"))]
    pub visibility: Option<Visibility>,
}

/// Changes to a worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateWorker {
    /// Free text.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Description>))]
    pub description: Option<String>,
    /// `team` or `local`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::WorkerVisibility>, example = "local"))]
    pub visibility: Option<Visibility>,
    /// A new owner: a member of the team (422 otherwise); only an admin gives a worker to
    /// someone (403). Its services and bindings stay; a `local` worker then serves only its
    /// new owner's services.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<proto::openapi::Name>))]
    pub owner: Option<String>,
}
