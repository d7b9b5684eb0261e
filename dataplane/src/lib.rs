//! The triggerFS broker: a thread-per-core glommio dataplane.
//!
//! Layout:
//! - [`config`]: the [`ConfigSource`] trait (services, authentication) and the file-backed
//!   source used until the control plane exists.
//! - [`registry`]: the replica of online workers and services each shard keeps.
//! - [`request`]: one request's life as a pure state machine (roundrobin, mirror, serial).
//! - [`idem`]: the window of recent idempotency keys all shards share.
//! - `shard`: a glommio executor's connections, requests, workers and cross-shard messages;
//!   `conn`: frames over a socket; `shutdown`: the signal the shards await and their drain.
//!
//! Each shard binds the listening address with `SO_REUSEPORT`, so the kernel spreads
//! connections over the shards. A request is owned by the shard its client is on; a worker
//! on another shard is reached through the channel mesh, once each way.
//!
//! This crate never touches a database; it learns configuration through [`ConfigSource`].

pub mod config;
mod conn;
pub mod idem;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod request;
mod shard;
mod shutdown;
pub mod triggers;

pub use config::{ConfigSource, FileConfig, Principal, Refusal, RoutingConfig, ServiceConfig};
pub use limits::ClientRate;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use shard::{ShardMsg, Shared};
use shutdown::Shutdown;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
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
    /// How long a drain ([`BrokerHandle::drain`]) lets requests
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

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Binding or spawning failed.
    #[error("cannot start broker shard {shard_idx}: {message}")]
    Start {
        /// Which shard.
        shard_idx: usize,
        /// The cause.
        message: String,
    },
    /// `--shards 0`.
    #[error("the broker needs at least one shard")]
    NoShards,
    /// More shards than a dispatch id can name (its top 8 bits carry the shard's index).
    #[error("the broker can run at most {max} shards")]
    TooManyShards {
        /// The most shards allowed.
        max: usize,
    },
}

