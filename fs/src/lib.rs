//! The fs module: a team's directories and triggers as files over FUSE (`triggerfs fs`).
//!
//! Each `write(2)` to a trigger file becomes one request (or, with `split = "lines"`, one
//! request per batch of complete lines), put in the on-disk [`spool`] before the write
//! returns, and sent from there to the broker in order; a request leaves the spool only once
//! the broker answered it.

pub mod spool;
