//! Every message that crosses a dataplane connection.
//!
//! One enum, [`Frame`], so that a connection reads and writes exactly one type. Frames are
//! grouped by who sends them: both sides (handshake, heartbeat), client → broker, broker →
//! client, broker → worker, worker → broker. A request id is chosen by the client and is
//! unique per client connection; a dispatch id is chosen by the broker and is unique per
//! broker.

use crate::text_enum;
use rkyv::{Archive, Deserialize, Serialize};

/// The protocol version this build speaks. A `Hello` with a version outside
/// [`MIN_PROTOCOL_VERSION`]`..=PROTOCOL_VERSION` is refused.
pub const PROTOCOL_VERSION: u16 = 8;

/// The oldest version a broker of this build still takes in a `Hello`: a peer of that
/// version is sent only the frames that version knows (no [`Frame::Answer`]). A client of
/// this build that a broker refuses at its `Hello` (`Refused` with `BadRequest`, what a
/// broker of version 7 answers any other version) says `Hello` again with this version.
pub const MIN_PROTOCOL_VERSION: u16 = 7;

/// The first protocol version whose clients take [`Frame::Answer`].
pub const ANSWER_SINCE: u16 = 8;
// 2: `Request::fleet`, the fleet counts of `Summary`, `ErrorKind::{Offline, Skipped,
// NoResponse, Detached}`: an older peer is refused at `Hello` with a clear version
// mismatch rather than failing frame validation later.
// 3: `ErrorKind::{TooManyRequests, RateLimited, TooManyConnections, OutputLimit,
// ShuttingDown}` (the limits and the broker's drain).
// 4: `Frame::Events` (a worker's events of one dispatch in one frame) and `Frame::Replies`
// (the broker's relay of them in one frame).
// 5: `Frame::Pause` and `Frame::Resume` (flow control of a dispatch's output: a worker of
// version 4 would take them for malformed frames and drop its connection).
// 6: `ErrorKind::Retried` (a roundrobin worker lost after it accepted, the request run again
// on another worker), `Frame::Bound` (the services a worker is bound to), `Request::tag` (a
// schedule's run, named in its job record), `Request::trigger` (the fs's trigger path, for
// the job history), and `ErrorKind::Stale` (a broker cut off from its control plane).
// 7: a cell of broker nodes: `Welcome::nodes`, `Frame::Nodes` (the live nodes, for peers to
// connect to or fail over to) and `ErrorKind::BrokerLost`.
// 8: `Frame::Answer` (`Routed`, one worker's `Replies` and `Summary` in one frame), sent only
// to a client whose `Hello` says 8 or later; a broker takes a `Hello` of 7 too.

text_enum! {
    ("role", "lowercase")
    /// Who is on the other end of a connection.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Role {
        /// Sends requests and reads replies.
        Client,
        /// Serves requests by running plugins.
        Worker,
    }
}

/// What a peer presents in its `Hello`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A client's JWT from the control plane.
    Jwt {
        /// The encoded token.
        token: String,
    },
    /// A worker's team, identity and token.
    Worker {
        /// The team the worker belongs to.
        team: String,
        /// The worker's identity, unique in its team; it is also a service name.
        identity: String,
        /// The secret token issued at worker creation.
        token: String,
    },
}

/// The first frame on every connection.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// Client or worker; must match the credential's kind.
    pub role: Role,
    /// Proof of who the peer is.
    pub credential: Credential,
}

text_enum! {
    ("algorithm", "lowercase")
    /// How a service spreads a request over its workers: `roundrobin` (one, the next),
    /// `mirror` (all), `serial` (all, one after the other).
    #[derive(
        Archive,
        Serialize,
        Deserialize,
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        Hash,
        serde::Serialize,
        serde::Deserialize,
    )]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum Algorithm {
        /// One worker, rotating; fail-over before `Accepted`.
        Roundrobin,
        /// Every online worker in parallel (optionally in batches).
        Mirror,
        /// Every online worker, one after another, in a stable order.
        Serial,
    }
}