/// Roundrobin positions shared by all shards, so rotation is fair whichever shard a client
/// landed on. Each shard caches the `Arc` per service; the hot path is one atomic add.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl RoundRobin {
    pub(crate) fn counter(&self, service: &str) -> Arc<AtomicU64> {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters.entry(service.to_string()).or_default().clone()
    }
}

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    local_addr: SocketAddr,
    shutdown: Arc<Shutdown>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl BrokerHandle {
    /// The address the broker listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Asks every shard to stop accepting and exit.
    pub fn stop(&self) {
        self.shutdown.stop();
    }

    /// Starts a graceful shutdown: every shard stops accepting (new connections are refused)
    /// and refuses new requests with `ShuttingDown`; once no request is in flight on any
    /// shard, or [`BrokerSettings::drain`] has passed, every connection is sent
    /// `Error { ShuttingDown }` (ending the requests still open) and closed, and the shards
    /// exit. [`BrokerHandle::wait`] waits for that. A [`BrokerHandle::stop`] meanwhile cuts
    /// the drain short.
    pub fn drain(&self) {
        self.shutdown.drain();
    }

    /// Waits for every shard to exit, through a shared handle (so that another thread may
    /// [`BrokerHandle::stop`] a drain meanwhile).
    pub fn wait(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// How often a shard does its periodic work (due timeouts, configuration reloads): timeouts
/// fire at most this late, which is far below any timeout a user sets.
const TICK: Duration = Duration::from_millis(10);

/// Starts the broker's shards and returns once every shard listens.
pub fn start(
    settings: BrokerSettings,
    source: Arc<dyn ConfigSource>,
) -> Result<BrokerHandle, BrokerError> {
    if settings.shards == 0 {
        return Err(BrokerError::NoShards);
    }
    if settings.shards > shard::MAX_SHARDS {
        return Err(BrokerError::TooManyShards {
            max: shard::MAX_SHARDS,
        });
    }
    let n = settings.shards;
    let shared = Shared::new(settings, source);
    let shutdown = shared.shutdown.clone();
    let mesh = (n > 1).then(|| MeshBuilder::<ShardMsg, _>::full(n, shared.settings.mesh_depth));
    let mut threads = Vec::with_capacity(n);
    let mut addr = shared.settings.listen;
    let cores = allowed_cpus();
    for thread_idx in 0..n {
        let start_error = |message: String| BrokerError::Start {
            shard_idx: thread_idx,
            message,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shared, mesh, bind_addr) = (shared.clone(), mesh.clone(), addr);
        let settings = &shared.settings;
        // glommio spins only on an executor bound to a CPU (it ignores the setting for an
        // unbound one), so a spinning shard is pinned, one core each in turn.
        let placement = if settings.spin.is_zero() || cores.is_empty() {
            Placement::Unbound
        } else {
            Placement::Fixed(cores[thread_idx % cores.len()])
        };
        let builder = LocalExecutorBuilder::new(placement)
            .name(&format!("broker-shard-{thread_idx}"))
            // Sockets need no registered buffers; a small pool keeps us under a low
            // RLIMIT_MEMLOCK (8 MiB on many machines) even with many shards.
            .io_memory(512 * 1024)
            .spin_before_park(settings.spin);
        let spawned = builder
            .spawn(move || shard::run(thread_idx, shared, bind_addr, mesh, ready_tx))
            .map_err(|e| start_error(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(local)) => addr = local,
            Ok(Err(message)) => {
                shutdown.stop();
                return Err(start_error(message));
            }
            Err(_) => return Err(start_error("shard thread exited during start".into())),
        }
        threads.push(std::thread::spawn(move || {
            let _ = spawned.join();
        }));
    }
    Ok(BrokerHandle {
        local_addr: addr,
        shutdown,
        threads: Mutex::new(threads),
    })
}

/// The CPUs this process may run on (`taskset`, cgroup cpusets): the cores shards are pinned
/// to, in turn. Empty if the kernel does not say, and then shards are not pinned.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it, and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker idle for 27 minutes froze: its accept was raced against the 50 ms stop
    /// timer in one task, and glommio keeps a clone of the task's waker per poll of a pending
    /// `accept`, until its count (an `i16`) overflowed and every shard panicked. The accept
    /// loop is now a task of its own, which wakeups of the shutdown signal do not poll: woken
    /// 40,000 times per shard (more than the count holds) without a shutdown, every shard
    /// must still answer a `Hello`.
    #[test]
    fn accepting_survives_more_shutdown_wakeups_than_a_glommio_waker_count_holds() {
        use std::io::{Read, Write};
        let shards = 2;
        let settings = BrokerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shards,
            spin: Duration::ZERO,
            ..BrokerSettings::default()
        };
        let broker = start(settings, Arc::new(FileConfig::default())).unwrap();
        let shutdown = &broker.shutdown;
        // Each time a shard waited on the signal, a nudge wakes it once.
        let want = 40_000 * shards;
        let (mut seen, mut moved) = (0, std::time::Instant::now());
        while shutdown.parked() < want + shards {
            if shutdown.nudge() == 0 {
                std::thread::yield_now();
            }
            let parked = shutdown.parked();
            if parked > seen {
                (seen, moved) = (parked, std::time::Instant::now());
            }
            assert!(
                moved.elapsed() < Duration::from_secs(10),
                "the shards stopped waking after {parked} waits (a shard died?)"
            );
        }
        // Several connections, so that every shard (SO_REUSEPORT spreads them) is asked.
        for n in 0..8 {
            let mut conn = std::net::TcpStream::connect(broker.local_addr()).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let hello = proto::Frame::Hello(proto::Hello {
                protocol_version: proto::PROTOCOL_VERSION,
                role: proto::Role::Worker,
                credential: proto::Credential::Worker {
                    team: "main".into(),
                    identity: format!("idle{n}"),
                    token: "t".into(),
                },
            });
            conn.write_all(&proto::codec::encode_to_vec(&hello))
                .unwrap();
            let mut buf = bytes::BytesMut::new();
            let frame = loop {
                if let Some(frame) = proto::decode(&mut buf, proto::DEFAULT_MAX_FRAME).unwrap() {
                    break frame;
                }
                let mut chunk = [0u8; 4096];
                let read = conn.read(&mut chunk).unwrap_or_else(|e| {
                    panic!("connection {n}: no answer to Hello after the wakeups: {e}")
                });
                assert_ne!(read, 0, "connection {n} closed without an answer to Hello");
                buf.extend_from_slice(&chunk[..read]);
            };
            assert!(
                matches!(frame, proto::Frame::Welcome { .. }),
                "connection {n}: {frame:?}"
            );
        }
        broker.stop();
    }

    #[test]
    fn refuses_more_shards_than_dispatch_ids_can_name() {
        let settings = BrokerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shards: 257,
            ..BrokerSettings::default()
        };
        let err = start(settings, Arc::new(FileConfig::default())).unwrap_err();
        assert!(
            matches!(err, BrokerError::TooManyShards { max: 256 }),
            "{err}"
        );
    }
}
