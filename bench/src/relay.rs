//! The `relay` baseline: the same hops as triggerFS and nothing else.
//!
//! client → relay → echo server → relay → client, over loopback TCP. A message is a `u32`
//! little-endian length, then a `u64` request id, then the payload, so that many requests can
//! be in flight on one connection, as with the broker. The relay parses each message and
//! forwards it whole (as the broker forwards frames), opening one upstream connection per
//! client connection; writes are batched per wake-up like the broker's. What it leaves out is
//! everything triggerFS adds: handshakes, routing, validation, events, summaries.
//!
//! The relay and the echo server are processes of their own (`bench-child relay` and
//! `bench-child echo`), as the broker and the workers are. The relay runs one single-threaded
//! tokio runtime per broker shard, as the broker runs one executor per shard; the echo server
//! runs on a multi-thread runtime, as a `triggerfs worker` does.

use crate::load::Caller;
use crate::proc::wait_stdin_closed;
use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Socket buffer size in user space: large enough to batch a burst of small messages into one
/// syscall, as the broker and client library do.
const BUF: usize = 64 * 1024;

/// Largest message accepted: the benchmark's payloads are far smaller; anything bigger is a
/// bug, not load.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Messages queued towards the client's writer.
const OUTBOUND: usize = 1024;

/// `bench-child relay`: relays to `upstream` on `threads` threads until stdin closes.
pub(crate) fn relay_main(upstream: SocketAddr, threads: usize) -> anyhow::Result<i32> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let threads = RelayThreads::start(threads.max(1))?;
    threads.serve(listener, upstream)?;
    println!("listening on {addr}");
    wait_stdin_closed();
    drop(threads);
    Ok(0)
}

/// `bench-child echo`: the relay's echo server, until stdin closes.
pub(crate) fn echo_main() -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    println!("listening on {}", listener.local_addr()?);
    runtime.spawn(serve_echo(listener));
    wait_stdin_closed();
    Ok(0)
}

/// `connections` connections to the relay at `addr`, as a load process's caller.
pub(crate) async fn caller(addr: &str, connections: usize) -> anyhow::Result<RelayCaller> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad relay address {addr}"))?;
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        clients.push(RelayClient::connect(addr).await?);
    }
    Ok(RelayCaller {
        clients: Arc::new(clients),
        next: Arc::new(AtomicUsize::new(0)),
    })
}

/// The relay's own threads, each running a single-threaded tokio runtime until stopped.
struct RelayThreads {
    runtimes: Vec<tokio::runtime::Handle>,
    /// Each thread's runtime, and every connection on it, ends when its sender drops.
    _stops: Vec<oneshot::Sender<()>>,
}

impl RelayThreads {
    fn start(n: usize) -> anyhow::Result<RelayThreads> {
        let mut runtimes = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for i in 0..n {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("relay-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stop_rx.await;
                    });
                })
                .context("cannot start a relay thread")?;
            let handle = handle_rx
                .recv()
                .context("a relay thread ended at start")?
                .context("cannot build the relay runtime")?;
            runtimes.push(handle);
            stops.push(stop_tx);
        }
        Ok(RelayThreads {
            runtimes,
            _stops: stops,
        })
    }

    /// Accepts on the first thread and hands connections to the threads in turn, as the
    /// broker's shards share out connections.
    fn serve(&self, listener: std::net::TcpListener, upstream: SocketAddr) -> anyhow::Result<()> {
        let runtimes = self.runtimes.clone();
        let accept_on = runtimes[0].clone();
        let _guard = accept_on.enter();
        let listener = TcpListener::from_std(listener)?;
        accept_on.spawn(async move {
            let mut next = 0;
            while let Ok((client, _)) = listener.accept().await {
                let Ok(client) = client.into_std() else {
                    continue;
                };
                runtimes[next % runtimes.len()].spawn(relay_connection(client, upstream));
                next += 1;
            }
        });
        Ok(())
    }
}