text_enum! {
    ("stream", "lowercase")
    /// Which output stream of a plugin a line came from.
    #[derive(
        Archive,
        Serialize,
        Deserialize,
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        serde::Serialize,
        serde::Deserialize,
    )]
    #[serde(rename_all = "lowercase")]
    pub enum Stream {
        /// Standard output.
        Stdout,
        /// Standard error.
        Stderr,
    }
}

text_enum! {
    ("error kind", "PascalCase")
    /// Typed errors: never strings to parse.
    #[derive(
        Archive,
        Serialize,
        Deserialize,
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        Hash,
        serde::Serialize,
        serde::Deserialize,
    )]
    pub enum ErrorKind {
        /// The service (or worker identity) is not known.
        NoSuchService,
        /// The service exists but no worker behind it is connected.
        NoWorkersOnline,
        /// The credential is wrong, unknown or expired.
        Unauthorized,
        /// The caller may not use this service.
        Forbidden,
        /// The request ran past its timeout.
        Timeout,
        /// The worker has no such plugin, or the name escapes its plugins path.
        PluginNotFound,
        /// The worker went away while it ran the request.
        WorkerLost,
        /// The team's quota does not allow this.
        QuotaExceeded,
        /// The request itself is invalid (bad name, duplicate id, …).
        BadRequest,
        /// A frame could not be decoded or was out of place.
        Malformed,
        /// A frame was larger than the limit.
        TooLarge,
        /// The plugin could not be started or failed inside the worker.
        PluginFailed,
        /// The client cancelled the request.
        Cancelled,
        /// The client did not read what the broker sent it fast enough: its backlog passed the
        /// broker's bound (`--max-client-backlog`), so the broker ended its requests and closed
        /// the connection (the worker serving them is not affected).
        SlowConsumer,
        /// A newer connection of the same worker identity took over; this one is closed. A
        /// worker that gets it stops rather than reconnect and take the identity back.
        Superseded,
        /// The credential this connection was admitted with no longer holds: the member was
        /// removed from the team, the user or the team deleted, the worker deleted or its
        /// token regenerated, or the client's token expired. The connection is closed.
        Revoked,
        /// The persistent plugin instance serving the request exited or was killed while
        /// the request was in flight (it is restarted, with backoff, for the next request).
        PluginCrashed,
        /// The persistent plugin instance serving the request broke the plugin protocol
        /// (stdout that is not a frame, a frame for an unknown request); it was killed.
        PluginProtocol,
        /// A worker bound to the service was not connected when the request was dispatched
        /// (mirror, serial): it is reported, not left out.
        Offline,
        /// The worker was not started: `max_failures` was passed, the quorum was reached,
        /// the deadline came or the serial run stopped at a failure.
        Skipped,
        /// The worker was sent the request but had not accepted it by the deadline.
        NoResponse,
        /// The quorum was reached while the worker still ran; it runs on, unobserved.
        Detached,
        /// The client connection already has as many requests open as the broker allows
        /// (`--max-open-requests`): this request is refused, the connection stays.
        TooManyRequests,
        /// The client sent requests faster than the broker's rate allows (`--client-rate`,
        /// a token bucket per connection): this request is refused, the connection stays.
        RateLimited,
        /// The peer's address has as many connections open as the broker allows
        /// (`--max-connections-per-address`): this connection is refused at its handshake.
        TooManyConnections,
        /// The plugin wrote more output for this request than the worker allows
        /// (`triggerfs worker --max-output`): it was stopped (its process group killed).
        OutputLimit,
        /// The broker is shutting down: it takes no new requests, and those not finished
        /// within its drain (`--drain`) end with this error. Workers reconnect with backoff.
        ShuttingDown,
        /// Not a failure of the request: the worker went away after it accepted the request,
        /// and the broker ran the request again on another worker of the roundrobin service
        /// (`retry = true`); that worker's answer is the request's.
        Retried,
        /// The broker has not reached a control plane for longer than its `--max-staleness`:
        /// it takes no new connections and has closed the open ones, so that a partitioned
        /// broker cannot keep a revoked member in. Try another broker, or again later.
        Stale,
        /// The connection to the broker node that carried the request was lost before the
        /// request ended (the node died, or the network to it failed). The client reports it
        /// and connects to another node of the cell for its next requests; whether the
        /// request ran is unknown (a keyed request may be sent again: it runs at most once).
        BrokerLost,
    }
}

