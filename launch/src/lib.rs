//! What starts triggerFS's long-running processes, and the settings they read. Each command
//! is a module with its flags (a `clap::Args` the binary flattens) and a `run`.
//!
//! - [`up`]: `triggerfs up` (control plane, broker and a local worker in one process).
//! - [`control`]: `triggerfs control`, and the API's flags and start that `up` shares.
//! - [`broker`], [`worker`], [`mount`]: `triggerfs broker`, `worker` and `fs`.
//! - [`settings`]: the file `triggerfs.toml`, the one place it meets the flags
//!   (`Settings::under_flags`), and the login flags every command that logs in flattens.
//! - [`plugins_cmd`]: `triggerfs plugins install|list`.
//! - [`seed`]: the seed's program names (`triggerfs-client` ...) and single-dash flags.
//! - [`metrics_http`]: the broker's `/metrics` listener.
//! - [`signals`]: SIGINT and SIGTERM, and the broker's drain on them.

pub mod broker;
pub mod control;
pub mod metrics_http;
pub mod mount;
pub mod plugins_cmd;
pub mod seed;
pub mod settings;
pub mod signals;
pub mod up;
pub mod worker;