/// Reads one message (id + payload, without the length) into `buf`; `Ok(false)` at a clean
/// end of stream.
async fn read_message(
    reader: &mut BufReader<OwnedReadHalf>,
    buf: &mut BytesMut,
) -> anyhow::Result<bool> {
    let len = match reader.read_u32_le().await {
        Ok(len) => len as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if !(8..=MAX_MESSAGE).contains(&len) {
        bail!("bad message length {len}");
    }
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(&mut buf[..]).await?;
    Ok(true)
}

/// Copies whole messages from `from` to `to`, flushing when nothing more is buffered (one
/// write per wake-up under load, one per message when idle).
async fn forward(from: OwnedReadHalf, to: OwnedWriteHalf) -> anyhow::Result<()> {
    let mut reader = BufReader::with_capacity(BUF, from);
    let mut writer = BufWriter::with_capacity(BUF, to);
    let mut buf = BytesMut::with_capacity(BUF);
    while read_message(&mut reader, &mut buf).await? {
        writer.write_u32_le(buf.len() as u32).await?;
        writer.write_all(&buf).await?;
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    Ok(())
}

async fn serve_echo(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let (from, to) = stream.into_split();
        // Echo: every message goes back where it came from.
        tokio::spawn(async move {
            if let Err(error) = forward(from, to).await {
                tracing::debug!(%error, "echo connection ended");
            }
        });
    }
}

/// Relays one client connection (moved onto this thread's runtime) to its own upstream
/// connection to the echo server.
async fn relay_connection(client: std::net::TcpStream, upstream: SocketAddr) {
    let client = match TcpStream::from_std(client) {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%error, "relay cannot adopt a client connection");
            return;
        }
    };
    let server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(error) => {
            tracing::warn!(%error, "relay cannot reach the echo server");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    let up = tokio::spawn(forward(client_rx, server_tx));
    let down = forward(server_rx, client_tx).await;
    up.abort();
    if let Err(error) = down {
        tracing::debug!(%error, "relay connection ended");
    }
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// One connection to the relay, multiplexed by request id (like `client::Client`).
#[derive(Clone)]
struct RelayClient {
    next_id: Arc<AtomicU64>,
    outbound: mpsc::Sender<Bytes>,
    waiting: Waiting,
}

fn lock(
    waiting: &Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Bytes>>> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

impl RelayClient {
    async fn connect(addr: SocketAddr) -> anyhow::Result<RelayClient> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to the relay at {addr}"))?;
        stream.set_nodelay(true)?;
        let (rx, tx) = stream.into_split();
        let (outbound, outbound_rx) = mpsc::channel::<Bytes>(OUTBOUND);
        let waiting: Waiting = Arc::default();
        tokio::spawn(write_loop(tx, outbound_rx));
        tokio::spawn(read_loop(rx, waiting.clone()));
        Ok(RelayClient {
            next_id: Arc::new(AtomicU64::new(1)),
            outbound,
            waiting,
        })
    }

    async fn request(&self, payload: &[u8]) -> anyhow::Result<Bytes> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id, tx);
        let mut message = BytesMut::with_capacity(12 + payload.len());
        message.put_u32_le(8 + payload.len() as u32);
        message.put_u64_le(id);
        message.put_slice(payload);
        if self.outbound.send(message.freeze()).await.is_err() {
            lock(&self.waiting).remove(&id);
            bail!("relay connection closed");
        }
        rx.await
            .map_err(|_| anyhow::anyhow!("relay connection closed"))
    }
}

async fn write_loop(tx: OwnedWriteHalf, mut outbound: mpsc::Receiver<Bytes>) {
    let mut writer = BufWriter::with_capacity(BUF, tx);
    let mut batch = Vec::with_capacity(64);
    while outbound.recv_many(&mut batch, 64).await > 0 {
        for message in batch.drain(..) {
            if writer.write_all(&message).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

async fn read_loop(rx: OwnedReadHalf, waiting: Waiting) {
    let mut reader = BufReader::with_capacity(BUF, rx);
    let mut buf = BytesMut::with_capacity(BUF);
    loop {
        match read_message(&mut reader, &mut buf).await {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
        let mut message = buf.split().freeze();
        let id = u64::from_le_bytes(message[..8].try_into().expect("length checked"));
        let payload = message.split_off(8);
        if let Some(tx) = lock(&waiting).remove(&id) {
            let _ = tx.send(payload);
        }
    }
    // Every request still waiting sees its sender dropped: "connection closed".
    lock(&waiting).clear();
}

/// Requests through the relay, round-robin over the connections.
#[derive(Clone)]
pub(crate) struct RelayCaller {
    clients: Arc<Vec<RelayClient>>,
    next: Arc<AtomicUsize>,
}

impl Caller for RelayCaller {
    async fn call(&self, payload: Bytes) -> anyhow::Result<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let answer = self.clients[i].request(&payload).await?;
        if answer != payload {
            bail!(
                "relay answered {} bytes that differ from the payload",
                answer.len()
            );
        }
        Ok(())
    }
}