/// One `key=value` plugin argument.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// Argument name.
    pub key: String,
    /// Argument value.
    pub value: String,
}

/// Idempotency key of a spooled request: which spool (a random id), which record in it.
///
/// A request that carries one runs at most once per key (for a run that ended; a run killed
/// part-way, by a cancel or a lost connection, is forgotten and runs again: at-least-once).
/// The broker remembers the outcome of the last [`crate::IDEM_WINDOW`] keys of each source,
/// scoped by the caller's team and identity, and answers a replay itself (with
/// [`Summary::replayed`] set); it forwards the key to the worker in [`Dispatch::key`] with
/// `source` replaced by [`IdemKey::scoped`], and the worker, which outlives a broker
/// restart, remembers as many per scoped source and answers a replay without running it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdemKey {
    /// The spool (a random id chosen once per spool).
    pub source: [u8; 16],
    /// The record in that spool.
    pub seq: u64,
}

impl IdemKey {
    /// The key as the broker forwards it to a worker: `source` becomes the first 16 bytes of
    /// SHA-256 over the caller's team, identity and source (each length-prefixed), so a
    /// worker's window is per caller too and one caller cannot suppress another's runs by
    /// reusing its keys.
    pub fn scoped(&self, team: &str, identity: &str) -> IdemKey {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for part in [team.as_bytes(), identity.as_bytes()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update(self.source);
        let digest = hasher.finalize();
        let mut source = [0u8; 16];
        source.copy_from_slice(&digest[..16]);
        IdemKey {
            source,
            seq: self.seq,
        }
    }
}

/// A count of workers, as given (`10`) or as a share of the request's workers (`10%`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// So many workers.
    Count(u32),
    /// This percentage of the request's workers (0–100).
    Percent(u32),
}

impl Share {
    /// Workers out of `total`: a count as it is, a percentage rounded up (`round_up`) or
    /// down.
    pub fn of(self, total: usize, round_up: bool) -> usize {
        match self {
            Share::Count(n) => n as usize,
            Share::Percent(p) => {
                let scaled = total * p.min(100) as usize;
                if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                }
            }
        }
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Share::Count(n) => write!(f, "{n}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Share {
    type Err = String;
    /// `10` or `10%` (at most `100%`).
    fn from_str(s: &str) -> Result<Share, String> {
        let bad = || format!("`{s}` is not a count or a percentage (e.g. 10 or 10%)");
        match s.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<u32>() {
                Ok(p) if p <= 100 => Ok(Share::Percent(p)),
                _ => Err(bad()),
            },
            None => s.trim().parse::<u32>().map(Share::Count).map_err(|_| bad()),
        }
    }
}

/// How a mirror or serial request spreads over the service's workers, per request
/// (`triggerfs client --batch/--max-failures/--quorum/--deadline/--only-workers`, the
/// gateway's JSON body). The default changes nothing.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Fleet {
    /// Workers running at once (mirror); overrides the service's `batch`. A percentage is
    /// of the request's workers, rounded up, at least 1.
    pub batch: Option<Share>,
    /// Once more workers than this failed (exit non-zero, timeout, lost, error), no new
    /// worker is started; the rest are reported `Skipped` and `Summary::stopped` is set. A
    /// percentage is of the request's workers, rounded down.
    pub max_failures: Option<Share>,
    /// 0: none. Otherwise the request ends once this many workers exited 0
    /// (`Summary::quorum_met`); workers not started are `Skipped`, running ones `Detached`
    /// (they run on) or, with `quorum_cancel`, cancelled.
    pub quorum: u32,
    /// With `quorum`: cancel the workers still running when it is reached.
    pub quorum_cancel: bool,
    /// 0: none. Otherwise the whole request ends this long after it started, with what it
    /// has: running workers `Timeout`, sent but not accepted `NoResponse`, not started
    /// `Skipped`. The request's `timeout_ms` then bounds each worker's run, not the request.
    pub deadline_ms: u64,
    /// Empty: every worker of the service. Otherwise only these identities (each must be a
    /// worker of the service, online or bound to it); the others are not part of the
    /// request at all.
    pub only: Vec<String>,
}

