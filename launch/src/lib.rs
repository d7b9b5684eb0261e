//! What starts triggerFS's long-running processes, and the settings they read.
//!
//! - [`up`]: `triggerfs up` (control plane, broker and a local worker in one process) and
//!   `triggerfs control`.
//! - [`broker`], [`worker`], [`mount`]: `triggerfs broker`, `worker` and `fs`, their flags and
//!   the settings of the library crates they make.
//! - [`settings`]: the file `triggerfs.toml`.
//! - [`seed`]: the seed's program names (`triggerfs-client` ...) and single-dash flags.
//! - [`metrics_http`]: the broker's `/metrics` listener.
//! - [`signals`]: SIGINT and SIGTERM, and the broker's drain on them.

pub mod broker;
pub mod control;
pub mod metrics_http;
pub mod mount;
pub mod seed;
pub mod settings;
pub mod signals;
pub mod up;
pub mod worker;
