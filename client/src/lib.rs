//! The triggerFS client library: what every program uses to reach the broker.
//!
//! Layout:
//! - [`connection`]: a tokio frame reader/writer over one broker socket; the worker, the fs
//!   module and the benchmarks reach the broker only through it.
//! - [`Client`] (in `client.rs`): many requests over one connection at a time to one broker
//!   node of a list ([`BrokerList`]), failing over to another node (given, or announced by the
//!   broker: [`nodes`]) when it is lost. Each request's frames go to its own bounded channel,
//!   read through a [`RequestHandle`] as [`ClientEvent`]s.
//! - `session.rs`: one connection: the handshake, the reader and writer tasks, heartbeats.
//! - [`Outcome`] (in `outcome.rs`): what a request came to, summed up from its events;
//!   serializable for `--json`.
//! - [`login`]: team, identity and secret for a JWT from the control plane.
//!
//! The `triggerfs client` command (flags, terminal output) lives in the binary. This crate
//! prints nothing and does not install a tracing subscriber: both are the binary's job.
#![warn(missing_docs)]

mod client;
pub mod connection;
pub mod login;
pub mod nodes;
mod outcome;
mod session;

pub use client::{Client, ClientEvent, RequestHandle, RequestSpec};
pub use nodes::BrokerList;
pub use outcome::{ErrorInfo, Outcome, OutputLine, WorkerOutcome, WorkerStatus};

use connection::ConnectionError;
use proto::ErrorKind;

/// What can go wrong for a client, before or outside a request's own events.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker could not be reached or the handshake's socket failed.
    #[error("cannot reach the broker at {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        #[source]
        source: ConnectionError,
    },
    /// Connect + handshake took too long.
    #[error("timed out connecting to the broker at {addr}")]
    ConnectTimeout {
        /// The address tried.
        addr: String,
    },
    /// The broker refused our `Hello` (bad token, wrong version, …).
    #[error("the broker refused the connection: {kind}: {reason}")]
    Refused {
        /// Why, typed.
        kind: ErrorKind,
        /// Detail.
        reason: String,
    },
    /// The broker refused a connection that presented no credentials: none were given.
    #[error(
        "no credentials were given{missing}, and the broker at {broker} refused the connection \
         ({kind}: {reason}). Give them with --config FILE (a triggerfs.toml whose [main] has team, \
         identity and secret; `triggerfs up` writes one to its data dir, triggerfs-data/triggerfs.toml), \
         with --team, --identity and --secret (TRIGGERFS_TEAM, TRIGGERFS_IDENTITY, TRIGGERFS_SECRET), \
         or with --token JWT (TRIGGERFS_TOKEN)"
    )]
    NoCredentials {
        /// The broker's address.
        broker: String,
        /// What of team, identity and secret is missing when some were given, e.g.
        /// ` (--secret is missing)`; empty when none were.
        missing: String,
        /// The broker's error kind.
        kind: ErrorKind,
        /// The broker's reason.
        reason: String,
    },
    /// The broker answered the `Hello` with something other than `Welcome` or `Refused`.
    #[error("bad handshake with the broker: {reason}")]
    Handshake {
        /// What arrived instead.
        reason: String,
    },
    /// No broker of a list of several could be reached (each one tried once).
    #[error("cannot reach any of the brokers {addrs}; the last one: {last}")]
    Unreachable {
        /// The addresses tried, comma-separated, in the order tried.
        addrs: String,
        /// The last one's error.
        last: Box<ClientError>,
    },
    /// The connection is gone; no request can be sent on it.
    #[error("the connection to the broker is gone")]
    Disconnected,
    /// Input the command needs could not be read (stdin, payload file).
    #[error("cannot read {what}: {source}")]
    Read {
        /// What was being read.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control plane could not be reached for login.
    #[error("cannot reach the control plane at {url}: {message}")]
    ControlPlane {
        /// The URL tried.
        url: String,
        /// Why.
        message: String,
    },
    /// The control plane refused the login.
    #[error("login refused: {}: {message}", api::client::code_text(*.status, *.code))]
    Login {
        /// The HTTP status.
        status: u16,
        /// The API's error code (e.g. `Unauthorized`); `None` when the answer had no error body.
        code: Option<api::ErrorCode>,
        /// Detail.
        message: String,
    },
    /// Writing our own output failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
}

impl ClientError {
    /// The process exit status for this error: 3 when the broker is unreachable or gone,
    /// 2 when it refused us or our input is bad, 1 when our own output failed.
    pub fn exit_status(&self) -> i32 {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Handshake { .. }
            | ClientError::Unreachable { .. }
            | ClientError::Disconnected
            | ClientError::ControlPlane { .. } => 3,
            ClientError::Refused { .. }
            | ClientError::NoCredentials { .. }
            | ClientError::Read { .. }
            | ClientError::Login { .. } => 2,
            ClientError::Output(_) => 1,
        }
    }
}