/// A client's request to a service.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the client, unique on its connection.
    pub id: u64,
    /// `service`, a worker identity, or `team/service` for another team's public service.
    pub service: String,
    /// Plugin name under the worker's plugins path, e.g. `command` or `command/command`.
    pub plugin: String,
    /// The command words handed to the plugin.
    pub command: Vec<String>,
    /// Plugin arguments.
    pub args: Vec<Arg>,
    /// Opaque payload (e.g. the bytes written to a trigger file).
    pub payload: Vec<u8>,
    /// 0 means the service's timeout.
    pub timeout_ms: u64,
    /// false: fire-and-forget; the broker answers `Queued` and drops replies.
    pub wait: bool,
    /// Set by a sender that may send the same request again (the fs module's spool): a
    /// replay of a key whose run ended is answered without running the plugin again.
    pub key: Option<IdemKey>,
    /// Per-request fan-out options (batch, max failures, quorum, deadline, subset).
    pub fleet: Fleet,
    /// The sender's name for this run, kept in its job record (the control plane's
    /// scheduler names each run of a schedule so; at most `job::MAX_JOB_NAME` characters
    /// are kept).
    pub tag: Option<String>,
    /// The trigger file whose write this is (the fs module's, `/directory/name`, an opaque
    /// path): with `key`, the job history counts the trigger's requests per minute by
    /// outcome and records each failure in full, naming the trigger; without one, the
    /// request is recorded as any other, naming it.
    pub trigger: Option<String>,
}

/// The broker's order to a worker to run one request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// Chosen by the broker; every worker frame about this run carries it.
    pub id: u64,
    /// The service the request was sent to.
    pub service: String,
    /// Plugin name (checked again by the worker).
    pub plugin: String,
    /// The command words.
    pub command: Vec<String>,
    /// Plugin arguments.
    pub args: Vec<Arg>,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// How long the worker lets the plugin run.
    pub timeout_ms: u64,
    /// The request's idempotency key, scoped to its caller ([`IdemKey::scoped`]). A worker
    /// that already ran (or runs) this key answers `Accepted` and the first run's `Done`
    /// without running the plugin again.
    pub key: Option<IdemKey>,
}

/// What happened on one worker, as relayed to the client.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The worker started the plugin.
    Accepted,
    /// One line (or chunk) of plugin output.
    Output {
        /// Sequence number per worker run, from 0.
        seq: u64,
        /// stdout or stderr.
        stream: Stream,
        /// The bytes, without the trailing newline.
        data: Vec<u8>,
    },
    /// The plugin ended with this exit code.
    Done {
        /// Exit status; 128+N when killed by signal N.
        exit_code: i32,
    },
    /// The run failed without an exit code.
    Failed {
        /// What went wrong.
        kind: ErrorKind,
        /// Human-readable detail.
        message: String,
    },
}

/// The most payload bytes (output, failure text) one `Events` or `Replies` frame gathers:
/// merging saves the per-frame cost of small events, and a frame of merged events must stay
/// far below the largest frame a peer takes (a worker may have a thousand 64 KiB lines
/// queued).
pub const MERGE_BYTES: usize = 64 * 1024;

impl Event {
    /// `Done` or `Failed`: the last event of a run.
    pub fn ends_run(&self) -> bool {
        matches!(self, Event::Done { .. } | Event::Failed { .. })
    }

