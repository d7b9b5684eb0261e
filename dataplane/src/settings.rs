//! The tunables of a broker run.

use crate::ClientRate;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Default spin before parking, in µs. A request crosses threads four times (client →
/// shard → worker → shard → client); a shard that polls a while after its last event
/// catches the worker's answer without being woken, which on a VM (an IPI to a halted vCPU
/// costs tens of µs) took the latency benchmark's p50 from 1.43 to ~1 × the relay's. 30 µs
/// keeps that latency (p50 0.96–1.04 × relay against 0.95–0.98 at 100 µs) and gives back
/// the CPU that longer spins take from the other threads of a loaded machine (throughput
/// 0.70–0.78 × relay against 0.63–0.67 at 100 µs, 0.72–0.76 without spinning). An idle
/// shard does not spin: only the 30 µs after each burst of work cost CPU.
const SPIN_DEFAULT_US: u64 = 30;

/// Tunables of a broker run.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Executors (threads); each owns a share of the connections.
    pub shards: usize,
    /// Heartbeat period announced in `Welcome`; a peer silent for three is dropped.
    pub heartbeat: Duration,
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// Frames queued towards a worker before senders wait (backpressure).
    pub queue_depth: usize,
    /// Bytes queued towards one client (the batch being written included) past which it is
    /// cut as a slow consumer: its requests end, it gets `SlowConsumer` if that still fits,
    /// and its connection is closed. Frames to a client never make a worker wait. With flow
    /// control ([`BrokerSettings::client_pause_backlog`]) only a client whose workers do not
    /// pause (persistent and in-worker plugins) gets this far.
    pub max_client_backlog: usize,
    /// Bytes queued towards one client past which the output of its requests is paused at
    /// their workers (`Frame::Pause`: the worker stops reading that plugin's output, whose
    /// pipe fills until the plugin blocks), and resumed once a quarter of it is left. Taken
    /// as at most half of `max_client_backlog`.
    pub client_pause_backlog: usize,
    /// Bytes queued towards all clients together (every shard): past it every client is
    /// paused at its next frame and one holding more than its share (this over the number of
    /// clients) is cut (`SlowConsumer`), so N clients that do not read cannot take N times
    /// `max_client_backlog`.
    pub max_client_backlog_total: usize,
    /// Connections from one address that may be between accept and the end of their
    /// handshake at once; past it a new one is closed at once. Each costs a socket and a
    /// few KiB until the handshake deadline; the default leaves room for a fleet of workers
    /// behind one address reconnecting together (they retry with backoff past it).
    pub max_pending_per_address: usize,
    /// Connections from one address that may be open (handshake done) at once; past it a
    /// new one is refused at its handshake with `TooManyConnections`. Generous by default:
    /// the workers of one site behind NAT share an address.
    pub max_connections_per_address: usize,
    /// Requests one client connection may have open at once; past it a new request is
    /// refused with `TooManyRequests` (the connection stays).
    pub max_open_requests: usize,
    /// Request rate per client connection (a token bucket); past it a request is refused
    /// with `RateLimited` (the connection stays). `None`: no limit.
    pub client_rate: Option<ClientRate>,
    /// How long a drain ([`BrokerHandle::drain`](crate::BrokerHandle::drain)) lets requests
    /// in flight finish before their clients get `ShuttingDown` and the broker exits.
    pub drain: Duration,
    /// Capacity of each cross-shard channel.
    pub mesh_depth: usize,
    /// How long an idle shard polls before it sleeps in the kernel: a reply that arrives
    /// within this window is picked up without a wake-up's latency. Non-zero pins each
    /// shard to a core (glommio spins only when pinned); zero never spins and never pins.
    pub spin: Duration,
    /// TLS on every connection (`--tls-cert`, `--tls-key`); `None`: plaintext. A plaintext
    /// peer of a TLS broker is answered `Refused { BadRequest }` in plaintext and closed.
    pub tls: Option<Arc<futures_rustls::rustls::ServerConfig>>,
    /// Workers must present a client certificate (`--tls-client-ca`; the configuration
    /// checks the ones presented against that CA): one without is refused `Unauthorized`.
    pub worker_cert_required: bool,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 5555)),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            // One second: a dead worker is noticed within 3 s even when its socket stays open.
            heartbeat: Duration::from_secs(1),
            max_frame: proto::DEFAULT_MAX_FRAME,
            queue_depth: 256,
            max_client_backlog: 64 * 1024 * 1024,
            client_pause_backlog: 1024 * 1024,
            max_client_backlog_total: 256 * 1024 * 1024,
            max_pending_per_address: 256,
            max_connections_per_address: 16_384,
            max_open_requests: 10_000,
            client_rate: None,
            drain: Duration::from_secs(30),
            mesh_depth: 4096,
            spin: Duration::from_micros(SPIN_DEFAULT_US),
            tls: None,
            worker_cert_required: false,
        }
    }
}
