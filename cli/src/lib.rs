//! triggerFS's commands for people: the management console (`triggerfs cli`), one request
//! (`triggerfs client`, with its live rendering) and the job history (`triggerfs jobs`).
//!
//! - [`console`]: `triggerfs cli`, the console in the seed's Juniper-like syntax.
//! - [`client_cmd`]: `triggerfs client` and its rendering.
//! - [`jobs_cmd`]: `triggerfs jobs list|show` and `client --rerun`.
//! - [`schedules_cmd`]: `triggerfs schedules list|show|create|run|pause|resume|delete`.
//! - [`cluster_cmd`]: `triggerfs cluster status`, the cell's broker nodes.
//!
//! (The crate is `cli` rather than `console`: indicatif depends on a crates.io crate of that
//! name, and `cargo -p console` would be ambiguous.)

pub mod client_cmd;
pub mod cluster_cmd;
pub mod console;
pub mod jobs_cmd;
pub mod schedules_cmd;