    /// Its payload bytes (output data, failure text), as counted against [`MERGE_BYTES`].
    pub fn payload_len(&self) -> usize {
        match self {
            Event::Output { data, .. } => data.len(),
            Event::Failed { message, .. } => message.len(),
            Event::Accepted | Event::Done { .. } => 0,
        }
    }
}

/// Counts at the end of a request (as JSON, the HTTP gateway's `summary` event).
#[derive(
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Summary {
    /// Workers the request was sent to.
    pub workers: u32,
    /// Exited 0.
    pub ok: u32,
    /// Exited non-zero or failed.
    pub failed: u32,
    /// Ran past the timeout.
    pub timed_out: u32,
    /// Went away mid-run.
    pub lost: u32,
    /// Bound to the service but offline at dispatch.
    pub offline: u32,
    /// Never started (max failures, quorum, deadline, serial stop).
    pub skipped: u32,
    /// Sent the request but no answer by the deadline.
    pub no_response: u32,
    /// Still running when the quorum was reached, left to run on.
    pub detached: u32,
    /// The run stopped starting workers because `Fleet::max_failures` was passed.
    pub stopped: bool,
    /// `Fleet::quorum` workers exited 0.
    pub quorum_met: bool,
    /// The request was a replay of an idempotency key ([`Request::key`]) whose run had
    /// ended: the broker answered it from its window without dispatching. The frames before
    /// this summary are then the first run's shape without its output: `Routed`, and per
    /// worker `Reply(Accepted)` and `Reply(Done { exit_code })` (or the `Failed` it ended
    /// with), naming the worker that ran it; the counts are the first run's.
    #[serde(skip)]
    pub replayed: bool,
}

/// A request's whole answer in one frame, when it comes from one worker at once (an
/// in-worker plugin, or a plugin quicker than the broker's hold of `Routed`): what
/// `Routed`, that worker's `Replies` and `Summary` would carry, in that order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Request id.
    pub id: u64,
    /// As `Routed::algorithm`.
    pub algorithm: Algorithm,
    /// As `Routed::n_workers`.
    pub n_workers: u32,
    /// The worker's identity.
    pub worker: String,
    /// What happened on it, in order; never empty.
    pub events: Vec<Event>,
    /// The counts, as `Summary::summary`.
    pub summary: Summary,
}

