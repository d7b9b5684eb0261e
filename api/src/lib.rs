//! The control plane's API as one set of types: every `/api/v1` request and response, with
//! enums where the API has a closed set of words, and (feature `client`) the one client that
//! every caller uses.
#![deny(missing_docs)]

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub use client::ApiClient;
