//! The control plane's API as one set of types: every `/api/v1` request and response, with
//! enums where the API has a closed set of words, and (feature `client`) the one client that
//! every caller uses.
//!
//! One module per resource, named as the routes are; each type is named and shaped as its
//! JSON. Enums the broker's side shares live in `proto` and are re-exported here (one type
//! per concept). Feature `openapi` derives `utoipa::ToSchema` on every type, for the control
//! plane's OpenAPI document; the constrained schemas the fields name are in `schema`.
#![deny(missing_docs)]

#[cfg(feature = "client")]
pub mod client;

pub mod broker;
pub mod brokers;
pub mod directories;
pub mod errors;
pub mod events;
pub mod gateway;
pub mod invitations;
pub mod jobs;
pub mod login;
pub mod schedules;
#[cfg(feature = "openapi")]
pub mod schema;
pub mod services;
pub mod teams;
pub mod timeout;
pub mod triggers;
pub mod users;
pub mod workers;

pub use errors::{ErrorBody, ErrorCode};
pub use events::{Action, ConfigEvent, Object};
pub use proto::control::{Visibility, WorkerState};
pub use proto::job::{JobHistory, JobOutcome, JobReaders, JobStatus, StatusCounts};
pub use proto::Algorithm;
pub use teams::Role;
pub use timeout::Timeout;
pub use triggers::Split;

/// Longest description an object keeps, in characters (as JSON Schema's `maxLength` counts).
pub const MAX_DESCRIPTION: usize = 4096;

#[cfg(feature = "client")]
pub use client::Api;