/// Every frame on a dataplane connection.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    // -- both directions --
    /// First frame from a peer.
    Hello(Hello),
    /// The broker accepts the `Hello`.
    Welcome {
        /// Session number, unique per broker run.
        session: u64,
        /// How often both sides send `Heartbeat`; three missed means gone.
        heartbeat_ms: u32,
        /// The addresses of every live broker node of the cell, as peers connect to them
        /// (`host:port`, or `tls://host:port`), this one included; empty for a broker that
        /// is not part of a cell (no `--advertise`). Workers connect to every one; clients
        /// keep them to fail over to.
        nodes: Vec<String>,
    },
    /// The cell's live broker nodes changed: the new list, as in `Welcome::nodes`.
    Nodes {
        /// Every live node's address.
        nodes: Vec<String>,
    },
    /// The broker refuses the `Hello`; the connection closes.
    Refused {
        /// Why.
        kind: ErrorKind,
        /// Human-readable detail.
        reason: String,
    },
    /// Liveness.
    Heartbeat,

    // -- worker → broker --
    /// Services a worker serves (in addition to its identity).
    Announce {
        /// Service names.
        services: Vec<String>,
    },
    /// The worker started the run of dispatch `id`.
    Accepted {
        /// Dispatch id.
        id: u64,
    },
    /// One output line of dispatch `id`.
    Output {
        /// Dispatch id.
        id: u64,
        /// Sequence number from 0.
        seq: u64,
        /// stdout or stderr.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The plugin of dispatch `id` exited.
    Done {
        /// Dispatch id.
        id: u64,
        /// Exit status.
        exit_code: i32,
    },
    /// Dispatch `id` failed without an exit code.
    Failed {
        /// Dispatch id.
        id: u64,
        /// What went wrong.
        kind: ErrorKind,
        /// Detail.
        message: String,
    },

    /// Several events of dispatch `id` at once, in order, as the single frames above would
    /// carry them: what a worker sends when a run's `Accepted`, output and end are ready
    /// together (an in-worker plugin such as `echo`), so that they cost one frame. Never
    /// empty; only the last may end the run (`Done`, `Failed`).
    Events {
        /// Dispatch id.
        id: u64,
        /// The events.
        events: Vec<Event>,
    },

    // -- broker → worker --
    /// After the worker's `Announce`: the configured services it is bound to (its debug log
    /// names each, as the original's did). Informational; may be empty.
    Bound {
        /// Service names, in the worker's team.
        services: Vec<String>,
    },
    /// Run a plugin. (Boxed, as `Request`: they are the two large variants, and a `Frame` is
    /// as large as its largest; the small ones on the hot path are moved several times
    /// each, from the decoder to where they are handled.)
    Dispatch(Box<Dispatch>),

    /// Flow control: stop reading the output of dispatch `id` (its plugin then blocks in
    /// `write` once its pipe is full) until [`Frame::Resume`]. Sent when the request's client
    /// does not keep up: its backlog in the broker passed the pause mark. The dispatch's
    /// timeout still runs; a cancel or a timeout ends it as usual. A worker that cannot pause
    /// a dispatch (an in-worker or persistent plugin) may ignore it; an unknown id is ignored.
    Pause {
        /// Dispatch id.
        id: u64,
    },
    /// Flow control: read the output of dispatch `id` again (after [`Frame::Pause`]).
    Resume {
        /// Dispatch id.
        id: u64,
    },

    // -- client → broker; broker → worker --
    /// Stop request (client → broker) or dispatch (broker → worker) `id`.
    Cancel {
        /// Request id or dispatch id.
        id: u64,
    },

    // -- client → broker --
    /// A request.
    Request(Box<Request>),

    // -- broker → client --
    /// The broker resolved the request and picked its first worker(s).
    Routed {
        /// Request id.
        id: u64,
        /// The service's algorithm.
        algorithm: Algorithm,
        /// How many workers it will run on.
        n_workers: u32,
    },
    /// A fire-and-forget request was handed to its workers.
    Queued {
        /// Request id.
        id: u64,
        /// How many workers it went to.
        n_workers: u32,
    },
    /// Something happened on one worker for request `id`.
    Reply {
        /// Request id.
        id: u64,
        /// The worker's identity.
        worker: String,
        /// What happened.
        event: Event,
    },
    /// Several things that happened on one worker for request `id`, in order, as that many
    /// `Reply` frames would carry them (the relay of a worker's `Events`).
    Replies {
        /// Request id.
        id: u64,
        /// The worker's identity.
        worker: String,
        /// What happened.
        events: Vec<Event>,
    },
    /// The request is over; always the last frame about `id`.
    Summary {
        /// Request id.
        id: u64,
        /// The counts.
        summary: Summary,
    },
    /// The request (`id` set) or the connection (`id` none) failed; ends the request.
    Error {
        /// Request id, or none for a connection-level error.
        id: Option<u64>,
        /// What went wrong.
        kind: ErrorKind,
        /// Detail.
        message: String,
    },
    /// `Routed`, `Replies` and `Summary` of request `id` at once (protocol 8; boxed, as
    /// `Request`). The broker sends it to a client whose `Hello` said 8 or later when the
    /// request's only worker answered whole before the held `Routed` went out.
    Answer(Box<Answer>),
}

