//! The triggerFS wire protocol: frames, the length-prefixed codec and names.
//!
//! Layout:
//! - [`frame`]: every message on a dataplane connection, as rkyv types.
//! - [`codec`]: `u32` little-endian length prefix + validated rkyv archive.
//! - [`names`]: what a service, identity or plugin name may look like.
//! - [`text`]: the one text form of each enum ([`TextEnum`]) and [`UnknownText`].
//!
//! This crate is pure: it does no I/O and has no async. Each runtime (glommio in the broker,
//! tokio elsewhere) wraps [`codec`] in its own connection type.
#![warn(missing_docs)]

pub mod codec;
pub mod control;
#[allow(missing_docs)] // rkyv derives undocumented Archived twins; our own items are documented.
pub mod frame;
pub mod names;
pub mod text;

pub use codec::{decode, encode, encode_to_vec, ProtoError, DEFAULT_MAX_FRAME, LEN_PREFIX};
pub use frame::*;
pub use text::{TextEnum, UnknownText};
