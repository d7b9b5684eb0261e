//! The triggerFS wire protocol: frames, the length-prefixed codec and names.
//!
//! Layout:
//! - [`frame`]: every message on a dataplane connection, as rkyv types.
//! - [`codec`]: `u32` little-endian length prefix + validated rkyv archive.
//! - [`names`]: what a service, identity or plugin name may look like.
//! - [`text`]: the one text form of each enum ([`TextEnum`]) and [`UnknownText`].
//! - `openapi` (feature `openapi`): the schemas of the OpenAPI document's constrained fields.
//!
//! This crate is pure: it does no I/O and has no async. Each runtime (glommio in the broker,
//! tokio elsewhere) wraps [`codec`] in its own connection type.
#![warn(missing_docs)]

pub mod codec;
pub mod control;
#[allow(missing_docs)] // rkyv derives undocumented Archived twins; our own items are documented.
pub mod frame;
pub mod names;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod text;

/// How many recent idempotency keys ([`IdemKey`]) per source the broker and the worker
/// remember (oldest forgotten first). A sender must keep fewer than this many keyed requests
/// of one source in flight, or a replay may find its key forgotten and run again (the fs
/// module keeps at most 1024).
pub const IDEM_WINDOW: usize = 4096;

/// How many sources one window remembers: the broker's per team, the worker's in all (least
/// recently used forgotten first), so memory never grows with what peers send.
pub const IDEM_SOURCES: usize = 64;

pub mod idem;
pub mod job;

pub use codec::{decode, encode, encode_to_vec, ProtoError, DEFAULT_MAX_FRAME, LEN_PREFIX};
pub use frame::*;
pub use text::{TextEnum, UnknownText};