impl Frame {
    /// A worker's frame about one dispatch as its id and event (`Accepted`, `Output`,
    /// `Done`, `Failed`); any other frame is given back.
    pub fn into_worker_event(self) -> Result<(u64, Event), Frame> {
        Ok(match self {
            Frame::Accepted { id } => (id, Event::Accepted),
            Frame::Output {
                id,
                seq,
                stream,
                data,
            } => (id, Event::Output { seq, stream, data }),
            Frame::Done { id, exit_code } => (id, Event::Done { exit_code }),
            Frame::Failed { id, kind, message } => (id, Event::Failed { kind, message }),
            other => return Err(other),
        })
    }

    /// Merges runs of consecutive worker frames about the same dispatch into one
    /// [`Frame::Events`] each (a run of one stays as it was); an event with payload joins a
    /// run only within [`MERGE_BYTES`] (one larger than that starts a run of its own), one
    /// without always joins, and a run closes at its end (`Done`, `Failed`); order is kept.
    pub fn merge_worker_events(frames: impl IntoIterator<Item = Frame>) -> Vec<Frame> {
        let mut merged: Vec<Frame> = Vec::new();
        // The run being gathered: its dispatch, events and payload bytes.
        let mut run: Option<(u64, Vec<Event>)> = None;
        let mut run_bytes = 0;
        fn close(merged: &mut Vec<Frame>, run: Option<(u64, Vec<Event>)>) {
            if let Some((id, mut events)) = run {
                merged.push(if events.len() == 1 {
                    Frame::from_worker_event(id, events.pop().expect("one event"))
                } else {
                    Frame::Events { id, events }
                });
            }
        }
        for frame in frames {
            match frame.into_worker_event() {
                Ok((id, event)) => {
                    let bytes = event.payload_len();
                    let ends = event.ends_run();
                    match &mut run {
                        Some((open, events))
                            if *open == id && (bytes == 0 || run_bytes + bytes <= MERGE_BYTES) =>
                        {
                            events.push(event)
                        }
                        _ => {
                            close(&mut merged, run.take());
                            run = Some((id, vec![event]));
                            run_bytes = 0;
                        }
                    }
                    run_bytes += bytes;
                    // Nothing joins a run after its end (a stray frame after `Done` stays
                    // a frame of its own, which the broker drops as stale).
                    if ends {
                        close(&mut merged, run.take());
                    }
                }
                Err(other) => {
                    close(&mut merged, run.take());
                    merged.push(other);
                }
            }
        }
        close(&mut merged, run);
        merged
    }

    /// The single worker frame that carries `event` of dispatch `id`.
    pub fn from_worker_event(id: u64, event: Event) -> Frame {
        match event {
            Event::Accepted => Frame::Accepted { id },
            Event::Output { seq, stream, data } => Frame::Output {
                id,
                seq,
                stream,
                data,
            },
            Event::Done { exit_code } => Frame::Done { id, exit_code },
            Event::Failed { kind, message } => Frame::Failed { id, kind, message },
        }
    }

    /// A short name for logs and metrics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Welcome { .. } => "Welcome",
            Frame::Nodes { .. } => "Nodes",
            Frame::Refused { .. } => "Refused",
            Frame::Heartbeat => "Heartbeat",
            Frame::Announce { .. } => "Announce",
            Frame::Accepted { .. } => "Accepted",
            Frame::Output { .. } => "Output",
            Frame::Done { .. } => "Done",
            Frame::Failed { .. } => "Failed",
            Frame::Events { .. } => "Events",
            Frame::Bound { .. } => "Bound",
            Frame::Dispatch(_) => "Dispatch",
            Frame::Pause { .. } => "Pause",
            Frame::Resume { .. } => "Resume",
            Frame::Cancel { .. } => "Cancel",
            Frame::Request(_) => "Request",
            Frame::Routed { .. } => "Routed",
            Frame::Queued { .. } => "Queued",
            Frame::Reply { .. } => "Reply",
            Frame::Replies { .. } => "Replies",
            Frame::Summary { .. } => "Summary",
            Frame::Error { .. } => "Error",
            Frame::Answer(_) => "Answer",
        }
    }
}
