//! The cell's broker nodes as users see them (`GET /api/v1/brokers`): every live node, with
//! the cell's connection counts for operators and the caller's team's workers for everyone.

use serde::{Deserialize, Serialize};

/// One live broker node of the cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrokerNodeView {
    /// The node's id (a UUID it picked when it started).
    pub node: String,
    /// Where peers connect to it: `host:port` or `tls://host:port`.
    pub advertise: String,
    /// When this broker run started (milliseconds since the Unix epoch).
    pub started_unix_ms: u64,
    /// When the control plane last heard from it (milliseconds since the Unix epoch).
    pub last_seen_unix_ms: u64,
    /// Client connections open at the node (operators only; `null` for everyone else).
    pub clients: Option<u32>,
    /// Worker connections open at the node, every team's (operators only; `null` for
    /// everyone else).
    pub workers: Option<u32>,
    /// The caller's team's workers connected to the node.
    pub team_workers: u32,
}
