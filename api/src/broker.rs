//! The broker's feed (`/api/v1/broker/...`, the broker token): the configuration snapshot,
//! and worker state flowing back. The types both sides share are `proto::control`'s.

pub use proto::control::{
    BrokerReport, BrokerSnapshot, MemberEntry, NodeEntry, NodeHeartbeat, NodeList, ServiceEntry,
    WorkerEntry, WorkerStateReport, MAX_ANNOUNCED,
};
pub use proto::job::{JobBatch, JobRecord, JobWorker};
use serde::{Deserialize, Serialize};

/// The broker's route for job records.
pub const JOBS_PATH: &str = "/api/v1/broker/jobs";
/// Bodies the broker's job route takes at most (a batch of records with output tails; every
/// other route takes the control plane's limit, 1 MiB unless configured).
pub const JOBS_MAX_BODY: usize = 16 * 1024 * 1024;

/// How many reported workers were known.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportAnswer {
    /// Workers updated.
    pub updated: u64,
}
