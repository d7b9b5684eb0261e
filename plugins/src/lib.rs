//! triggerFS plugin SDK and the core plugins.
//!
//! Layout:
//! - [`request`]: [`PluginRequest`], the JSON object a plugin reads on stdin. The worker
//!   serialises this same struct, so the two cannot drift apart.
//! - [`core`]: the core plugins `echo`, `command`, `file` and `append`, written once as plain
//!   functions over a [`core::CoreRequest`]: the worker serves them with these, and
//!   [`run_core`] is their stdin/stdout wrapper.
//! - [`manifest`]: [`Manifest`], a plugin's `plugin.toml`: a core plugin the worker serves
//!   itself (`core`, `append`'s `sync`), or a persistent plugin (`persistent`,
//!   `max_concurrency`, `restart_backoff`, `cancel_grace`).
//! - [`install`](mod@install): lays the core plugins out under a plugins path as manifests the
//!   worker serves itself. (A copy of the `triggerfs` binary started under a core plugin's
//!   name still runs it, [`core_plugin_for_argv0`].)
//! - [`listing`]: what a plugins path offers, by name, as the worker resolves it (`triggerfs
//!   plugins list DIR`).
//! - [`persistent`]: the JSON-lines frames a persistent plugin exchanges with the worker, and
//!   [`persistent::serve`], a helper for writing one in Rust.
//!
//! This crate is not async and has no dependency on the dataplane protocol: a plugin is just a
//! process that reads JSON and writes lines (`plugins/README.md` has both contracts).

pub mod core;
pub mod install;
pub mod listing;
pub mod manifest;
pub mod persistent;
pub mod request;

pub use crate::core::{core_plugin_for_argv0, run_core, CORE_PLUGINS};
pub use crate::install::{install, InstallError};
pub use crate::listing::{list, Kind, Listed};
pub use crate::manifest::{CorePlugin, Manifest, ManifestError, SyncPolicy};
pub use crate::request::{PluginError, PluginRequest};
